"""Every supported family, tiny and random with its special features on (etlora.testing.fixtures
FAMILY_CONFIGS), exported with PEFT adapters on all its linear modules: the runtime's logits against
transformers + PEFT at every position, for no adapter, one, two at 1.0 and -0.5, and strength 0
(bit-exact to none); prefill in chunks then decode; the same numbers through etlora_runner --tokens.

The prompt (12 tokens) is longer than Gemma's window of 4, so sliding-window layers are checked past
the window. The models, adapters and bundles are conftest's family_case, built once per run and shared
with tests/test_families_device.py (ARM, packed cache, report, rank and alpha patterns).
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import etlora
from conftest import ALL_LINEAR, family_targets
from conftest import FAMILY_MAX_SEQ_LEN as MAX_SEQ_LEN
from conftest import FAMILY_TOKENS as TOKENS
from etlora.testing.fixtures import make_lora_adapter, make_tiny_model, peft_reference_logits

TOLERANCE = 1e-4


def _close(received: np.ndarray, expected: np.ndarray, what: str) -> None:
    error = float(np.max(np.abs(received - expected)))
    assert error <= TOLERANCE, f"{what}: max |runtime - PEFT| = {error:.2e}"


@pytest.mark.parametrize("strengths", [{}, {"all": 1.0}, {"attn": 1.0}, {"all": 1.0, "attn": -0.5}],
                         ids=["none", "all", "attn", "all+attn"])
def test_logits_equal_peft_at_every_position(family_case, strengths):
    family, model_dir, adapters, bundle = family_case
    expected = peft_reference_logits(model_dir, {adapters[name]: value for name, value in strengths.items()}, TOKENS)
    session = etlora.load(bundle, adapters=strengths)
    for end in range(1, len(TOKENS) + 1):
        _close(session.logits(TOKENS[:end]), expected[end - 1], f"{family} {strengths} prefill of {end}")


def test_chunked_prefill_then_decode_equals_peft(family_case):
    family, model_dir, adapters, bundle = family_case
    expected = peft_reference_logits(model_dir, {adapters["all"]: 1.0, adapters["attn"]: -0.5}, TOKENS)
    session = etlora.load(bundle, adapters={"all": 1.0, "attn": -0.5})
    session.forward(TOKENS[:3], 0)
    _close(session.forward(TOKENS[3:7], 3), expected[6], f"{family} chunk 3..6")
    for position in range(7, len(TOKENS)):
        _close(session.forward(TOKENS[position:position + 1], position), expected[position],
               f"{family} decode at {position}")


def test_strength_zero_is_the_foundation_bit_for_bit(family_case):
    family, _, _, bundle = family_case
    foundation = etlora.load(bundle).logits(TOKENS)
    zero = etlora.load(bundle, adapters={"all": 0.0, "attn": 0.0}).logits(TOKENS)
    assert np.array_equal(foundation, zero), family


def test_manifest_names_the_family(family_case):
    from etlora.format.manifest import read_manifest

    family, _, _, bundle = family_case
    config = read_manifest(bundle).foundation.config
    assert config["family"] == {"llama3": "llama"}.get(family, family)
    assert len(config["layers"]) == 3


def test_runner_prints_the_same_logits(family_case):
    family, model_dir, adapters, bundle = family_case
    runner = shutil.which("etlora_runner") or str(Path(sysconfig.get_path("scripts")) / "etlora_runner")
    if not Path(runner).exists():
        pytest.skip("etlora_runner is not installed")
    result = subprocess.run([runner, "--bundle", str(bundle), "--adapter", "all", "--tokens",
                             ",".join(map(str, TOKENS)), "--show", "16"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("logits[:16]:"))
    printed = np.array([float(value) for value in line.split("]:", 1)[1].split()], dtype=np.float32)
    expected = peft_reference_logits(model_dir, {adapters["all"]: 1.0}, TOKENS)[-1][:16]
    assert np.max(np.abs(printed - expected)) <= TOLERANCE + 1e-6, (family, printed, expected)


def test_htp_program_refuses_layers_with_different_windows():
    """One sliding-window mask input: a model whose layers slide over two windows is refused by name,
    one window is read as it is, and a model without windows has none."""
    import dataclasses

    import pytest

    from etlora.export.families import Activation, DecoderShape, Family, LayerAttention, RopeTable
    from etlora.export.htp_model import sliding_window_of
    from etlora.format.errors import EtloraError

    layer = LayerAttention(rotary_dim=16, sliding_window=4, rope_table=RopeTable.LOCAL)
    shape = DecoderShape(
        family=Family.GEMMA3, vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=True, qkv_bias=False, o_bias=False,
        mlp_bias=False, qk_norm=True, activation=Activation.GELU_TANH, embedding_scale=32**0.5,
        sandwich_norms=True, attention_scale=16**-0.5, layers=(layer, layer),
    )
    one_window = dataclasses.replace(shape, layers=(layer, dataclasses.replace(layer, sliding_window=0)))
    assert sliding_window_of(one_window) == 4
    assert sliding_window_of(dataclasses.replace(shape, layers=(dataclasses.replace(layer, sliding_window=0),))) == 0
    two_windows = dataclasses.replace(shape, layers=(layer, dataclasses.replace(layer, sliding_window=8)))
    with pytest.raises(EtloraError, match=r"one sliding-window mask; this gemma3_text model's layers slide over "
                                          r"2 different windows \[4, 8\] \(hint: --backend xnnpack\)"):
        sliding_window_of(two_windows)


def test_htp_shaped_model_equals_peft(family_case, tmp_path):
    """The HTP-shaped model (export/htp_model.py), eager, fed the adapter files as the runtime reads
    them: prefill in chunks of 4 (the last padded) then decode, against PEFT. Gemma 3's window of 4
    is shorter than the prompt: its layers read the host-built sliding mask past the window."""
    import torch

    from etlora.export.adapter_file import write_adapter_ptd
    from etlora.export.adapters import load_adapter, program_sites
    from etlora.export.foundation import load_foundation
    from etlora.export.htp_model import HostKVCache, adapter_method_inputs
    from etlora.export.htp_program import HtpShape, build_htp_model
    from etlora.export.program import ProgramSpec
    from etlora.format.adapter_format import read_adapter_ptd
    from etlora.format.backends import Backend

    family, model_dir, adapters, _ = family_case
    foundation = load_foundation(model_dir)
    modules = ALL_LINEAR
    spec = ProgramSpec(tuple(program_sites(foundation.shape, modules)), tuple(modules), max_rank=8,
                       adapter_slots=2, max_seq_len=MAX_SEQ_LEN, backend=Backend.XNNPACK)
    slots = spec.slots(foundation)
    chosen = []
    for name, strength in (("all", 1.0), ("attn", -0.5)):
        write_adapter_ptd(load_adapter(name, adapters[name], foundation.shape), slots, tmp_path / f"{name}.ptd")
        contents = read_adapter_ptd(tmp_path / f"{name}.ptd")
        chosen.append(({key: torch.from_numpy(array.copy()) for key, array in contents.tensors.items()},
                       strength * contents.scaling))
    inputs = adapter_method_inputs(spec.sites, slots.site_dims, 8, spec.adapter_slots, chosen)
    prefill = build_htp_model(foundation, spec, HtpShape(4, MAX_SEQ_LEN))
    step = build_htp_model(foundation, spec, HtpShape(1, MAX_SEQ_LEN))
    host = HostKVCache(foundation.shape, MAX_SEQ_LEN, prefill, 4, step, inputs)
    expected = peft_reference_logits(model_dir, {adapters["all"]: 1.0, adapters["attn"]: -0.5}, TOKENS)
    with torch.no_grad():
        prefilled = host.forward(TOKENS[:10]).numpy()
        _close(prefilled, expected[:10], f"{family} HTP-shaped prefill")
        for position in range(10, len(TOKENS)):
            _close(host.forward([TOKENS[position]]).numpy()[-1], expected[position], f"{family} HTP decode at {position}")


def test_htp_session_runs_the_lowered_htp_program(family_case, tmp_path):
    """The HTP-shaped program lowered (the XNNPACK stand-in for QNN) and run by the C++ HtpSession on
    the bundle's foundation.ptd and adapter files: chunks of 4 then decode, against PEFT. For Gemma 3
    the host builds the sliding-window mask past its window of 4."""
    from etlora import _runtime
    from etlora.testing.htp_stand_in import lower_bundle_htp_shaped

    family, model_dir, adapters, bundle = family_case
    stand_in = lower_bundle_htp_shaped(bundle, model_dir, 4, tmp_path / "model_htp.pte")
    session = _runtime.HtpSession(str(stand_in.path), str(stand_in.foundation_path))
    windows = {layer.sliding_window for layer in stand_in.foundation.shape.layers} - {0}
    assert session.sliding_window == (windows.pop() if windows else 0)
    session.set_adapters([(str(bundle / stand_in.manifest.adapters[name].file), strength)
                          for name, strength in (("all", 1.0), ("attn", -0.5))])
    expected = peft_reference_logits(model_dir, {adapters["all"]: 1.0, adapters["attn"]: -0.5}, TOKENS)
    _close(np.asarray(session.forward(TOKENS[:10], 0)), expected[9], f"{family} HtpSession prefill")
    assert session.last_chunks == 3
    for position in range(10, len(TOKENS)):
        _close(np.asarray(session.forward(TOKENS[position:position + 1], position)), expected[position],
               f"{family} HtpSession decode at {position}")


def test_activated_lora_equals_peft(family_case):
    """Before its invocation the aLoRA is the foundation; from it on, PEFT's gated update."""
    family, model_dir, adapters, bundle = family_case
    session = etlora.load(bundle, adapters={"invoked": 1.0})
    for end in (2, 4, len(TOKENS)):
        expected = peft_reference_logits(model_dir, {adapters["invoked"]: 1.0}, TOKENS[:end])[-1]
        _close(session.logits(TOKENS[:end]), expected, f"{family} aLoRA, {end} tokens")


