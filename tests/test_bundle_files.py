"""Files on disk: foundation shared byte for byte, add-adapter == export, manifest checksums."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

from etlora.export import ExportOptions, add_adapter, export_bundle
from etlora.format.adapter_format import read_adapter_ptd
from etlora.format.manifest import FORMAT_VERSION, read_manifest

from conftest import MAX_SEQ_LEN, TARGETS


def ptd_keys(path) -> set[str]:
    return set(FlatTensorSerializer().deserialize(path.read_bytes()).named_data)


@pytest.fixture(scope="module")
def other_bundle(fixtures_dir, tmp_path_factory):
    """Same foundation and program shape as `bundle`, exported with a different adapter (sql)."""
    out = tmp_path_factory.mktemp("other") / "bundle"
    export_bundle(
        fixtures_dir / "model",
        {"sql": fixtures_dir / "sql"},
        out,
        ExportOptions(max_seq_len=MAX_SEQ_LEN, max_rank=8, target_modules=TARGETS, adapter_slots=2),
    )
    return out


def test_foundation_identical_whatever_the_adapters(bundle, other_bundle):
    first = (bundle / "foundation.ptd").read_bytes()
    second = (other_bundle / "foundation.ptd").read_bytes()
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    assert read_manifest(bundle).foundation.fingerprint == read_manifest(other_bundle).foundation.fingerprint


def test_foundation_holds_no_adapter_tensor_and_adapters_nothing_else(bundle):
    manifest = read_manifest(bundle)
    foundation_keys = ptd_keys(bundle / "foundation.ptd")
    assert foundation_keys and not any("lora" in key or key.startswith("etlora.") for key in foundation_keys)
    for name, record in manifest.adapters.items():
        keys = ptd_keys(bundle / record.file)
        tensor_keys = {k for k in keys if not k.startswith("etlora.")}
        expected = {
            f"{site}.{part}"
            for site in manifest.program.sites
            if site.rsplit(".", 1)[1] in record.target_modules
            for part in ("lora_a", "lora_b")
        }
        assert tensor_keys == expected, name
        assert keys - tensor_keys == {"etlora.format_version", "etlora.foundation_fingerprint", "etlora.scaling"}


def test_adapter_file_holds_peft_weights_transposed_and_padded(bundle, fixtures_dir):
    from safetensors.numpy import load_file

    peft = load_file(fixtures_dir / "support" / "adapter_model.safetensors")
    contents = read_adapter_ptd(bundle / "adapters" / "support.ptd")
    site = "model.layers.1.self_attn.v_proj"
    lora_a = peft[f"base_model.model.{site}.lora_A.weight"]  # [4, 64]
    lora_b = peft[f"base_model.model.{site}.lora_B.weight"]  # [32, 4]
    padded_a = contents.tensors[f"{site}.lora_a"]
    padded_b = contents.tensors[f"{site}.lora_b"]
    assert padded_a.shape == (1, 64, 8) and padded_b.shape == (1, 8, 32)
    np.testing.assert_array_equal(padded_a[0, :, :4], lora_a.T)
    np.testing.assert_array_equal(padded_b[0, :4, :], lora_b.T)
    assert not padded_a[0, :, 4:].any() and not padded_b[0, 4:, :].any()
    assert contents.scaling == pytest.approx(8 / 4)
    legal = read_adapter_ptd(bundle / "adapters" / "legal.ptd")
    assert legal.scaling == pytest.approx(16 / np.sqrt(8))  # rsLoRA


def test_one_program_serves_every_adapter(bundle, other_bundle):
    assert (bundle / "model.pte").read_bytes() == (other_bundle / "model.pte").read_bytes()


def test_add_adapter_equals_export_output(bundle_copy, other_bundle, fixtures_dir):
    """sql was never exported with `bundle`; adding it must give the file the export of sql gave."""
    add_adapter(bundle_copy, "sql", fixtures_dir / "sql")
    assert (bundle_copy / "adapters" / "sql.ptd").read_bytes() == (other_bundle / "adapters" / "sql.ptd").read_bytes()
    manifest = read_manifest(bundle_copy)
    assert manifest.adapters["sql"].rank == 6
    assert manifest.files["adapters/sql.ptd"].size == (bundle_copy / "adapters" / "sql.ptd").stat().st_size
    assert (bundle_copy / "model.pte").read_bytes() == (other_bundle / "model.pte").read_bytes()


def test_manifest_sizes_and_sha256_match_files(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert all(record["alora_invocation_tokens"] is None for record in manifest["adapters"].values())
    from etlora.export.qnn_sdk import check_qnn_sdk

    if not check_qnn_sdk().found:  # backend auto without a QNN SDK: XNNPACK only
        assert manifest["htp_program"] is None
    assert manifest["foundation"]["quantization"]["scheme"] == "fp32"
    assert manifest["foundation"]["weights_id"] == manifest["foundation"]["fingerprint"]
    tokenizer_files = {name for name in manifest["files"] if name.startswith("tokenizer/")}
    assert {"tokenizer/tokenizer.json", "tokenizer/etlora_chat.json"} <= tokenizer_files
    assert manifest["tokenizer"] == {"directory": "tokenizer", "runtime_file": "tokenizer/tokenizer.json"}
    assert set(manifest["files"]) - tokenizer_files == {
        "model.pte", "foundation.ptd", "adapters/support.ptd", "adapters/legal.ptd"
    }
    for name, record in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert record["size"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["program"]["max_rank"] == 8
    assert manifest["adapters"]["support"]["target_modules"] == ["q_proj", "v_proj"]
    assert manifest["adapters"]["legal"]["use_rslora"] is True


def test_program_and_ptd_are_plain_executorch_artifacts(bundle):
    """ExecuTorch's own Python runtime loads the program with the foundation file unchanged."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(bundle / "model.pte", data_path=bundle / "foundation.ptd")
    assert "forward" in program.method_names
    assert "etlora_sites" in program.method_names


