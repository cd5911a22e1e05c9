"""The HTP-shaped graph (export/htp_model.py): parity with transformers + PEFT, static export, lowering.

Adapters reach the graph exactly as the CPU program gets them: written to an adapter .ptd by
adapter_file.py and read back, so one file serving both programs is part of what is checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ADAPTERS, MAX_SEQ_LEN, TOKENS

TOLERANCE = 1e-4
CACHE_LEN = MAX_SEQ_LEN  # as the bundle fixture's program, so the two foundation.ptd can be compared
MAX_RANK = 8
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = TOKENS + [5, 120, 33]  # 11 tokens: three prefill chunks of 4, the last one padded


@pytest.fixture(scope="module")
def adapter_dirs(fixtures_dir, tmp_path_factory):
    """conftest's rsLoRA 'legal' (q, o, down; rank 8) and one adapter on every linear layer (rank 4)."""
    from etlora.testing.fixtures import make_lora_adapter

    every = make_lora_adapter(fixtures_dir / "model", tmp_path_factory.mktemp("htp") / "every",
                              rank=4, target_modules=ALL_LINEAR, seed=21)
    assert ADAPTERS["legal"]["use_rslora"]
    return {"legal": fixtures_dir / "legal", "every": every}


@pytest.fixture(scope="module")
def setup(model_dir):
    from etlora.export.adapters import program_sites
    from etlora.export.foundation import load_foundation
    from etlora.export.program import ProgramSpec
    from etlora.format.backends import Backend

    foundation = load_foundation(model_dir)
    sites = tuple(program_sites(foundation.shape, ALL_LINEAR))
    spec = ProgramSpec(sites, tuple(ALL_LINEAR), max_rank=MAX_RANK, adapter_slots=2,
                       max_seq_len=CACHE_LEN, backend=Backend.XNNPACK)
    return foundation, spec


@pytest.fixture(scope="module")
def adapter_files(setup, adapter_dirs, tmp_path_factory):
    """name -> (tensors keyed <site>.lora_a / .lora_b, scaling), read back from the written .ptd."""
    from etlora.export.adapter_file import write_adapter_ptd
    from etlora.export.adapters import load_adapter
    from etlora.format.adapter_format import read_adapter_ptd

    foundation, spec = setup
    out = tmp_path_factory.mktemp("htp_ptd")
    files = {}
    for name, directory in adapter_dirs.items():
        adapter = load_adapter(name, directory, foundation.shape)
        write_adapter_ptd(adapter, spec.slots(foundation), out / f"{name}.ptd")
        contents = read_adapter_ptd(out / f"{name}.ptd")
        files[name] = ({key: torch.from_numpy(array.copy()) for key, array in contents.tensors.items()},
                       contents.scaling)
    return files


def adapter_inputs(setup, adapter_files, active: dict[str, float]):
    from etlora.export.htp_model import adapter_method_inputs

    foundation, spec = setup
    slots = spec.slots(foundation)
    chosen = [(adapter_files[name][0], strength * adapter_files[name][1]) for name, strength in active.items()]
    return adapter_method_inputs(spec.sites, slots.site_dims, MAX_RANK, spec.adapter_slots, chosen)