def test_add_adapter_serves_it_exactly(family_case, tmp_path):
    from etlora.export import add_adapter

    family, model_dir, adapters, bundle = family_case
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns(".etlora-cache"))
    added = make_lora_adapter(model_dir, tmp_path / "added", rank=2, target_modules=family_targets(family)[-2:], seed=8)
    add_adapter(copy, "added", added)
    expected = peft_reference_logits(model_dir, {added: 1.0}, TOKENS)[-1]
    _close(etlora.load(copy, adapters={"added": 1.0}).logits(TOKENS), expected, f"{family} added adapter")


@pytest.mark.slow  # a quantized export per family (about 20 s each)
@pytest.mark.parametrize("scheme", ["8da4w-emb4", "8da8w"])
def test_quantized_runtime_equals_the_quantized_model_in_pytorch(family_case, tmp_path, scheme):
    """--quantize 8da4w --quantize-embedding 4, and --quantize 8da8w, per family: the runtime against
    the same quantized model run by PyTorch (torchao's reference kernels), the 'all' adapter active;
    within 2% of the logits' range, as tests/test_quantization.py explains."""
    import torch

    from etlora.export import ExportOptions, export_bundle
    from etlora.export.adapter_file import padded_adapter_tensors
    from etlora.export.adapters import load_adapter
    from etlora.export.bundle import _program_spec
    from etlora.export.foundation import load_foundation
    from etlora.export.program import build_model
    from etlora.export.quantization import FoundationQuantization
    from etlora.format.manifest import read_manifest

    family, model_dir, adapters, _ = family_case
    quantization = {"8da4w-emb4": FoundationQuantization.from_options("8da4w", 32, embedding_bits=4),
                    "8da8w": FoundationQuantization.from_options("8da8w", None)}[scheme]
    options = ExportOptions(max_seq_len=MAX_SEQ_LEN, quantization=quantization)
    bundle = tmp_path / "bundle"
    export_bundle(model_dir, {"all": adapters["all"]}, bundle, options)
    received = etlora.load(bundle, adapters={"all": 1.0}).logits(TOKENS)

    foundation = load_foundation(model_dir)
    active = load_adapter("all", adapters["all"], foundation.shape)
    spec = _program_spec(foundation.shape, [active], options)
    model = build_model(foundation, spec)
    quantization.apply(model)
    slots = read_manifest(bundle).program_slots()
    chosen = padded_adapter_tensors(active, slots)
    tensors = [chosen[f"{site}.{part}"] for site in slots.sites for part in ("lora_a", "lora_b")]
    with torch.no_grad():
        expected = model(torch.tensor([TOKENS]), torch.arange(len(TOKENS)), torch.tensor([active.scaling]),
                         *tensors).reshape(-1).numpy()
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(received - expected)))
    assert error < 0.02 * scale, f"{family} {scheme}: max abs error {error:.3g} on logits up to {scale:.3g}"


