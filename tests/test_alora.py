"""Activated LoRA (PEFT's alora_invocation_tokens): applied from the invocation tokens on, and a
shared prefix before them kept in the KV cache across adapter switches.

The runtime cuts a forward at each slot's activation start (the start of the last occurrence of
the invocation sequence) and runs the part before it with that slot's scale 0, so positions before
it hold the foundation's K/V whatever adapter is active; Session::reusable_prefix keeps exactly
those when the next prompt shares them.
"""

from __future__ import annotations

import numpy as np
import pytest

import etlora
from etlora.testing.fixtures import make_lora_adapter

INVOCATION = [7, 64]
PREFIX = [1, 17, 42, 99, 3, 250, 11, 19, 23, 5, 88, 120, 31, 2, 60, 77]  # the shared "system prompt"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def alora_bundle(fixtures_dir, tmp_path_factory):
    from etlora.export import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("alora")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fixtures_dir / "model")
    make_lora_adapter(model, root / "invoked", rank=4, target_modules=["q_proj", "v_proj", "down_proj"],
                      seed=21, alora_invocation_tokens=INVOCATION)
    out = root / "bundle"
    export_bundle(fixtures_dir / "model", {"invoked": root / "invoked", "support": fixtures_dir / "support"}, out,
                  ExportOptions(max_seq_len=64, target_modules="q_proj,v_proj,o_proj,down_proj", adapter_slots=2))
    return out, root / "invoked"


def test_alora_equals_peft_and_is_the_foundation_before_the_invocation(alora_bundle, fixtures_dir):
    from etlora.testing.fixtures import peft_alora_logits

    bundle, adapter_dir = alora_bundle
    with_invocation = PREFIX + INVOCATION + [9, 14, 200]
    without = PREFIX + [9, 14, 200]
    session = etlora.load(bundle, adapters={"invoked": 1.0})
    foundation = etlora.load(bundle)
    reference = peft_alora_logits(fixtures_dir / "model", adapter_dir, with_invocation)
    received = session.logits(with_invocation)
    assert np.abs(received - reference).max() < TOLERANCE
    assert np.abs(received - foundation.logits(with_invocation)).max() > 1e-3  # the adapter acts
    # No invocation: the foundation, bit for bit (the slot's scale is 0 everywhere).
    np.testing.assert_array_equal(session.logits(without), foundation.logits(without))


def test_a_prefix_before_the_invocation_is_kept_across_a_switch(alora_bundle):
    bundle, _ = alora_bundle
    first = PREFIX + [9, 14]
    second = PREFIX + INVOCATION + [200, 3]
    session = etlora.load(bundle)
    ids, stats = session._runtime.generate(first, 4, reuse_prefix=True)
    session.set_adapters({"invoked": 1.0})
    kept, kept_stats = session._runtime.generate(second, 6, reuse_prefix=True)
    assert kept_stats["reused_tokens"] == len(PREFIX)  # everything before the invocation
    fresh = etlora.load(bundle, adapters={"invoked": 1.0})
    full, full_stats = fresh._runtime.generate(second, 6, reuse_prefix=False)
    assert full_stats["reused_tokens"] == 0 and kept == full
    # Logits: the kept prefix plus the rest equal a full recompute.
    session._runtime.generate(first, 1, reuse_prefix=True)
    continued = session.forward(second[len(PREFIX):], len(PREFIX))
    assert np.abs(continued - fresh.logits(second)).max() < 1e-5


