"""The etlora command as users meet it: help with examples, one-line errors, exit codes, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from etlora.cli import main


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etlora.cli", *argv], capture_output=True, text=True, timeout=300)


def test_help_explains_every_command_with_an_example(capsys):
    for command in ["export", "add-adapter", "inspect"]:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "example:" in capsys.readouterr().out


def test_inspect_json_lists_files_and_adapters(bundle):
    result = run("inspect", str(bundle), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {row["name"] for row in report["adapters"]} == {"support", "legal"}
    assert {row["name"]: row["rank"] for row in report["adapters"]} == {"support": 4, "legal": 8}
    sizes = {row["name"]: row["size"] for row in report["files"]}
    assert sizes["foundation.ptd"] == (bundle / "foundation.ptd").stat().st_size
    assert report["total_size"] == sum(sizes.values())


def test_inspect_names_a_damaged_file_and_fails(bundle_copy):
    path = bundle_copy / "adapters" / "support.ptd"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    (bundle_copy / "adapters" / "legal.ptd").unlink()
    result = run("inspect", str(bundle_copy))
    assert result.returncode == 1
    assert "support.ptd: sha256 differs from the manifest" in result.stderr.replace("\n", "")
    assert "legal.ptd: missing" in result.stderr.replace("\n", "")


def test_errors_are_one_line_without_traceback(bundle, fixtures_dir):
    result = run("add-adapter", str(bundle), "--adapter", f"support={fixtures_dir / 'sql'}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"etlora: error: {bundle}: adapter 'support' already exists (hint: choose another name or pass --replace)"]
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_traceback(tmp_path):
    result = run("--verbose", "inspect", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "manifest.json not found" in result.stderr


def test_export_refuses_to_overwrite_without_force(bundle, model_dir):
    result = run("export", "--model", str(model_dir), "--target-modules", "q_proj", "--max-rank", "2", "--out", str(bundle))
    assert result.returncode == 2
    assert "exists and is not empty (hint: pass --force" in result.stderr


def test_export_then_add_adapter_through_the_cli(tmp_path, model_dir, fixtures_dir):
    out = tmp_path / "bundle"
    result = run("export", "--model", str(model_dir), "--adapter", f"support={fixtures_dir / 'support'}",
                 "--max-rank", "8", "--max-seq-len", "16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "lowering program" in result.stderr and "total" in result.stdout
    result = run("add-adapter", str(out), "--adapter", f"sql={fixtures_dir / 'sql'}")
    assert result.returncode == 2
    assert "targets model.layers.0.mlp.down_proj, which the program has no slot for" in result.stderr.replace("\n", "")
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["support.ptd"]