def test_foundation_only_program_matches_the_base_model(fixtures_dir, bundle, tmp_path):
    """--target-modules none: no adapter inputs at all, same foundation.ptd, same logits as no adapter."""
    import etlora
    from conftest import TOKENS

    out = tmp_path / "foundation_only"
    export_bundle(fixtures_dir / "model", {}, out, ExportOptions(max_seq_len=MAX_SEQ_LEN, target_modules="none"))
    manifest = read_manifest(out)
    assert manifest.program.sites == [] and manifest.program.max_rank == 0
    assert (out / "foundation.ptd").read_bytes() == (bundle / "foundation.ptd").read_bytes()
    np.testing.assert_allclose(etlora.load(out).logits(TOKENS), etlora.load(bundle).logits(TOKENS), atol=1e-5)


def test_bundle_format_doc_example_is_a_current_manifest():
    """docs/bundle-format.md's example parses and names every field this etlora writes."""
    import dataclasses
    import re
    from pathlib import Path

    from etlora.format.manifest import FORMAT_VERSION, AdapterRecord, HtpProgramRecord, ProgramRecord, _parse

    doc = Path(__file__).resolve().parent.parent / "docs" / "bundle-format.md"
    block = re.search(r"## manifest.json\n\n```json\n(.*?)```", doc.read_text(), re.S).group(1)
    example = json.loads(block)
    manifest = _parse(example, doc)
    assert manifest.format_version == FORMAT_VERSION
    assert doc.read_text().startswith(f"# etlora bundle format, version {FORMAT_VERSION}\n")
    assert set(example["program"]) == {f.name for f in dataclasses.fields(ProgramRecord)}
    for record in example["adapters"].values():
        assert set(record) == {f.name for f in dataclasses.fields(AdapterRecord)}
    assert set(example["htp_program"]) == {f.name for f in dataclasses.fields(HtpProgramRecord)}
    assert manifest.htp_program.file in manifest.files
