"""`--model FILE.gguf` per family: a tiny F32 GGUF written as llama.cpp's converter writes one
(etlora.testing.gguf_fixtures) against the safetensors checkpoint of the same weights.

For every family transformers' GGUF loader reads (llama, qwen2, qwen3, gemma3, phi3), in the variant
of FAMILY_CONFIGS whose features a GGUF carries to transformers (gguf_fixtures.READABLE_OVERRIDES):
transformers reads the checkpoint's tensors back; etlora's foundations of the two are the same
program weights, shape and rotary tables; and (slow: two exports per family) the two bundles hold
the same foundation.ptd and give the same runtime logits, with and without an adapter on every
linear module, equal to transformers + PEFT on the checkpoint. Every FAMILY_CONFIGS family as it
is, whose features the loader would drop (Llama 3 RoPE, Qwen3's head size, Gemma's linear scaling,
Phi-3's partial rotary, SmolLM3 altogether), is refused naming what; so are LongRoPE, a Llama's
biases, a Gemma 3 whose head_dim is not its query_pre_attn_scalar and a window the loader drops.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import etlora
from etlora.format.errors import EtloraError
from etlora.testing.fixtures import FAMILY_CONFIGS, make_lora_adapter, peft_reference_logits
from etlora.testing.gguf_fixtures import READABLE_OVERRIDES, make_tiny_gguf

TOKENS = [1, 17, 42, 99, 3, 250, 7, 64, 5, 128, 33, 200]
MAX_SEQ_LEN = 32
PEFT_TOLERANCE = 1e-4  # as tests/test_families.py: the runtime against PyTorch
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


@pytest.fixture(scope="module", params=sorted(READABLE_OVERRIDES))
def gguf_case(request, tmp_path_factory):
    """(family, checkpoint directory, GGUF file of the same weights)."""
    family = request.param
    model_dir, gguf_path = make_tiny_gguf(tmp_path_factory.mktemp(f"gguf_{family}"), family, seed=3,
                                          **READABLE_OVERRIDES[family])
    return family, model_dir, gguf_path


def _float32_eps(shape):
    """A GGUF stores rms_norm_eps as float32, which is what the program computes with either way."""
    return replace(shape, rms_norm_eps=float(np.float32(shape.rms_norm_eps)))


def test_transformers_reads_the_checkpoint_back(gguf_case):
    """What transformers' loader returns for the GGUF is the checkpoint: every tensor bit for bit
    (the q/k row permutation undone), except Gemma's norms, stored as 1 + w, whose w comes back
    within one rounding and whose 1 + w, the scale the model applies, bit for bit."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    family, model_dir, gguf_path = gguf_case
    original = load_file(model_dir / "model.safetensors")
    read = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                dtype=torch.float32).state_dict()
    assert sorted(read) == sorted(original)
    for name, tensor in original.items():
        if family == "gemma3_text" and name.endswith("norm.weight"):
            assert float((read[name] - tensor).abs().max()) <= 2.0**-24, name
            assert torch.equal(1.0 + read[name], 1.0 + tensor), name
        else:
            assert torch.equal(read[name], tensor), name


def test_foundations_are_the_same_program(gguf_case):
    """etlora's foundation of the GGUF and of the checkpoint: the same program tensors, shape and
    rotary tables; the same fingerprint except Gemma's (taken before its norms are folded)."""
    from etlora.export.foundation import foundation_rope_tables, load_foundation

    family, model_dir, gguf_path = gguf_case
    checkpoint = load_foundation(model_dir, MAX_SEQ_LEN)
    gguf = load_foundation(gguf_path, MAX_SEQ_LEN)
    assert _float32_eps(gguf.shape) == _float32_eps(checkpoint.shape)
    assert sorted(gguf.state_dict) == sorted(checkpoint.state_dict)
    for name, tensor in checkpoint.state_dict.items():
        assert torch.equal(gguf.state_dict[name], tensor), name
    tables = foundation_rope_tables(checkpoint, MAX_SEQ_LEN)
    gguf_tables = foundation_rope_tables(gguf, MAX_SEQ_LEN)
    assert list(gguf_tables) == list(tables)
    for table, (cos, sin) in tables.items():
        assert torch.equal(gguf_tables[table][0], cos) and torch.equal(gguf_tables[table][1], sin), table
    assert (gguf.fingerprint == checkpoint.fingerprint) == (family != "gemma3_text")


