"""Logit parity: our C++ runtime (through etlora.load) against transformers + PEFT, fp32."""

from __future__ import annotations

import numpy as np
import pytest

import etlora
from etlora.testing.fixtures import peft_logits

from conftest import TOKENS

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def references(fixtures_dir):
    model = fixtures_dir / "model"
    return {
        None: peft_logits(model, None, TOKENS),
        "support": peft_logits(model, fixtures_dir / "support", TOKENS),
        "legal": peft_logits(model, fixtures_dir / "legal", TOKENS),
        "legal@0.5": peft_logits(model, fixtures_dir / "legal", TOKENS, strength=0.5),
    }


def assert_close(received: np.ndarray, expected: np.ndarray) -> None:
    assert received.shape == expected.shape
    error = float(np.max(np.abs(received - expected)))
    assert error < TOLERANCE, f"max abs error {error:.3g}"


def test_no_adapter_equals_foundation(bundle, references):
    assert_close(etlora.load(bundle).logits(TOKENS), references[None])


@pytest.mark.parametrize("name", ["support", "legal"])
def test_each_adapter_matches_peft(bundle, references, name):
    logits = etlora.load(bundle, adapters={name: 1.0}).logits(TOKENS)
    assert_close(logits, references[name])
    # The adapter must actually change the answer, or the comparison above proves nothing.
    assert np.max(np.abs(logits - references[None])) > 1e-2


def test_strength_half_matches_peft_scaled(bundle, references):
    assert_close(etlora.load(bundle, adapters={"legal": 0.5}).logits(TOKENS), references["legal@0.5"])


def test_switching_adapters_in_one_session(bundle, references):
    session = etlora.load(bundle)
    for name in ["support", None, "legal", "support"]:
        session.set_adapters({name: 1.0} if name else {})
        assert_close(session.logits(TOKENS), references[name])


def test_two_sessions_with_different_adapters_side_by_side(bundle, references):
    support = etlora.load(bundle, adapters={"support": 1.0})
    legal = etlora.load(bundle, adapters={"legal": 1.0})
    for _ in range(2):  # interleave so that any shared state between them would show
        assert_close(support.logits(TOKENS), references["support"])
        assert_close(legal.logits(TOKENS), references["legal"])


def test_prefill_then_decode_matches_full_prefill(bundle):
    session = etlora.load(bundle, adapters={"legal": 1.0})
    full = session.logits(TOKENS)
    session.forward(TOKENS[:-1], 0)
    stepped = session.forward(TOKENS[-1:], len(TOKENS) - 1)
    assert_close(stepped, full)


def test_export_model_in_pytorch_matches_peft(model_dir, references):
    """The graph torch.export sees (model.py + the attention op's eager reference), run in PyTorch."""
    import torch

    from etlora.export.foundation import load_foundation
    from etlora.export.program import ProgramSpec, build_model
    from etlora.format.backends import Backend

    foundation = load_foundation(model_dir)
    spec = ProgramSpec((), (), max_rank=1, adapter_slots=0, max_seq_len=32, backend=Backend.XNNPACK)
    model = build_model(foundation, spec)
    tokens = torch.tensor([TOKENS])
    with torch.no_grad():
        model(tokens[:, :-1], torch.arange(len(TOKENS) - 1), torch.zeros(0))  # prefill
        stepped = model(tokens[:, -1:], torch.tensor([len(TOKENS) - 1]), torch.zeros(0))  # decode
    assert_close(stepped.reshape(-1).numpy(), references[None])