def peft_all_logits(model_dir, adapter_dirs, active: dict[str, float], tokens) -> np.ndarray:
    """Reference logits [len(tokens), vocab]: transformers, plus PEFT with every adapter in
    `active` enabled at once (PEFT sums active LoRA adapters), each scaled by its strength."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = list(active)
    if names:
        model = PeftModel.from_pretrained(model, str(adapter_dirs[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapter_dirs[name]), adapter_name=name)
        model.base_model.set_adapter(names)
        for module in model.modules():
            if isinstance(getattr(module, "scaling", None), dict):
                module.scaling = {k: v * active.get(k, 1.0) for k, v in module.scaling.items()}
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def assert_close(received, expected, label: str) -> float:
    received = np.asarray(received)
    assert received.shape == expected.shape, label
    error = float(np.max(np.abs(received - expected)))
    print(f"{label}: max abs diff {error:.3g}")
    assert error < TOLERANCE, f"{label}: max abs error {error:.3g}"
    return error


def host(setup, inputs, prefill_len: int, decode: bool = True):
    from etlora.export.htp_model import HostKVCache
    from etlora.export.htp_program import HtpShape, build_htp_model

    foundation, spec = setup
    prefill = build_htp_model(foundation, spec, HtpShape(prefill_len, CACHE_LEN))
    step = build_htp_model(foundation, spec, HtpShape(1, CACHE_LEN)) if decode else None
    return HostKVCache(foundation.shape, CACHE_LEN, prefill, prefill_len, step, inputs)


CASES = {
    "no adapter": {},
    "legal@1": {"legal": 1.0},
    "every@1": {"every": 1.0},
    "every@1+legal@0.5": {"every": 1.0, "legal": 0.5},
}


@pytest.mark.parametrize("case", list(CASES))
def test_eager_matches_peft(setup, adapter_files, adapter_dirs, model_dir, case):
    """One prefill chunk of exactly len(TOKENS): logits at every position against PEFT."""
    active = CASES[case]
    expected = peft_all_logits(model_dir, adapter_dirs, active, TOKENS)
    with torch.no_grad():
        logits = host(setup, adapter_inputs(setup, adapter_files, active), len(TOKENS), decode=False).forward(TOKENS)
    assert_close(logits.numpy(), expected, f"eager {case}")
    if active:  # the adapters must change the answer, or the comparison proves nothing
        foundation_only = peft_all_logits(model_dir, adapter_dirs, {}, TOKENS)
        assert np.max(np.abs(expected - foundation_only)) > 1e-2
    if len(active) == 2:  # and the second slot must count
        first_only = peft_all_logits(model_dir, adapter_dirs, dict(list(active.items())[:1]), TOKENS)
        assert np.max(np.abs(expected - first_only)) > 1e-2


def test_generation_through_host_cache_matches_peft(setup, adapter_files, adapter_dirs, model_dir):
    """Prefill in chunks of 4 (last one padded), then decode one token at a time through the cache."""
    active = CASES["every@1+legal@0.5"]
    runner = host(setup, adapter_inputs(setup, adapter_files, active), prefill_len=4)
    with torch.no_grad():
        tokens, logits = runner.generate(PROMPT, steps=6)
    assert len(tokens) == len(PROMPT) + 6 and runner.length == len(tokens) - 1
    expected = peft_all_logits(model_dir, adapter_dirs, active, tokens[:-1])
    assert_close(logits.numpy(), expected, "generation, every position")
    assert tokens[len(PROMPT):] == [int(row.argmax()) for row in expected[len(PROMPT) - 1:]]


def test_llama_for_export_graph_is_not_htp_shaped(setup):
    """The checker's control: the CPU program's graph, exported as program.py does (dynamic token
    count, custom attention op updating the cache in place), is refused on every count."""
    from etlora.export.htp_program import check_standard_graph
    from etlora.export.program import build_model, example_inputs
    from etlora.format.errors import EtloraError
    from torch.export import Dim, export

    foundation, spec = setup
    inputs = example_inputs(foundation, spec)
    tokens = Dim("tokens", min=1, max=spec.max_seq_len)
    dynamic_shapes = ({1: tokens}, {0: tokens}, None, (None,) * (len(inputs) - 3))
    with torch.no_grad():
        traced = export(build_model(foundation, spec), inputs, dynamic_shapes=dynamic_shapes, strict=False)
    with pytest.raises(EtloraError) as error:
        check_standard_graph(traced)
    for problem in ("non-ATen ops ['etlora.cached_attention", "mutating ops", "symbolic dims", "dynamic shapes"):
        assert problem in str(error.value)


def test_lowered_program_matches_eager(setup, adapter_files, adapter_dirs, model_dir, bundle, tmp_path):
    """Static export, only ATen ops, XNNPACK lowering; the program run by ExecuTorch's runtime
    through the same host cache (prefill chunks of 4, decode padded) equals eager and PEFT.
    It runs on the CPU bundle's own foundation.ptd: its foundation data is the same bytes."""
    from etlora.export.htp_model import HostKVCache
    from etlora.export.htp_program import HtpShape, lower_htp_shaped
    from executorch.runtime import Runtime

    foundation, spec = setup
    result = lower_htp_shaped(foundation, spec, HtpShape(4, CACHE_LEN))
    assert not any("etlora" in op for op in result.aten_ops)
    assert {"aten.bmm.default", "aten.softmax.int", "aten.cat.default"} <= set(result.aten_ops)
    assert result.delegates >= 1 and result.delegated_ops > 0
    print(f"lowered: {result.delegates} delegate(s), {result.delegated_ops} ops delegated, "
          f"outside: {list(result.undelegated_ops)}")
    assert result.lowered.foundation_bytes == (bundle / "foundation.ptd").read_bytes()
    (tmp_path / "model.pte").write_bytes(result.lowered.program_bytes)
    program = Runtime.get().load_program(tmp_path / "model.pte", data_path=bundle / "foundation.ptd")
    method = program.load_method("forward")
    for case in ("no adapter", "every@1+legal@0.5"):
        inputs = adapter_inputs(setup, adapter_files, CASES[case])
        eager = host(setup, inputs, prefill_len=4, decode=False)
        lowered = HostKVCache(foundation.shape, CACHE_LEN, lambda *args: method.execute(list(args)), 4,
                              adapter_inputs=inputs)
        with torch.no_grad():
            tokens, eager_logits = eager.generate(PROMPT, steps=4)
        lowered_logits = torch.cat([lowered.forward(PROMPT)] + [lowered.forward([t]) for t in tokens[len(PROMPT):-1]])
        assert_close(lowered_logits.numpy(), eager_logits.numpy(), f"lowered vs eager, {case}")
        expected = peft_all_logits(model_dir, adapter_dirs, CASES[case], tokens[:-1])
        assert_close(lowered_logits.numpy(), expected, f"lowered vs PEFT, {case}")
