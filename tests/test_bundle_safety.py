"""Paths that would leave the bundle are refused; concurrent add-adapter runs both land."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import etlora
from etlora.format.errors import BundleError
from etlora.format.manifest import read_manifest


def _edit_manifest(bundle, edit) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("bad", ["../outside.ptd", "/etc/passwd", "adapters/../../outside.ptd", "adapters\\..\\x.ptd"])
def test_manifest_path_leaving_the_bundle_is_refused(bundle_copy, bad):
    (bundle_copy.parent / "outside.ptd").write_bytes((bundle_copy / "adapters" / "support.ptd").read_bytes())

    def edit(data):
        data["adapters"]["support"]["file"] = bad

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=r"adapters\['support'\]\.file is .*expected a relative path inside the bundle"):
        read_manifest(bundle_copy)
    with pytest.raises(BundleError, match="inside the bundle"):
        etlora.load(bundle_copy, adapters={"support": 1.0})


def test_symlink_leading_out_of_the_bundle_is_refused(bundle_copy):
    outside = bundle_copy.parent / "elsewhere.ptd"
    outside.write_bytes((bundle_copy / "adapters" / "support.ptd").read_bytes())
    (bundle_copy / "adapters" / "support.ptd").unlink()
    os.symlink(outside, bundle_copy / "adapters" / "support.ptd")
    with pytest.raises(BundleError, match="outside the bundle .*symlink"):
        etlora.load(bundle_copy)


def test_two_add_adapter_at_once_both_land(bundle_copy, fixtures_dir):
    command = [sys.executable, "-m", "etlora.cli", "add-adapter", str(bundle_copy)]
    runs = [
        subprocess.Popen(command + ["--adapter", f"{name}={fixtures_dir / 'sql'}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("first", "second")
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    manifest = read_manifest(bundle_copy)
    assert {"first", "second", "support", "legal"} <= set(manifest.adapters)
    session = etlora.load(bundle_copy)
    for name in ("first", "second"):
        session.set_adapters({name: 1.0})


def test_load_and_inspect_need_no_torch(bundle):
    """etlora.load, a forward, and `etlora inspect` run with torch, ExecuTorch's exir and the exporter
    unimportable: the device side reads bundles through etlora.format and the runtime only."""
    code = (
        "import sys\n"
        "for blocked in ('torch', 'executorch.exir', 'peft', 'transformers', 'etlora.export'):\n"
        "    sys.modules[blocked] = None\n"
        "import etlora\n"
        f"session = etlora.load({str(bundle)!r}, adapters={{'support': 1.0}})\n"
        "print('logits', session.logits([1, 2, 3]).shape)\n"
        "from etlora.cli import main\n"
        f"sys.exit(main(['inspect', {str(bundle)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    vocab = read_manifest(bundle).foundation.config["vocab_size"]
    assert f"logits ({vocab},)" in result.stdout
    assert "support" in result.stdout and "legal" in result.stdout


def test_replace_never_overwrites_a_file_the_manifest_lists(bundle_copy, fixtures_dir):
    from etlora.export import add_adapter
    from etlora.inspect_bundle import inspect_bundle

    expected = etlora.load(bundle_copy, adapters={"legal": 1.0}).logits([1, 2, 3])
    updated = add_adapter(bundle_copy, "support", fixtures_dir / "legal", replace_existing=True)
    new_file = updated.adapters["support"].file
    assert new_file != "adapters/support.ptd" and new_file.startswith("adapters/support-")
    assert not (bundle_copy / "adapters" / "support.ptd").exists()  # the replaced file, removed after the commit
    assert "adapters/support.ptd" not in updated.files and inspect_bundle(bundle_copy).problems == []
    import numpy as np

    replaced = etlora.load(bundle_copy, adapters={"support": 1.0}).logits([1, 2, 3])
    np.testing.assert_array_equal(replaced, expected)


def test_export_force_swaps_the_whole_bundle(bundle_copy, model_dir, fixtures_dir):
    from etlora.export import ExportOptions, export_bundle

    export_bundle(model_dir, {"sql": fixtures_dir / "sql"}, bundle_copy, ExportOptions(max_seq_len=64))
    assert set(read_manifest(bundle_copy).adapters) == {"sql"}
    assert not (bundle_copy / "adapters" / "support.ptd").exists()
    leftovers = [p.name for p in bundle_copy.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.slow
def test_kill_during_writes_leaves_the_old_or_the_new_bundle(tmp_path):
    """scripts/dev/kill_trials.py in small: 3 kills per operation (the script's 50-trial runs are in
    docs/results/kill_trials_*.json)."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "dev" / "kill_trials.py"),
         "--trials", "3", "--seed", "7", "--json", str(tmp_path / "kills.json")],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    outcomes = json.loads((tmp_path / "kills.json").read_text())
    assert {o["operation"] for o in outcomes} == {"add", "replace", "remove", "export", "packed"}
    assert all(o["trials"] == 3 and not o["failures"] for o in outcomes), outcomes
