"""The etlora command as users meet it: help with examples, one-line errors, exit codes, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from etlora.cli import main


def run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etlora.cli", *argv], capture_output=True, text=True, timeout=300,
                          env=env)


def no_qnn_sdk_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "QNN_SDK_ROOT"}


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
                 "--max-rank", "8", "--max-seq-len", "16", "--out", str(out), env=no_qnn_sdk_env())
    assert result.returncode == 0, result.stderr
    assert "lowering program" in result.stderr and "total" in result.stdout
    # --backend auto (the default) says what it chose and why, before any work.
    assert result.stderr.splitlines()[0] == "backend auto: xnnpack (no QNN SDK: QNN_SDK_ROOT not set)"
    assert json.loads((out / "manifest.json").read_text())["htp_program"] is None
    result = run("add-adapter", str(out), "--adapter", f"sql={fixtures_dir / 'sql'}")
    assert result.returncode == 2
    assert "targets model.layers.0.mlp.down_proj, which the program has no slot for" in result.stderr.replace("\n", "")
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["support.ptd"]


def test_export_backend_htp_without_an_sdk_fails_at_once(tmp_path, model_dir):
    out = tmp_path / "bundle"
    result = run("export", "--model", str(model_dir), "--backend", "htp", "--out", str(out), env=no_qnn_sdk_env())
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "loading foundation" not in result.stderr and not out.exists()
    assert lines[0].startswith("etlora: error: --backend htp: expected a QNN SDK 2.37 for ExecuTorch 1.5.1's "
                               "Qualcomm backend, received: QNN_SDK_ROOT not set; looked for: QNN_SDK_ROOT")
    for looked_for in ("libQnnHtp.so", "libQnnHtpPrepare.so", "libQnnSystem.so", "sdk.yaml", "LD_LIBRARY_PATH",
                       "PyQnnManagerAdaptor", "hint: download Qualcomm AI Runtime SDK 2.37.0.250724"):
        assert looked_for in lines[0]


def test_export_backend_htp_with_a_broken_sdk_reaches_the_qnn_compiler_and_is_refused(tmp_path, model_dir):
    """An SDK that passes the file check but whose libraries do not load: the export gets as far as
    ExecuTorch's QNN compiler, which cannot start; one error line, no traceback, no bundle."""
    from etlora.testing.fixtures import make_fake_qnn_sdk

    sdk = make_fake_qnn_sdk(tmp_path / "qairt")
    out = tmp_path / "bundle"
    result = run("export", "--model", str(model_dir), "--target-modules", "q_proj", "--max-rank", "2",
                 "--max-seq-len", "16", "--backend", "htp", "--soc", "SM8550", "--out", str(out),
                 env={**os.environ, **sdk})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == f"backend htp: xnnpack + htp for SM8550 (QNN SDK 2.37.0.250724 at {tmp_path / 'qairt'})"
    assert "lowering program" in result.stderr and "Traceback" not in result.stderr
    assert lines[-1].startswith(
        f"etlora: error: {tmp_path / 'qairt'}: ExecuTorch's QNN compiler failed for SM8550 (Failed to initialize "
        "QNN backend for kHtpBackend.")
    assert "hint: download Qualcomm AI Runtime SDK" in lines[-1] and "--backend xnnpack" in lines[-1]
    assert not out.exists()


def test_inspect_shows_the_htp_program_and_what_it_duplicates(bundle_copy):
    from etlora.format.manifest import FileRecord

    (bundle_copy / "model_htp.pte").write_bytes(b"placeholder for an HTP program (test only)")
    data = json.loads((bundle_copy / "manifest.json").read_text())
    data["files"]["model_htp.pte"] = FileRecord.of(bundle_copy / "model_htp.pte").__dict__
    data["htp_program"] = {"file": "model_htp.pte", "soc": "SM8650", "qnn_sdk_version": "2.37.0.250724",
                           "chunk_len": 32, "cache_len": 64, "foundation_in_context_bytes": 1_250_000}
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    result = run("inspect", str(bundle_copy))
    assert result.returncode == 0, result.stderr
    assert ("htp program: model_htp.pte for SM8650 (QNN SDK 2.37.0.250724), chunk 32 tokens, cache 64 rows; "
            "1.25 MB of foundation data duplicated inside it (QNN context binary)") in result.stdout
    report = json.loads(run("inspect", str(bundle_copy), "--json").stdout)
    assert report["htp_program"] == data["htp_program"]
    assert {row["name"]: row["role"] for row in report["files"]}["model_htp.pte"] == "htp program"
    data["htp_program"]["foundation_in_context_bytes"] = 0
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    assert "foundation shared with foundation.ptd (0 bytes duplicated)" in run("inspect", str(bundle_copy)).stdout