def _longrope_phi3(directory: Path) -> Path:
    """Phi-3 with LongRoPE (Phi-3.5 / Phi-4-mini style), original context 16 of 64."""
    half = int(16 * 0.5) // 2  # head_dim 16, partial_rotary_factor 0.5: 4 frequencies
    return make_tiny_model(directory, "phi3", seed=4, max_position_embeddings=64,
                           original_max_position_embeddings=16,
                           rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                            "partial_rotary_factor": 0.5,
                                            "short_factor": [1.0 + 0.25 * i for i in range(half)],
                                            "long_factor": [2.0 + i for i in range(half)],
                                            "original_max_position_embeddings": 16})


def test_longrope_short_factors_within_the_original_context(tmp_path):
    from etlora.export import ExportOptions, export_bundle

    model_dir = _longrope_phi3(tmp_path / "model")
    export_bundle(model_dir, {}, tmp_path / "bundle", ExportOptions(max_seq_len=16, target_modules="none"))
    expected = peft_reference_logits(model_dir, {}, TOKENS)
    _close(etlora.load(tmp_path / "bundle").logits(TOKENS), expected[-1], "phi3 LongRoPE")


def test_longrope_beyond_the_original_context_is_refused(tmp_path):
    from etlora.export import ExportOptions, export_bundle
    from etlora.format.errors import EtloraError

    model_dir = _longrope_phi3(tmp_path / "model")
    with pytest.raises(EtloraError, match=r"original_max_position_embeddings 16; --max-seq-len 32 is beyond it"):
        export_bundle(model_dir, {}, tmp_path / "bundle", ExportOptions(max_seq_len=32, target_modules="none"))
    assert not (tmp_path / "bundle").exists()