@pytest.mark.slow  # two exports per family, about 11 s each on one core
@pytest.mark.parametrize("family", sorted(READABLE_OVERRIDES))
def test_bundles_hold_the_same_foundation_and_give_the_same_logits(family, tmp_path):
    """Two layers per family, to keep the exports short: Gemma's are then both sliding (its full
    layer, sixth in the pattern a GGUF implies, is held to the checkpoint's by the test above)."""
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    from etlora.export import ExportOptions, export_bundle

    overrides = dict(READABLE_OVERRIDES[family], num_hidden_layers=2)
    if family == "gemma3_text":
        overrides["layer_types"] = ["sliding_attention"] * 2
    model_dir, gguf_path = make_tiny_gguf(tmp_path, family, seed=3, **overrides)
    adapter = make_lora_adapter(model_dir, tmp_path / "adapter", rank=4, seed=5,
                                target_modules=PHI3_LINEAR if family == "phi3" else ALL_LINEAR)
    options = ExportOptions(max_seq_len=MAX_SEQ_LEN, tokenizer=False)
    bundles = {}
    for source, path in (("safetensors", model_dir), ("gguf", gguf_path)):
        bundles[source] = tmp_path / f"bundle_{source}"
        export_bundle(path, {"all": adapter}, bundles[source], options)

    # foundation.ptd entry by entry (XNNPACK's packed weights under the SHA-256 of their bytes, the
    # other constants under their names), then byte for byte
    raw = {source: (bundle / "foundation.ptd").read_bytes() for source, bundle in bundles.items()}
    payloads = {source: FlatTensorSerializer().deserialize(data) for source, data in raw.items()}
    entries = {source: payload.named_data for source, payload in payloads.items()}
    assert sorted(entries["gguf"]) == sorted(entries["safetensors"])
    assert len(entries["gguf"]) > 0
    for key, entry in entries["safetensors"].items():
        other = entries["gguf"][key]
        assert other.tensor_layout == entry.tensor_layout, key
        assert payloads["gguf"].buffers[other.buffer_index] == payloads["safetensors"].buffers[entry.buffer_index], key
    assert raw["gguf"] == raw["safetensors"]

    for strengths in ({}, {"all": 1.0}):
        expected = peft_reference_logits(model_dir, {adapter: 1.0} if strengths else {}, TOKENS)
        sessions = {source: etlora.load(bundle, adapters=strengths) for source, bundle in bundles.items()}
        for end in range(1, len(TOKENS) + 1):
            checkpoint = sessions["safetensors"].logits(TOKENS[:end])
            gguf = sessions["gguf"].logits(TOKENS[:end])
            assert np.array_equal(gguf, checkpoint), (
                f"{family} {strengths} prefill of {end}: max |GGUF - safetensors| = "
                f"{float(np.max(np.abs(gguf - checkpoint))):.3g}")
            error = float(np.max(np.abs(checkpoint - expected[end - 1])))
            assert error <= PEFT_TOLERANCE, f"{family} {strengths} prefill of {end}: max |runtime - PEFT| = {error:.2e}"


# FAMILY_CONFIGS as it is, one feature each that transformers' GGUF loader does not carry over.
DROPPED = {
    "llama3": r"received 1 that transformers' GGUF loader skips for llama: rope_freqs\.weight \(Llama 3 RoPE scaling\)",
    "qwen3": r"expected head_dim 128 \(the model transformers' GGUF loader builds from this file\), received "
             r"qwen3\.attention\.key_length = 24 in the file",
    "gemma3_text": r"expected rope_type 'default' .*, received gemma3\.rope\.scaling\.type = 'linear' in the file",
    "phi3": r"expected rotary dims 16 .*, received phi3\.rope\.dimension_count = 8 in the file",
    "smollm3": r"expected a GGUF of architecture llama, qwen2, qwen3, gemma3, phi3 \(the families etlora exports "
               r"that transformers' GGUF loader reads\), received 'smollm3'",
}


