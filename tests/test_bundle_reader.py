"""The C++ bundle reader (etlora::Bundle, used by etlora_runner and the Python session) and the
Python one (export/manifest.py, used by the tools) read the same bundles the same way: what one
refuses the other refuses, and on a valid bundle they agree on every path and adapter."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from etlora import _runtime
from etlora.export import read_manifest
from etlora.export.errors import BundleError


def _cpp_reads(bundle) -> str | None:
    try:
        _runtime.Bundle(str(bundle))
        return None
    except (ValueError, RuntimeError) as error:
        return str(error)


def _python_reads(bundle) -> str | None:
    try:
        read_manifest(bundle)
        return None
    except BundleError as error:
        return str(error)


def test_both_readers_agree_on_a_valid_bundle(bundle):
    manifest = read_manifest(bundle)
    cpp = _runtime.Bundle(str(bundle))
    assert cpp.format_version == manifest.format_version
    assert cpp.program_path == f"{bundle}/{manifest.program.file}"
    assert cpp.foundation_path == f"{bundle}/{manifest.foundation.file}"
    assert cpp.tokenizer_path == (f"{bundle}/{manifest.tokenizer.runtime_file}" if manifest.tokenizer else "")
    assert cpp.foundation_fingerprint == manifest.foundation.fingerprint
    assert cpp.foundation_weights_id == manifest.foundation.weights_id
    assert cpp.quantization_scheme == manifest.foundation.quantization.scheme
    assert cpp.adapters == {name: {"file": r.file, "dtype": r.dtype, "rank": r.rank} for name, r in manifest.adapters.items()}
    assert cpp.adapter_path("legal") == f"{bundle}/{manifest.adapters['legal'].file}"
    with pytest.raises(ValueError, match=r"no adapter named 'chat' \(bundle has: legal, support\)"):
        cpp.adapter_path("chat")


def _set(path, value):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _drop(path):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


# (what, edit of the manifest's JSON, refused?)
MUTATIONS = [
    ("another format", _set(["format"], "other-bundle"), True),
    ("a future version", _set(["format_version"], 99), True),
    ("version as text", _set(["format_version"], "3"), True),
    ("no program", _drop(["program"]), True),
    ("an unknown program member", _set(["program", "speed"], 1), True),
    ("an adapter without rank", _drop(["adapters", "legal", "rank"]), True),
    ("an unknown adapter member", _set(["adapters", "legal", "color"], "red"), True),
    ("an adapter file with ..", _set(["adapters", "legal", "file"], "../legal.ptd"), True),
    ("an absolute adapter file", _set(["adapters", "legal", "file"], "/etc/passwd"), True),
    ("a backslash path", _set(["program", "file"], "x\\model.pte"), True),
    ("a files key with ..", _set(["files", "../x"], {"size": 1, "sha256": "0"}), True),
    ("a files entry without sha256", _set(["files", "model.pte"], {"size": 1}), True),
    ("an unknown quantization scheme", _set(["foundation", "quantization", "scheme"], "2da1w"), True),
    ("an unknown quantization member", _set(["foundation", "quantization", "bits"], 3), True),
    ("no foundation fingerprint", _drop(["foundation", "fingerprint"]), True),
    ("an unknown top-level member (skipped by readers)", _set(["comment"], "hello"), False),
    ("an adapter without dtype (read as fp32)", _drop(["adapters", "legal", "dtype"]), False),
    ("no weights_id (version 1 reads the fingerprint)", _drop(["foundation", "weights_id"]), False),
]


@pytest.mark.parametrize("what, edit, refused", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_both_readers_refuse_the_same_manifests(bundle_copy, what, edit, refused):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    python, cpp = _python_reads(bundle_copy), _cpp_reads(bundle_copy)
    assert (python is not None) == refused, python
    assert (cpp is not None) == refused, cpp
    if refused:
        assert str(path) in python and str(path) in cpp, (python, cpp)


def test_both_readers_refuse_a_symlink_out_and_bad_json(bundle_copy):
    outside = bundle_copy.parent / "elsewhere.ptd"
    os.replace(bundle_copy / "adapters" / "legal.ptd", outside)
    os.symlink(outside, bundle_copy / "adapters" / "legal.ptd")
    assert "outside the bundle" in _python_reads(bundle_copy)
    assert "outside the bundle" in _cpp_reads(bundle_copy)
    (bundle_copy / "manifest.json").write_text('{"format": "etlora-bundle", "format_version": 3,')
    assert "not valid JSON" in _python_reads(bundle_copy) and "not valid JSON" in _cpp_reads(bundle_copy)


def test_cpp_json_limits(tmp_path):
    """Bounds the Python reader gets from its json module: nesting depth and size, named."""
    deep = '{"format": "etlora-bundle", "format_version": 3, "x": ' + "[" * 100 + "]" * 100 + "}"
    with pytest.raises(ValueError, match=r"manifest.json at byte \d+: nesting deeper than 64"):
        _runtime.Bundle.parse(deep, str(tmp_path))
    with pytest.raises(ValueError, match=r"at byte 18: unterminated string"):
        _runtime.Bundle.parse('{"format": "etlora', str(tmp_path))


def test_runner_reads_the_bundle_through_the_manifest(bundle_copy):
    """The runner finds files where the manifest says (not at fixed names) and names the adapters."""
    import shutil
    import sysconfig
    from pathlib import Path

    runner = shutil.which("etlora_runner") or str(Path(sysconfig.get_path("scripts")) / "etlora_runner")
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    os.replace(bundle_copy / "adapters" / "legal.ptd", bundle_copy / "adapters" / "legal-v2.ptd")
    manifest["adapters"]["legal"]["file"] = "adapters/legal-v2.ptd"
    manifest["files"]["adapters/legal-v2.ptd"] = manifest["files"].pop("adapters/legal.ptd")
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    ok = subprocess.run([runner, "--bundle", str(bundle_copy), "--adapter", "legal", "--tokens", "1,2,3"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([runner, "--bundle", str(bundle_copy), "--adapter", "chat", "--tokens", "1,2,3"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert "no adapter named 'chat' (bundle has: legal, support)" in missing.stderr
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    future = subprocess.run([runner, "--bundle", str(bundle_copy), "--tokens", "1,2,3"],
                            capture_output=True, text=True, timeout=120)
    assert future.returncode == 1 and "bundle format version 99, this etlora reads versions 1, 2, 3" in future.stderr
