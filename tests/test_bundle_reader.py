"""The C++ bundle reader (etlora::Bundle, used by etlora_runner and the Python session) and the
Python one (python/etlora/format/manifest.py, used by the tools) read the same bundles the same way: what one
refuses the other refuses, and on a valid bundle they agree on every path and adapter."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from etlora import _runtime
from etlora.format.errors import BundleError
from etlora.format.manifest import read_manifest


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
    assert (cpp.htp_program is None) == (manifest.htp_program is None)
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
    # found by the fuzzer (UBSan): a rank far beyond int64 was cast unchecked
    ("a rank of 8.7e90", _set(["adapters", "legal", "rank"], 8.67e90), True),
    ("a negative rank", _set(["adapters", "legal", "rank"], -1), True),
    ("a rank as text", _set(["adapters", "legal", "rank"], "8"), True),
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
    # Version 5: adapters[].alora_invocation_tokens, null or 1 to 64 token ids in 0 .. 2^31-1.
    ("an adapter with alora tokens", _set(["adapters", "legal", "alora_invocation_tokens"], [5, 6]), False),
    ("an adapter without alora tokens (read as null)", _drop(["adapters", "legal", "alora_invocation_tokens"]), False),
    ("empty alora tokens", _set(["adapters", "legal", "alora_invocation_tokens"], []), True),
    ("65 alora tokens", _set(["adapters", "legal", "alora_invocation_tokens"], list(range(65))), True),
    ("alora tokens as text", _set(["adapters", "legal", "alora_invocation_tokens"], "5,6"), True),
    ("a negative alora token", _set(["adapters", "legal", "alora_invocation_tokens"], [5, -1]), True),
    ("an alora token of 2^31", _set(["adapters", "legal", "alora_invocation_tokens"], [2**31]), True),
    ("a fractional alora token", _set(["adapters", "legal", "alora_invocation_tokens"], [5.5]), True),
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
    assert future.returncode == 1 and "bundle format version 99, this etlora reads versions 1, 2, 3, 4, 5, 6, 7" in future.stderr


# A two-program bundle: model_htp.pte is a placeholder here (no QNN SDK to compile one), which the
# readers never open; what is tested is the manifest entry.
HTP_ENTRY = {"file": "model_htp.pte", "soc": "SM8650", "qnn_sdk_version": "2.37.0.250724",
             "chunk_len": 32, "cache_len": 64, "foundation_in_context_bytes": 123456}


@pytest.fixture
def htp_bundle(bundle_copy):
    from etlora.format.manifest import FileRecord

    placeholder = bundle_copy / "model_htp.pte"
    placeholder.write_bytes(b"placeholder for an HTP program (test only, not a .pte)")
    record = FileRecord.of(placeholder)
    data = json.loads((bundle_copy / "manifest.json").read_text())
    data["files"]["model_htp.pte"] = {"size": record.size, "sha256": record.sha256}
    data["htp_program"] = dict(HTP_ENTRY)
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    return bundle_copy


def test_both_readers_agree_on_an_htp_program(htp_bundle):
    from etlora.format.manifest import FORMAT_VERSION, verify_files

    manifest = read_manifest(htp_bundle)
    assert manifest.format_version == FORMAT_VERSION and verify_files(htp_bundle, manifest) == []
    assert manifest.htp_program.__dict__ == HTP_ENTRY
    assert _runtime.Bundle(str(htp_bundle)).htp_program == {**HTP_ENTRY, "path": f"{htp_bundle}/model_htp.pte"}
    # A rewrite (add-adapter, remove-adapter) keeps the entry.
    from etlora.export import remove_adapter

    assert remove_adapter(htp_bundle, "support").htp_program == manifest.htp_program
    assert read_manifest(htp_bundle).htp_program == manifest.htp_program


def test_a_manifest_without_or_with_null_htp_program_has_none(htp_bundle):
    path = htp_bundle / "manifest.json"
    data = json.loads(path.read_text())
    for edit in (lambda d: d.update(htp_program=None), lambda d: d.pop("htp_program")):
        edit(data)
        path.write_text(json.dumps(data))
        assert read_manifest(htp_bundle).htp_program is None
        assert _runtime.Bundle(str(htp_bundle)).htp_program is None


# (what, edit of the htp_program entry or the manifest, the words both readers say; None: accepted)
HTP_MUTATIONS = [
    ("a path with ..", _set(["htp_program", "file"], "../model_htp.pte"),
     "htp_program.file is '../model_htp.pte', expected a relative path inside the bundle (no '..', not absolute)"),
    ("an absolute path", _set(["htp_program", "file"], "/etc/passwd"),
     "htp_program.file is '/etc/passwd', expected a relative path inside the bundle"),
    ("a file missing from files", _drop(["files", "model_htp.pte"]),
     "htp_program.file 'model_htp.pte' is not listed in files (expected every program file listed with its "
     "size and sha256); hint: the manifest was edited or is hostile"),
    ("not an object", _set(["htp_program"], ["model_htp.pte"]),
     "manifest is missing or has unexpected fields (htp_program: expected an object)"),
    ("no soc", _drop(["htp_program", "soc"]), "manifest is missing or has unexpected fields (htp_program has no 'soc')"),
    ("an unknown member", _set(["htp_program", "speed"], 2),
     "manifest is missing or has unexpected fields (htp_program has an unexpected 'speed')"),
    ("soc as a number", _set(["htp_program", "soc"], 8650), "htp_program.soc: expected a string, got a number"),
    ("version as null", _set(["htp_program", "qnn_sdk_version"], None),
     "htp_program.qnn_sdk_version: expected a string, got null"),
    ("chunk_len as text", _set(["htp_program", "chunk_len"], "32"),
     "htp_program.chunk_len: expected an integer >= 1, got a string"),
    ("chunk_len as a boolean", _set(["htp_program", "chunk_len"], True),
     "htp_program.chunk_len: expected an integer >= 1, got a boolean"),
    ("chunk_len 0", _set(["htp_program", "chunk_len"], 0), "htp_program.chunk_len: expected an integer >= 1, got 0"),
    ("chunk_len with a fraction", _set(["htp_program", "chunk_len"], 2.5),
     "htp_program.chunk_len: expected an integer >= 1, got a number that is not a whole number within 2^53"),
    ("cache_len beyond 2^53", _set(["htp_program", "cache_len"], 1e300),
     "htp_program.cache_len: expected an integer >= 1, got a number that is not a whole number within 2^53"),
    ("chunk_len above cache_len", _set(["htp_program", "chunk_len"], 65),
     "htp_program.chunk_len: expected at most cache_len (64), got 65"),
    ("negative duplicated bytes", _set(["htp_program", "foundation_in_context_bytes"], -1),
     "htp_program.foundation_in_context_bytes: expected an integer >= 0, got -1"),
    ("chunk_len written 32.0", _set(["htp_program", "chunk_len"], 32.0), None),
    ("no duplicated bytes", _set(["htp_program", "foundation_in_context_bytes"], 0), None),
]


@pytest.mark.parametrize("what, edit, words", HTP_MUTATIONS, ids=[m[0] for m in HTP_MUTATIONS])
def test_both_readers_check_the_htp_program_entry_in_the_same_words(htp_bundle, what, edit, words):
    path = htp_bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    python, cpp = _python_reads(htp_bundle), _cpp_reads(htp_bundle)
    if words is None:
        assert python is None and cpp is None, (python, cpp)
        assert _runtime.Bundle(str(htp_bundle)).htp_program["chunk_len"] == read_manifest(htp_bundle).htp_program.chunk_len
        return
    assert python == cpp, (python, cpp)
    assert python.startswith(f"{path}: {words}"), python


def test_both_readers_refuse_an_htp_program_symlinked_out(htp_bundle):
    outside = htp_bundle.parent / "elsewhere.pte"
    os.replace(htp_bundle / "model_htp.pte", outside)
    os.symlink(outside, htp_bundle / "model_htp.pte")
    for answer in (_python_reads(htp_bundle), _cpp_reads(htp_bundle)):
        assert "files['model_htp.pte'] 'model_htp.pte' resolves to" in answer and "outside the bundle" in answer
