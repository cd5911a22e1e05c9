"""tests/fixtures/bundles is what scripts/dev/make_reader_fixtures.py writes today: the C++ reader
tests run on files this etlora's writers still produce byte for byte (and the script's own checks,
Python's reader accepting the valid bundles and refusing the others, pass)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "tests" / "fixtures" / "bundles"


def _tree(root: Path) -> dict[str, bytes | str]:
    """Relative path -> bytes of a file, or 'symlink to <target>'."""
    tree: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            tree[str(path.relative_to(root))] = f"symlink to {os.readlink(path)}"
        elif path.is_file():
            tree[str(path.relative_to(root))] = path.read_bytes()
    return tree


def test_committed_reader_fixtures_are_what_the_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_reader_fixtures",
                                                  REPO / "scripts" / "dev" / "make_reader_fixtures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_fixtures(tmp_path / "bundles")
    written, committed = _tree(tmp_path / "bundles"), _tree(COMMITTED)
    assert sorted(written) == sorted(committed), "regenerate: python scripts/dev/make_reader_fixtures.py"
    stale = [name for name in committed if written[name] != committed[name]]
    assert not stale, f"{stale} differ from what the writers produce now (regenerate them and update tests/cpp)"
    assert len(committed) > 50
