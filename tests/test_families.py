"""Every supported family, tiny and random with its special features on (etlora.testing.fixtures
FAMILY_CONFIGS), exported with PEFT adapters on all its linear modules: the runtime's logits against
transformers + PEFT at every position, for no adapter, one, two at 1.0 and -0.5, and strength 0
(bit-exact to none); prefill in chunks then decode; the same numbers through etlora_runner --tokens.

The prompt (12 tokens) is longer than Gemma's window of 4, so sliding-window layers are checked past
the window.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import etlora
from etlora.testing.fixtures import FAMILY_CONFIGS, make_lora_adapter, make_tiny_model, peft_reference_logits

TOLERANCE = 1e-4
TOKENS = [1, 17, 42, 99, 3, 250, 7, 64, 5, 128, 33, 200]
MAX_SEQ_LEN = 32
# PEFT's names for every linear module of a block; Phi-3 fuses q/k/v and gate/up.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def _targets(family: str) -> list[str]:
    return PHI3_LINEAR if family == "phi3" else ALL_LINEAR


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def family_case(request, tmp_path_factory):
    """(family, model dir, adapter dirs, bundle) with adapters 'all' (rank 4, every linear module)
    and 'attn' (rank 8, rsLoRA, attention modules only), two slots."""
    from etlora.export import ExportOptions, export_bundle

    family = request.param
    root = tmp_path_factory.mktemp(family)
    model_dir = make_tiny_model(root / "model", family, seed=3)
    targets = _targets(family)
    adapters = {
        "all": make_lora_adapter(model_dir, root / "all", rank=4, target_modules=targets, seed=5),
        "attn": make_lora_adapter(model_dir, root / "attn", rank=8, target_modules=targets[:2], seed=6,
                                  use_rslora=True),
    }
    bundle = root / "bundle"
    export_bundle(model_dir, adapters, bundle, ExportOptions(max_seq_len=MAX_SEQ_LEN, adapter_slots=2))
    return family, model_dir, adapters, bundle


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


def test_htp_shaped_model_equals_peft(family_case, tmp_path):
    """The HTP-shaped model (export/htp_model.py), eager, fed the adapter files as the runtime reads
    them: prefill in chunks of 4 (the last padded) then decode, against PEFT. A family with
    sliding-window layers is refused by name (the host-built mask has no window yet)."""
    import torch

    from etlora.export.adapter_file import write_adapter_ptd
    from etlora.export.adapters import load_adapter, program_sites
    from etlora.export.foundation import load_foundation
    from etlora.export.htp_model import HostKVCache, adapter_method_inputs
    from etlora.export.htp_program import HtpShape, build_htp_model
    from etlora.export.program import ProgramSpec
    from etlora.format.adapter_format import read_adapter_ptd
    from etlora.format.backends import Backend
    from etlora.format.errors import EtloraError

    family, model_dir, adapters, _ = family_case
    foundation = load_foundation(model_dir)
    modules = ALL_LINEAR
    spec = ProgramSpec(tuple(program_sites(foundation.shape, modules)), tuple(modules), max_rank=8,
                       adapter_slots=2, max_seq_len=MAX_SEQ_LEN, backend=Backend.XNNPACK)
    if any(layer.sliding_window for layer in foundation.shape.layers):
        with pytest.raises(EtloraError, match="no sliding-window mask yet"):
            build_htp_model(foundation, spec, HtpShape(4, MAX_SEQ_LEN))
        return
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
