"""Quantized foundations (8da4w, 8da8w) with float adapters, on the tiny model.

The runtime's logits are compared with the same quantized model run eagerly in PyTorch (torchao's
reference kernels): that isolates what lowering and XNNPACK do from what quantization itself does.
Against fp32, quantization error is the point, so those comparisons check what must survive it
(each adapter's effect) rather than a closeness that a 4-bit random model cannot have.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import etlora
from etlora.export import ExportOptions, export_bundle
from etlora.export.adapter_file import padded_adapter_tensors
from etlora.export.adapters import load_adapter
from etlora.export.bundle import add_adapter
from etlora.export.foundation import load_foundation
from etlora.export.program import build_model
from etlora.export.quantization import FoundationQuantization
from etlora.format.errors import BundleError, EtloraError
from etlora.format.manifest import FORMAT_VERSION, read_manifest
from etlora.packed_cache import CACHE_DIR_NAME

from conftest import MAX_SEQ_LEN, TARGETS, TOKENS

SCHEMES = {"8da4w": FoundationQuantization.from_options("8da4w", 32),  # 8-bit head by default
           "8da8w": FoundationQuantization.from_options("8da8w", None),
           "8da4w-emb4": FoundationQuantization.from_options("8da4w", 32, embedding_bits=4, head_bits=4)}


def recorded_quantization(bundle) -> FoundationQuantization:
    return FoundationQuantization.from_record(read_manifest(bundle).foundation.quantization)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def options(quantization: FoundationQuantization, **overrides) -> ExportOptions:
    """The options of conftest's fp32 bundle, so that adapter files are interchangeable."""
    fields = dict(max_seq_len=MAX_SEQ_LEN, target_modules=TARGETS, adapter_slots=2, quantization=quantization)
    fields.update(overrides)
    return ExportOptions(**fields)


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def quantized_bundle(request, fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / request.param
    export_bundle(fixtures_dir / "model", {"support": fixtures_dir / "support", "legal": fixtures_dir / "legal"},
                  out, options(SCHEMES[request.param]))
    return out


def eager_logits(fixtures_dir, bundle, adapter: str | None) -> np.ndarray:
    """The bundle's program run in PyTorch: the same quantized model, torchao's reference kernels."""
    from etlora.export.bundle import _program_spec

    manifest = read_manifest(bundle)
    quantization = recorded_quantization(bundle)
    assert quantization == SCHEMES[bundle.name]
    foundation = load_foundation(fixtures_dir / "model")
    loaded = [load_adapter(name, fixtures_dir / name, foundation.shape) for name in ("support", "legal")]
    spec = _program_spec(foundation.shape, loaded, options(quantization))
    model = build_model(foundation, spec)
    quantization.apply(model)
    slots = manifest.program_slots()
    active = load_adapter(adapter, fixtures_dir / adapter, foundation.shape) if adapter else None
    tensors = []
    for slot in range(spec.adapter_slots):
        chosen = padded_adapter_tensors(active, slots) if active and slot == 0 else {}
        for site, (in_features, out_features) in zip(slots.sites, slots.site_dims):
            tensors += [chosen.get(f"{site}.lora_a", torch.zeros(1, in_features, slots.max_rank)),
                        chosen.get(f"{site}.lora_b", torch.zeros(1, slots.max_rank, out_features))]
    scales = torch.tensor([active.scaling if active else 0.0, 0.0])
    with torch.no_grad():
        logits = model(torch.tensor([TOKENS]), torch.arange(len(TOKENS)), scales, *tensors)
    return logits.reshape(-1).numpy()


@pytest.mark.parametrize("adapter", [None, "legal"])
def test_runtime_matches_the_quantized_model_in_pytorch(quantized_bundle, fixtures_dir, adapter):
    expected = eager_logits(fixtures_dir, quantized_bundle, adapter)
    received = etlora.load(quantized_bundle, adapters={adapter: 1.0} if adapter else {}).logits(TOKENS)
    # Both quantize activations to int8 per token at run time; where a value sits on a rounding
    # boundary the two may pick neighbouring integers, an error of one activation step (range/255)
    # times the weights it meets. 2% of the logits' range covers that and is far below what a
    # wrong weight, group or scale does (the fp32-vs-4-bit gap on this model is ~20%).
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(received - expected)))
    assert error < 0.02 * scale, f"max abs error {error:.3g} on logits up to {scale:.3g}"


