"""Paths that would leave the bundle are refused; concurrent add-adapter runs both land."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import etlora
from etlora.export import read_manifest
from etlora.export.errors import BundleError


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


def test_inspect_and_import_need_no_torch(bundle):
    """The runtime half and `etlora inspect` run with torch and ExecuTorch's exir unimportable."""
    code = (
        "import sys\n"
        "for blocked in ('torch', 'executorch.exir', 'peft', 'transformers'): sys.modules[blocked] = None\n"
        "import etlora\n"
        "from etlora.cli import main\n"
        f"sys.exit(main(['inspect', {str(bundle)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "support" in result.stdout and "legal" in result.stdout
