"""Every bad input gets one clear error naming the file and what was expected; nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import etlora
from etlora.export import ExportOptions, add_adapter, export_bundle
from etlora.export.adapter_file import write_adapter_ptd
from etlora.export.adapters import load_adapter
from etlora.format.adapter_format import ProgramSlots, read_adapter_ptd
from etlora.format.errors import AdapterError, BundleError, EtloraError
from etlora.format.manifest import read_manifest
from etlora.testing.fixtures import make_lora_adapter, make_tiny_llama

MALFORMED = Path(__file__).parent / "fixtures" / "malformed"


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory) -> Path:
    """A Llama of another width: adapters made for it do not fit ours."""
    return make_tiny_llama(tmp_path_factory.mktemp("foreign") / "model", seed=5, hidden_size=32, intermediate_size=64)


def make_adapter(model_dir, tmp_path, name="bad", **spec) -> Path:
    spec.setdefault("rank", 4)
    spec.setdefault("target_modules", ["q_proj"])
    return make_lora_adapter(model_dir, tmp_path / name, **spec)


def test_adapter_for_another_base_model(foreign_model, model_dir, tmp_path):
    adapter = make_adapter(foreign_model, tmp_path)
    with pytest.raises(AdapterError, match=r"q_proj\.lora_A\.weight has shape \[4, 32\], expected \[4, 64\].*another base model"):
        export_bundle(model_dir, {"bad": adapter}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rank_above_max_rank(model_dir, fixtures_dir, tmp_path):
    with pytest.raises(AdapterError, match=r"adapter 'legal'.*rank 8 is above the program's max rank 4.*--max-rank 8"):
        export_bundle(model_dir, {"legal": fixtures_dir / "legal"}, tmp_path / "out", ExportOptions(max_rank=4))
    assert not (tmp_path / "out").exists()


def test_add_adapter_with_rank_above_program_rank(bundle_copy, model_dir, tmp_path):
    adapter = make_adapter(model_dir, tmp_path, rank=16)
    with pytest.raises(AdapterError, match=r"rank 16 is above the program's max rank 8"):
        add_adapter(bundle_copy, "big", adapter)
    assert not (bundle_copy / "adapters" / "big.ptd").exists()
    assert "big" not in read_manifest(bundle_copy).adapters


def test_target_the_program_has_no_slot_for(bundle_copy, model_dir, tmp_path):
    adapter = make_adapter(model_dir, tmp_path, target_modules=["gate_proj"])
    with pytest.raises(AdapterError, match=r"targets model\.layers\.0\.mlp\.gate_proj, which the program has no slot for"):
        add_adapter(bundle_copy, "mlp", adapter)


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(target_modules=["embed_tokens"]), r"LoRA on the embedding or output head"),
        (dict(target_modules=["q_proj"], use_dora=True), r"unsupported PEFT options: use_dora=true \(DoRA\)"),
        (dict(target_modules=["q_proj"], bias="lora_only"), r"trained biases"),
    ],
)
def test_unsupported_lora_features_are_named(model_dir, tmp_path, spec, message):
    adapter = make_adapter(model_dir, tmp_path, **spec)
    with pytest.raises(AdapterError, match=message):
        export_bundle(model_dir, {"bad": adapter}, tmp_path / "out")


def test_unknown_target_modules_option(model_dir, fixtures_dir, tmp_path):
    with pytest.raises(AdapterError, match=r"--target-modules: expected a comma list of .* received 'q_proj,embed_tokens'"):
        export_bundle(model_dir, {"support": fixtures_dir / "support"}, tmp_path / "out",
                      ExportOptions(target_modules="q_proj,embed_tokens"))


@pytest.mark.parametrize("fixture", ["adapter_model_truncated.safetensors", "adapter_model_bad_header.safetensors"])
def test_corrupt_adapter_safetensors(model_dir, fixtures_dir, tmp_path, fixture):
    adapter = tmp_path / "adapter"
    shutil.copytree(fixtures_dir / "support", adapter)
    shutil.copy(MALFORMED / fixture, adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors: corrupt or truncated safetensors"):
        load_adapter("support", adapter, read_manifest_shape(model_dir))


def read_manifest_shape(model_dir):
    from transformers import AutoConfig

    from etlora.export.families import DecoderShape

    return DecoderShape.from_hf_config(AutoConfig.from_pretrained(model_dir))


def test_missing_adapter_directory_and_config(model_dir, tmp_path):
    with pytest.raises(AdapterError, match=r"directory .*nowhere not found"):
        export_bundle(model_dir, {"x": tmp_path / "nowhere"}, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"adapter_config\.json, not found"):
        export_bundle(model_dir, {"x": tmp_path / "empty"}, tmp_path / "out")


def test_bad_adapter_name(model_dir, fixtures_dir, tmp_path):
    with pytest.raises(AdapterError, match=r"adapter name '\.\./evil'"):
        export_bundle(model_dir, {"../evil": fixtures_dir / "support"}, tmp_path / "out")


def test_adapter_name_that_exists(bundle_copy, fixtures_dir):
    before = (bundle_copy / "adapters" / "support.ptd").read_bytes()
    with pytest.raises(AdapterError, match=r"adapter 'support' already exists.*--replace"):
        add_adapter(bundle_copy, "support", fixtures_dir / "sql")
    assert (bundle_copy / "adapters" / "support.ptd").read_bytes() == before


@pytest.mark.parametrize(
    "fixture, message",
    [
        ("adapter_truncated.ptd", r"legal\.ptd"),
        ("adapter_bad_magic.ptd", r"legal\.ptd"),
        ("adapter_garbage_header.ptd", r"legal\.ptd"),
        ("adapter_named_data_outside.ptd", r"legal\.ptd: not a valid FlatTensor .*named_data: points outside"),
        ("adapter_key_length_huge.ptd", r"legal\.ptd: not a valid FlatTensor .*named_data\[0\]\.key"),
        ("adapter_entry_exceeds_segment.ptd", r"legal\.ptd: not a valid FlatTensor .*needs .*bytes, its segment holds"),
        ("adapter_negative_size.ptd", r"legal\.ptd: not a valid FlatTensor .*negative size"),
        # Found by the fuzzer (scripts/dev/sanitize.py fuzz): a float16 tensor at an odd offset.
        ("adapter_misaligned_fp16.ptd", r"legal\.ptd: .* starts at a misaligned offset for"),
        # Also found by the fuzzer: ExecuTorch's reader dereferences a layout's absent sizes.
        ("adapter_layout_without_sizes.ptd", r"legal\.ptd: not a valid FlatTensor .*without sizes or dim_order"),
    ],
)
def test_corrupt_adapter_ptd(bundle_copy, fixture, message):
    shutil.copy(MALFORMED / fixture, bundle_copy / "adapters" / "legal.ptd")
    with pytest.raises(BundleError, match=message):
        read_adapter_ptd(bundle_copy / "adapters" / "legal.ptd")
    with pytest.raises(BundleError, match=message):  # the C++ runtime refuses it too, without crashing
        etlora.load(bundle_copy, adapters={"legal": 1.0})


def test_missing_adapter_file_at_load_time(bundle_copy):
    (bundle_copy / "adapters" / "legal.ptd").unlink()
    with pytest.raises(BundleError, match=r"adapter 'legal': .*legal\.ptd not found"):
        etlora.load(bundle_copy, adapters={"legal": 1.0})


def test_unknown_adapter_name_at_load_time(bundle):
    with pytest.raises(EtloraError, match=r"no adapter named 'chat' \(bundle has: legal, support\)"):
        etlora.load(bundle, adapters={"chat": 1.0})


def test_adapter_ptd_from_another_foundation(bundle_copy, fixtures_dir):
    """Even with no manifest to compare against, the runtime refuses a foreign adapter file."""
    manifest = read_manifest(bundle_copy)
    foreign = ProgramSlots(
        tuple(manifest.program.sites),
        tuple(tuple(d) for d in manifest.program.site_dims),
        manifest.program.max_rank,
        "f" * 64,
    )
    shape = read_manifest_shape(fixtures_dir / "model")
    write_adapter_ptd(load_adapter("support", fixtures_dir / "support", shape), foreign, bundle_copy / "adapters" / "support.ptd")
    with pytest.raises(BundleError, match=r"support\.ptd.*ffffffffffff"):
        etlora.load(bundle_copy, adapters={"support": 1.0})
    from etlora.inspect_bundle import inspect_bundle

    assert any("is for foundation ffffffffffff" in problem for problem in inspect_bundle(bundle_copy).problems)


def test_foundation_ptd_from_another_bundle(bundle_copy, tmp_path):
    (bundle_copy / "foundation.ptd").write_bytes(b"FT01" * 100)
    with pytest.raises(BundleError, match=r"foundation\.ptd: 400 bytes, manifest says \d+"):
        etlora.load(bundle_copy)


def test_manifest_from_a_future_version(bundle_copy):
    shutil.copy(MALFORMED / "manifest_future_version.json", bundle_copy / "manifest.json")
    with pytest.raises(BundleError, match=r"bundle format version 99, this etlora reads versions 1, 2"):
        etlora.load(bundle_copy)


def test_failed_export_leaves_nothing_behind(model_dir, fixtures_dir, tmp_path, monkeypatch):
    import etlora.export.bundle as bundle_module

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "write_adapter_ptd", fail)
    with pytest.raises(OSError):
        export_bundle(model_dir, {"support": fixtures_dir / "support"}, tmp_path / "out",
                      ExportOptions(max_seq_len=16))
    assert list(tmp_path.iterdir()) == []


def test_wrong_model_input(tmp_path):
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(EtloraError, match=r"notamodel: expected a Hugging Face checkpoint \(config.json"):
        export_bundle(tmp_path / "notamodel", {}, tmp_path / "out", ExportOptions(max_rank=4, target_modules="q_proj"))
    config = json.loads(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    (tmp_path / "gpt2" / "model.safetensors").write_bytes(b"")
    with pytest.raises(EtloraError, match=r"expected one of the model types llama, qwen2, .* received model_type .gpt2."):
        export_bundle(tmp_path / "gpt2", {}, tmp_path / "out", ExportOptions(max_rank=4, target_modules="q_proj"))