def test_adapter_effect_survives_quantization(quantized_bundle, bundle):
    """LoRA runs in float on the quantized foundation: the adapter moves the logits as it does in fp32."""
    fp32 = etlora.load(bundle)
    quantized = etlora.load(quantized_bundle)
    for name in ("support", "legal"):
        fp32.set_adapters({name: 1.0})
        quantized.set_adapters({name: 1.0})
        fp32_effect = fp32.logits(TOKENS) - etlora.load(bundle).logits(TOKENS)
        quantized_effect = quantized.logits(TOKENS) - etlora.load(quantized_bundle).logits(TOKENS)
        cosine = float(fp32_effect @ quantized_effect / np.linalg.norm(fp32_effect) / np.linalg.norm(quantized_effect))
        assert cosine > 0.9, (name, cosine)


def test_quantized_bundle_is_smaller_and_says_what_is_float(quantized_bundle, bundle):
    manifest = read_manifest(quantized_bundle)
    record = manifest.foundation.quantization
    wanted = SCHEMES[quantized_bundle.name]
    assert manifest.format_version == FORMAT_VERSION and record.scheme == wanted.scheme.value
    assert (record.group_size, record.embedding_bits, record.head_bits) == (
        wanted.group_size, wanted.embedding_bits, wanted.head_bits)
    embedding = ["model.embed_tokens"] if wanted.embedding_bits else []
    assert record.quantized_modules == sorted(
        ["lm_head", *embedding] + [f"model.layers.*.{block}.{m}" for block, ms in
                                   (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                    ("mlp", ("gate_proj", "up_proj", "down_proj")))
                                   for m in ms])
    vocab = manifest.foundation.config["vocab_size"]
    # Left in float32, with sizes: the embedding (vocab x 64) unless quantized, the norms and the
    # rotary tables ([max_seq_len, head_dim] each; head_dim 16).
    float_embedding = {} if embedding else {"model.embed_tokens.weight": vocab * 64 * 4}
    assert record.float_weights == {**float_embedding,
                                    "model.layers.*.input_layernorm.weight": 2 * 64 * 4,
                                    "model.layers.*.post_attention_layernorm.weight": 2 * 64 * 4,
                                    "model.norm.weight": 64 * 4,
                                    "rope_cos": MAX_SEQ_LEN * 16 * 4, "rope_sin": MAX_SEQ_LEN * 16 * 4}
    size = (quantized_bundle / "foundation.ptd").stat().st_size
    rows = 2 * (64 * 2 + 32 * 2 + 128 * 2 + 64)  # output rows of the blocks' linears
    block_params = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)
    bits, scales = (4, block_params // 32) if record.scheme == "8da4w" else (8, rows)
    head_bytes = vocab * 64 * record.head_bits // 8 + 2 * (vocab * 2 if record.head_bits == 4 else vocab)
    # Integer weights plus a 16-bit scale per group (or row), the float tensors above, and nothing
    # else (no float copy of a quantized weight), each segment padded to at most 128 bytes.
    expected = block_params * bits // 8 + 2 * scales + head_bytes + sum(record.float_weights.values())
    if embedding:  # 4-bit rows packed two values a byte, an fp16 scale per 32 values
        expected += vocab * 64 // 2 + vocab * (64 // 32) * 2
    from executorch.extension.flat_tensor.serialize.serialize import _deserialize_to_flat_tensor

    segments = len(_deserialize_to_flat_tensor((quantized_bundle / "foundation.ptd").read_bytes()).segments)
    assert expected <= size < expected + 128 * segments + 4096, (size, expected, segments)  # + header
    assert manifest.foundation.weights_id != manifest.foundation.fingerprint
    from etlora.inspect_bundle import inspect_bundle

    assert inspect_bundle(quantized_bundle).quantization == record
    assert read_manifest(quantized_bundle).foundation.weights_id == wanted.weights_id(manifest.foundation.fingerprint)


def test_foundation_ptd_is_the_same_whatever_the_adapters(quantized_bundle, fixtures_dir, tmp_path):
    other = tmp_path / "other"
    export_bundle(fixtures_dir / "model", {"sql": fixtures_dir / "sql"}, other,
                  options(SCHEMES[quantized_bundle.name], target_modules="v_proj,down_proj", adapter_slots=1))
    assert sha256(other / "foundation.ptd") == sha256(quantized_bundle / "foundation.ptd")


def test_fp32_bundles_adapter_files_serve_the_quantized_bundle(quantized_bundle, bundle, tmp_path):
    """The adapter files do not depend on the foundation's storage: byte-identical, and accepted."""
    for name in ("support", "legal"):
        assert sha256(bundle / "adapters" / f"{name}.ptd") == sha256(quantized_bundle / "adapters" / f"{name}.ptd")
    copy = tmp_path / "bundle"
    shutil.copytree(quantized_bundle, copy)
    shutil.copy(bundle / "adapters" / "legal.ptd", copy / "adapters" / "legal.ptd")
    etlora.load(copy, adapters={"legal": 1.0}).logits(TOKENS)


def test_add_adapter_to_a_quantized_bundle(quantized_bundle, fixtures_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(quantized_bundle, copy)
    foundation_before = sha256(copy / "foundation.ptd")
    add_adapter(copy, "sql", fixtures_dir / "sql")
    assert sha256(copy / "foundation.ptd") == foundation_before
    session = etlora.load(copy, adapters={"sql": 1.0})
    assert np.max(np.abs(session.logits(TOKENS) - etlora.load(copy).logits(TOKENS))) > 1e-2


def test_packed_file_is_named_for_the_quantized_weights(quantized_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(quantized_bundle, copy)
    shutil.rmtree(copy / CACHE_DIR_NAME, ignore_errors=True)
    first = etlora.load(copy, adapters={"legal": 1.0})
    expected = first.logits(TOKENS)
    from etlora import _runtime

    name = _runtime.packed_cache_file_name(read_manifest(copy).foundation.weights_id)
    assert (copy / CACHE_DIR_NAME / name).is_file() and first.packed_cache.source == "written"
    del first
    again = etlora.load(copy, adapters={"legal": 1.0})
    assert again.packed_cache.from_file
    np.testing.assert_array_equal(again.logits(TOKENS), expected)


# --- errors --------------------------------------------------------------------------------------

def test_unknown_scheme_and_bad_group_sizes_are_refused_before_export(model_dir, fixtures_dir, tmp_path):
    with pytest.raises(EtloraError, match=r"--quantize: expected one of fp32, 8da4w, 8da8w, received 'int3'"):
        FoundationQuantization.from_options("int3", None)
    with pytest.raises(EtloraError, match=r"--group-size: only applies with --quantize"):
        FoundationQuantization.from_options("fp32", 32)
    with pytest.raises(EtloraError, match=r"--group-size: expected an even number >= 2, received 7"):
        FoundationQuantization.from_options("8da4w", 7)
    with pytest.raises(EtloraError, match=r"--quantize-embedding: expected a quantized foundation .*received fp32"):
        FoundationQuantization.from_options("fp32", None, embedding_bits=4)
    with pytest.raises(EtloraError, match=r"--head-bits: expected 8, or 4 with --quantize 8da4w, received 4"):
        FoundationQuantization.from_options("8da8w", None, head_bits=4)
    with pytest.raises(EtloraError, match=r"--quantize-embedding: expected 4 or 8 \(bits\), received 3"):
        FoundationQuantization.from_options("8da4w", None, embedding_bits=3)
    out = tmp_path / "out"
    with pytest.raises(EtloraError, match=r"--group-size 48 does not divide model\.layers\.\*\.self_attn\.q_proj's "
                                          r"input width 64"):
        export_bundle(model_dir, {"support": fixtures_dir / "support"}, out,
                      options(FoundationQuantization.from_options("8da4w", 48)))
    with pytest.raises(EtloraError, match=r"--embedding-group-size 48 does not divide model\.embed_tokens's row "
                                          r"width 64"):
        export_bundle(model_dir, {}, out, options(FoundationQuantization.from_options("8da8w", None, 4, 48)))
    assert not out.exists()


def test_cli_export_refuses_a_bad_scheme_in_one_line(model_dir, tmp_path, capsys):
    from etlora.cli import main

    assert main(["export", "--model", str(model_dir), "--quantize", "q4_k", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert "--quantize: expected one of fp32, 8da4w, 8da8w, received 'q4_k'" in error
    assert not (tmp_path / "b").exists()


def test_a_reader_refuses_an_unknown_scheme(quantized_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(quantized_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["foundation"]["quantization"]["scheme"] = "2da1w"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"quantization scheme '2da1w' is unknown to this etlora .*upgrade etlora"):
        etlora.load(copy)


def test_report_on_a_quantized_bundle(quantized_bundle, bundle, tmp_path):
    """etlora report measures a quantized bundle as it does an fp32 one (every target that passes for
    the fp32 bundle passes here too); its naive models are quantized the same way."""
    if quantized_bundle.name != "8da4w":
        pytest.skip("one scheme is enough for the report path")
    from etlora.cli import main

    reports = {}
    for name, path in (("fp32", bundle), ("8da4w", quantized_bundle)):
        assert main(["report", str(path), "--adapters", "legal", "--out", str(tmp_path / name)]) == 0
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    naive = read_manifest(tmp_path / "8da4w" / "naive_cache" / "legal" / "bundle")
    assert naive.foundation.quantization.scheme == "8da4w" and naive.foundation.quantization.head_bits == 8
    assert reports["8da4w"]["disk"]["foundation_bytes"] == (quantized_bundle / "foundation.ptd").stat().st_size
    passed = {name: {t["name"] for t in report["targets"] if t["passed"]} for name, report in reports.items()}
    assert passed["fp32"] <= passed["8da4w"], reports["8da4w"]["targets"]