def test_an_adapter_for_modules_the_family_lacks_is_refused(tmp_path):
    """Split q/k/v (a Llama's) on a Phi-3, whose checkpoint fuses them: refused naming its modules."""
    from etlora.export.adapters import load_adapter
    from etlora.export.foundation import load_foundation
    from etlora.format.errors import AdapterError

    llama = make_tiny_model(tmp_path / "llama", "llama3")
    adapter = make_lora_adapter(llama, tmp_path / "split", rank=2, target_modules=["q_proj"])
    phi3 = load_foundation(make_tiny_model(tmp_path / "phi3", "phi3"))
    with pytest.raises(AdapterError, match=r"targets model\.layers\.0\.self_attn\.q_proj, absent from the foundation "
                                           r"\(phi3: 3 layers, linear modules qkv_proj, o_proj, gate_up_proj, down_proj\)"):
        load_adapter("split", adapter, phi3.shape)


def test_dynamic_rope_is_refused_before_the_weights(tmp_path):
    from etlora.export import ExportOptions, export_bundle
    from etlora.format.errors import EtloraError

    model_dir = make_tiny_model(tmp_path / "model", "llama3",
                                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    (model_dir / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(EtloraError, match=r"RoPE type 'dynamic' changes with the sequence length"):
        export_bundle(model_dir, {}, tmp_path / "bundle", ExportOptions(target_modules="none"))
