"""Activated LoRA on the HTP-shaped program: gated exactly as on the CPU program.

An aLoRA applies only from the start of the last occurrence of its invocation tokens on
(docs/bundle-format.md). The HTP program takes per-slot scales as inputs, so HtpSession runs a
forward in segments cut at that start (AdapterRegistry::segments, shared with Session), each as its
own chunks: a cut inside a chunk makes a shorter, padded one. Its logits must equal PEFT's reference
and the CPU program's, at positions before the invocation (the foundation) and after it (the
adapter applied). Without the gating the adapter would act before the invocation and the first
comparison fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import etlora
from etlora.testing.fixtures import make_lora_adapter, peft_reference_logits

CHUNK_LEN = 4
INVOCATION = [7, 64]
PREFIX = [1, 17, 42, 99, 3, 250, 11, 19, 23, 5, 88, 120, 31, 2, 60, 77, 45, 8]  # 18: the cut is inside a chunk
PROMPT = PREFIX + INVOCATION + [9, 14, 200]  # 23 tokens; activation start 18
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def alora_htp(fixtures_dir, tmp_path_factory):
    """A bundle with an aLoRA and an ordinary adapter, and its program lowered HTP-shaped."""
    from transformers import AutoModelForCausalLM

    from etlora.export import ExportOptions, export_bundle
    from etlora.testing.htp_stand_in import lower_bundle_htp_shaped

    root = tmp_path_factory.mktemp("alora_htp")
    model = AutoModelForCausalLM.from_pretrained(fixtures_dir / "model")
    make_lora_adapter(model, root / "invoked", rank=4, target_modules=["q_proj", "v_proj", "down_proj"],
                      seed=21, alora_invocation_tokens=INVOCATION)
    bundle = root / "bundle"
    export_bundle(fixtures_dir / "model", {"invoked": root / "invoked", "support": fixtures_dir / "support"},
                  bundle, ExportOptions(max_seq_len=64, target_modules="q_proj,v_proj,o_proj,down_proj",
                                        adapter_slots=2))
    lowered = lower_bundle_htp_shaped(bundle, fixtures_dir / "model", CHUNK_LEN, root / "model_htp.pte")
    return bundle, root / "invoked", lowered


def htp_session(lowered, bundle, adapters: dict[str, float]):
    from etlora import _runtime

    session = _runtime.HtpSession(str(lowered.path), str(lowered.foundation_path))
    files = {name: str(bundle / record.file) for name, record in lowered.manifest.adapters.items()}
    session.set_adapters([(files[name], strength) for name, strength in adapters.items()])
    return session


def test_alora_on_the_htp_program_equals_peft_and_the_cpu_program(alora_htp, fixtures_dir):
    bundle, adapter_dir, lowered = alora_htp
    reference = peft_reference_logits(fixtures_dir / "model", adapter_dir, PROMPT)  # every position
    foundation = peft_reference_logits(fixtures_dir / "model", None, PROMPT)
    on_htp = htp_session(lowered, bundle, {"invoked": 1.0})
    on_cpu = etlora.load(bundle, adapters={"invoked": 1.0})
    start = len(PREFIX)
    complete = start + len(INVOCATION)  # the first length that holds the whole invocation
    # Prefixes ending before the invocation, inside it and after it: each a fresh prefill from 0.
    for length in (3, start - 1, start, start + 1, complete, complete + 1, len(PROMPT)):
        received = on_htp.logits(PROMPT[:length])
        # Without the whole invocation the adapter does not apply: the foundation's logits. With it,
        # PEFT's gated logits at that position (positions after it do not change earlier ones).
        expected = reference[length - 1] if length >= complete else foundation[length - 1]
        assert np.abs(received - expected).max() < TOLERANCE, f"HTP vs PEFT after {length} tokens"
        assert np.abs(received - on_cpu.logits(PROMPT[:length])).max() < TOLERANCE, f"HTP vs CPU, {length}"
    # Before the activation start PEFT's reference is the foundation, after it the adapter acts, or
    # the comparisons above prove little.
    assert np.abs(reference[start - 1] - foundation[start - 1]).max() < TOLERANCE
    assert np.abs(reference[-1] - foundation[-1]).max() > 1e-3
    # The 23-token prefill ran as [0, 18) in chunks 4, 4, 4, 4, 2 and [18, 23) in chunks 4, 1.
    on_htp.logits(PROMPT)
    assert on_htp.last_chunks == 7


def test_alora_beside_an_ordinary_adapter_on_the_htp_program(alora_htp, fixtures_dir):
    """Two slots: the ordinary adapter everywhere, the aLoRA from its start; a prompt without the
    invocation runs as the ordinary adapter alone."""
    bundle, adapter_dir, lowered = alora_htp
    both = {adapter_dir: 1.0, fixtures_dir / "support": 0.5}
    reference = peft_reference_logits(fixtures_dir / "model", both, PROMPT)
    on_htp = htp_session(lowered, bundle, {"invoked": 1.0, "support": 0.5})
    assert np.abs(on_htp.logits(PROMPT) - reference[-1]).max() < TOLERANCE
    without = PREFIX + [9, 14, 200]
    support_only = htp_session(lowered, bundle, {"support": 0.5})
    np.testing.assert_array_equal(on_htp.logits(without), support_only.logits(without))


def test_a_prefix_before_the_invocation_is_kept_on_the_htp_program(alora_htp):
    """HtpSession keeps the foundation's positions before the activation start across a prompt
    change (the same bookkeeping as Session), and the result equals a fresh prefill."""
    bundle, _, lowered = alora_htp
    on_htp = htp_session(lowered, bundle, {"invoked": 1.0})
    on_htp.generate(PREFIX + [9, 14], 2, reuse_prefix=True)
    ids, stats = on_htp.generate(PROMPT, 3, reuse_prefix=True)
    assert stats["reused_tokens"] == len(PREFIX)
    fresh = htp_session(lowered, bundle, {"invoked": 1.0})
    fresh_ids, fresh_stats = fresh.generate(PROMPT, 3, reuse_prefix=True)
    assert fresh_stats["reused_tokens"] == 0 and list(ids) == list(fresh_ids)