def test_every_family_config_is_either_read_or_refused():
    assert sorted(DROPPED) == sorted(set(FAMILY_CONFIGS) - {family for family in READABLE_OVERRIDES
                                                             if not READABLE_OVERRIDES[family]})


@pytest.mark.parametrize("family", sorted(DROPPED))
def test_a_feature_the_loader_drops_is_refused(family, tmp_path):
    from etlora.export.foundation import load_foundation

    _, gguf_path = make_tiny_gguf(tmp_path, family, seed=3)
    with pytest.raises(EtloraError, match=DROPPED[family] + r".*hint: export the Hugging Face checkpoint directory"):
        load_foundation(gguf_path, MAX_SEQ_LEN)


LONGROPE = dict(max_position_embeddings=64, original_max_position_embeddings=16, rope_parameters={
    "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
    "short_factor": [1.0 + 0.25 * i for i in range(8)], "long_factor": [2.0 + i for i in range(8)]})
REFUSED = {
    "phi3 LongRoPE": ("phi3", LONGROPE, r"skips for phi3: rope_factors_long\.weight \(LongRoPE long factors\), "
                                        r"rope_factors_short\.weight \(LongRoPE short factors\)"),
    "llama biases": ("llama3", dict(READABLE_OVERRIDES["llama3"], attention_bias=True),
                     r"received 12 that transformers' GGUF loader skips for llama: blk\.0\.attn_\w+\.bias"),
    "gemma3 head_dim 16": ("gemma3_text", dict(READABLE_OVERRIDES["gemma3_text"], head_dim=16, query_pre_attn_scalar=16),
                           r"expected a Gemma 3 GGUF with head_dim 256, received gemma3\.attention\.key_length = 16: "
                           r"a GGUF does not record query_pre_attn_scalar"),
    "phi3 window": ("phi3", dict(READABLE_OVERRIDES["phi3"], sliding_window=8),
                    r"expected sliding_window 0 .*, received phi3\.attention\.sliding_window = 8 in the file"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_a_gguf_cannot_say_to_transformers_is_refused(case, tmp_path):
    from etlora.export.foundation import load_foundation

    family, overrides, message = REFUSED[case]
    _, gguf_path = make_tiny_gguf(tmp_path, family, seed=3, **overrides)
    with pytest.raises(EtloraError, match=message):
        load_foundation(gguf_path, MAX_SEQ_LEN)


def test_a_window_no_sequence_reaches_is_not_refused(tmp_path):
    """Phi-3-mini-4k's window (2047 of 4096) is in its GGUF but not in transformers' config: with
    --max-seq-len within the window, attention is the same without it."""
    from etlora.export.foundation import load_foundation

    model_dir, gguf_path = make_tiny_gguf(tmp_path, "phi3", seed=3, **READABLE_OVERRIDES["phi3"], sliding_window=8)
    gguf = load_foundation(gguf_path, 8)
    checkpoint = load_foundation(model_dir, 8)
    assert [layer.sliding_window for layer in checkpoint.shape.layers] == [8, 8, 8]
    assert [layer.sliding_window for layer in gguf.shape.layers] == [0, 0, 0]
    assert sorted(gguf.state_dict) == sorted(checkpoint.state_dict)
    assert all(torch.equal(gguf.state_dict[name], tensor) for name, tensor in checkpoint.state_dict.items())


def test_a_file_that_is_no_gguf_is_refused(tmp_path):
    from etlora.export.foundation import load_foundation

    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(EtloraError, match=r"model\.gguf: expected a GGUF file, could not read its header"):
        load_foundation(path)
    path.write_bytes(b"not a gguf at all, but long enough to hold a header")
    with pytest.raises(EtloraError, match=r"model\.gguf: expected a GGUF file, could not read its header"):
        load_foundation(path)