def test_an_ordinary_adapter_keeps_its_cache_only_while_bound_unchanged(alora_bundle):
    bundle, _ = alora_bundle
    prompt = PREFIX + INVOCATION + [200, 3]
    session = etlora.load(bundle, adapters={"support": 1.0})
    expected, _ = session._runtime.generate(prompt, 2, reuse_prefix=True)
    again, stats = session._runtime.generate(prompt, 2, reuse_prefix=True)  # no switch: support's K/V hold
    assert stats["reused_tokens"] == len(prompt) - 1 and again == expected
    session.set_adapters({"support": 0.5})  # another strength: every position support touched is stale
    _, stats = session._runtime.generate(prompt, 2, reuse_prefix=True)
    assert stats["reused_tokens"] == 0
    session.set_adapters({"support": 1.0})
    _, stats = session._runtime.generate(prompt, 2, reuse_prefix=True)
    assert stats["reused_tokens"] == 0
    session.set_adapters({"invoked": 1.0})  # the cache holds support's K/V from position 0
    _, stats = session._runtime.generate(prompt, 2, reuse_prefix=True)
    assert stats["reused_tokens"] == 0
    session.set_adapters({"support": 1.0})  # support applies from position 0: nothing to keep
    _, stats = session._runtime.generate(prompt, 2, reuse_prefix=True)
    assert stats["reused_tokens"] == 0
    session.set_adapters({})  # the foundation again: positions before invoked's start were its own
    _, stats = session._runtime.generate(prompt, 2, reuse_prefix=True)
    assert stats["reused_tokens"] == 0  # support's run overwrote them with adapter K/V
    _, stats = session._runtime.generate(prompt, 2, reuse_prefix=True)
    assert stats["reused_tokens"] == len(prompt) - 1  # foundation after foundation: all but the last


def test_generate_reports_what_it_kept(alora_bundle):
    bundle, _ = alora_bundle
    session = etlora.load(bundle)
    session._runtime.generate(PREFIX + [9], 2, reuse_prefix=True)
    session.set_adapters({"invoked": 1.0})
    _, stats = session._runtime.generate(PREFIX + INVOCATION, 2, reuse_prefix=False)
    assert stats["reused_tokens"] == 0  # asked not to keep anything


def test_report_naive_column_stands_the_foundation_in_for_an_activated_lora(alora_bundle, tmp_path):
    """PEFT cannot merge an aLoRA; the naive model is the foundation alone (what a merged copy
    weighs), said in a note, and the ordinary adapter beside it is merged as before."""
    import json

    from etlora.cli import main

    bundle, _ = alora_bundle
    out = tmp_path / "report"
    assert main(["report", str(bundle), "--adapters", "invoked,support", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [process["adapter"] for process in report["naive"]["processes"]] == ["invoked", "support"]
    assert any("naive model of invoked: an activated LoRA cannot be merged" in note for note in report["notes"])
    # the measuring forward ends with the invocation, so the aLoRA's pages are touched and counted
    cost = next(cost for cost in report["adapter_costs"] if cost["adapter"] == "invoked")
    assert cost["resident_adapter_pss"] >= 0.5 * cost["ptd_bytes"], cost
    naive = {name: json.loads((out / "naive_cache" / name / "bundle" / "manifest.json").read_text())
             for name in ("invoked", "support")}
    foundation = json.loads((bundle / "manifest.json").read_text())["foundation"]
    # the stand-in is the foundation's weights exactly; the merged one is not
    assert naive["invoked"]["foundation"]["weights_id"] == foundation["weights_id"]
    assert naive["support"]["foundation"]["weights_id"] != foundation["weights_id"]


def test_a_forward_past_the_cache_end_leaves_a_gap_never_kept(alora_bundle):
    """K/V left beyond the cache's end were computed after other tokens: a forward that starts past
    the end must not make them count as a reusable prefix, whatever the adapters."""
    bundle, _ = alora_bundle
    first, other, tail = PREFIX, [9, 14, 200, 3, 8], [40, 41, 42]
    for adapters in ({}, {"support": 1.0}):
        session = etlora.load(bundle, adapters=adapters)
        session.forward(first, 0)  # positions 0..15 after PREFIX
        session.forward(other, 0)  # 0..4 rewritten; the cache ends at 5
        session.forward(tail, 10)  # past the end: 5..9 still hold K/V computed after PREFIX[:5]
        prompt = other + first[5:10] + tail + [2]
        expected, _ = etlora.load(bundle, adapters=adapters)._runtime.generate(prompt, 3, reuse_prefix=False)
        kept, stats = session._runtime.generate(prompt, 3, reuse_prefix=True)
        assert stats["reused_tokens"] <= len(other) and kept == expected, (adapters, stats)
