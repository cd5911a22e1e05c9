"""The package's layering: export -> format <- runtime side, nothing from the runtime side into the exporter.

etlora.format (the bundle format) imports no torch and nothing of etlora outside itself; the device
side (etlora.load, inspect, report, the CLI's run/inspect) reads bundles through it. Only the test
helpers may import the exporter at module level; the CLI's export commands and the report's naive
column (which exports one merged model per adapter) import it inside the functions that need it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "python" / "etlora"
FORMAT = PACKAGE / "format"
EXPORTER = REPO / "export"  # installed as etlora.export
# May import etlora.export inside a function (never at module level): the exporter's front ends.
LAZY_EXPORT_IMPORTERS = {"cli/bundle_commands.py", "report/naive.py"}
MAY_IMPORT_EXPORT = ("testing/",)


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(absolute module imported, inside a function, line) for every import in one source file;
    relative imports are resolved against the file's package."""
    tree = ast.parse(path.read_text(), str(path))
    package = ["etlora", *path.relative_to(PACKAGE).parent.parts]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                found.append((module, in_function, child.lineno))
                if not child.module:  # `from . import name`: the names are modules
                    found.extend((f"{module}.{alias.name}", in_function, child.lineno) for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    return found


def _sources() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def test_the_walker_sees_relative_function_level_and_dotted_imports():
    """The checks below are only as good as the walker: it must resolve each kind of import."""
    found = {module for module, _, _ in _imports(FORMAT / "manifest.py")}
    assert {"etlora.format.adapter_format", "etlora.format.errors", "json"} <= found
    naive = {(module, lazy) for module, lazy, _ in _imports(PACKAGE / "report" / "naive.py")}
    assert ("etlora.export", True) in naive and ("etlora.format.manifest", False) in naive


def test_nothing_on_the_device_side_imports_the_exporter():
    wrong = []
    for path in _sources():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(MAY_IMPORT_EXPORT):
            continue
        for module, in_function, line in _imports(path):
            if module != "etlora.export" and not module.startswith("etlora.export."):
                continue
            if in_function and relative in LAZY_EXPORT_IMPORTERS:
                continue
            where = "inside a function" if in_function else "at module level"
            wrong.append(f"python/etlora/{relative}:{line} imports {module} {where}")
    assert wrong == [], "the device side reads bundles through etlora.format, never etlora.export:\n" + "\n".join(wrong)


def test_the_format_package_imports_only_itself_and_no_torch():
    wrong = []
    for path in sorted(FORMAT.glob("*.py")):
        for module, _, line in _imports(path):
            top = module.split(".")[0]
            if (top == "etlora" and not module.startswith("etlora.format")) or top in ("torch", "executorch"):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert wrong == []


@pytest.mark.parametrize("module", ["etlora.format", "etlora.format.manifest", "etlora.format.adapter_format"])
def test_the_format_package_imports_with_torch_unimportable(module):
    code = (
        "import sys\n"
        "for blocked in ('torch', 'executorch', 'peft', 'transformers', 'etlora.export'):\n"
        "    sys.modules[blocked] = None\n"
        f"import {module}\n"
        "print(sorted(name for name, loaded in sys.modules.items()\n"
        "             if loaded is not None and name.split('.')[0] in ('torch', 'executorch')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]"


def test_one_definition_of_each_backend_name():
    """BackendRequest, Backend and Soc are etlora.format's; the runtime side's BackendChoice is the
    decision (backend + reason), as in runtime_cpp/include/etlora/htp_probe.h."""
    import etlora.backend
    import etlora.export.program
    import etlora.export.program_plan
    import etlora.format
    from etlora.format.backends import Backend, BackendRequest

    assert [request.value for request in BackendRequest] == ["auto", "xnnpack", "htp"]
    assert [backend.value for backend in Backend] == ["xnnpack", "htp"]
    assert etlora.backend.Backend is Backend and etlora.export.program.Backend is Backend
    assert etlora.format.BackendRequest is BackendRequest and etlora.export.program_plan.BackendRequest is BackendRequest
    assert etlora.backend.BackendChoice.__dataclass_fields__.keys() == {"backend", "reason"}
    defined = sorted(f"{path.relative_to(REPO)}: {node.name}" for path in [*_sources(), *EXPORTER.glob("*.py")]
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.ClassDef) and node.name in ("Backend", "BackendRequest", "Soc"))
    assert defined == [f"python/etlora/format/backends.py: {name}" for name in ("Backend", "BackendRequest", "Soc")]
