"""Several adapters at once, each with its own strength, against PEFT with the same adapters active.

The reference is transformers + PEFT with every adapter loaded and active together, each adapter's
scaling multiplied by its strength: foundation + sum of strength * scaling * B @ A over adapters.
Through etlora.load, `etlora run` and etlora_runner, on the tiny fixture bundle (two slots).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import etlora
from etlora.testing.fixtures import peft_logits

from conftest import MAX_SEQ_LEN, TOKENS

TOLERANCE = 1e-4  # as tests/test_parity.py
ORDER_TOLERANCE = 1e-6
PROMPT = "hello world"
NEW_TOKENS = 12


def peft_weighted_logits(model_dir: Path, adapters: dict[Path, float], token_ids: list[int]) -> np.ndarray:
    """Last-position logits with every adapter active in PEFT at once, scalings times strengths."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = [f"adapter{index}" for index in range(len(adapters))]
    (first, *rest) = adapters
    model = PeftModel.from_pretrained(model, str(first), adapter_name=names[0])
    for name, directory in zip(names[1:], rest):
        model.load_adapter(str(directory), adapter_name=name)
    model.base_model.set_adapter(names)  # LoraModel takes a list: every adapter adds its update
    strengths = dict(zip(names, adapters.values()))
    scaled = 0
    for module in model.modules():
        if hasattr(module, "scaling") and isinstance(module.scaling, dict):
            module.scaling = {name: value * strengths[name] for name, value in module.scaling.items()}
            scaled += 1
    assert scaled > 0
    assert sorted(model.base_model.active_adapters) == sorted(names)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0, -1].numpy()


def max_error(received: np.ndarray, expected: np.ndarray) -> float:
    assert received.shape == expected.shape
    return float(np.max(np.abs(received - expected)))


@pytest.fixture(scope="module")
def three_adapter_bundle(bundle, fixtures_dir, tmp_path_factory) -> Path:
    """The fixture bundle (two slots, support + legal) with sql added: three adapters for two slots."""
    from etlora.export import add_adapter

    out = tmp_path_factory.mktemp("multi") / "bundle"
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns(".etlora-cache"))
    add_adapter(out, "sql", fixtures_dir / "sql")
    return out


@pytest.fixture(scope="module")
def foundation_only_bundle(model_dir, tmp_path_factory) -> Path:
    """The same foundation exported without adapter inputs (--target-modules none)."""
    from etlora.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("foundation_only") / "bundle"
    export_bundle(model_dir, {}, out, ExportOptions(max_seq_len=MAX_SEQ_LEN, target_modules="none"))
    return out


# Pairs with a shared site (support and legal both adapt q_proj; sql and legal both down_proj),
# a negative strength (subtracts the adapter), and an adapter of rsLoRA scaling (legal).
PAIRS = [
    {"support": 1.0, "legal": 0.5},
    {"support": 1.0, "legal": -0.7},
    {"sql": 1.0, "legal": 0.5},
    {"sql": -0.7, "support": 0.3},
]


@pytest.mark.parametrize("strengths", PAIRS, ids=lambda pair: ",".join(f"{k}={v:g}" for k, v in pair.items()))
def test_two_adapters_at_once_match_peft(three_adapter_bundle, fixtures_dir, strengths):
    model = fixtures_dir / "model"
    expected = peft_weighted_logits(model, {fixtures_dir / name: s for name, s in strengths.items()}, TOKENS)
    session = etlora.load(three_adapter_bundle, adapters=strengths)
    received = session.logits(TOKENS)
    assert max_error(received, expected) < TOLERANCE
    # Each adapter must count: the pair differs from either adapter alone at its strength.
    for name, strength in strengths.items():
        alone = peft_logits(model, fixtures_dir / name, TOKENS, strength=strength)
        assert max_error(received, alone) > 1e-2, name


def test_peft_reference_adds_the_two_deltas(fixtures_dir):
    """The reference itself: with both adapters active, a PEFT layer adds both scaled updates (on the
    first layer's q_proj, which both adapters adapt)."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model_dir = fixtures_dir / "model"
    x = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(0))

    def q_proj_out(adapters: dict[str, float]) -> torch.Tensor:
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if not adapters:
            return model.model.layers[0].self_attn.q_proj(x)
        names = list(adapters)
        peft = PeftModel.from_pretrained(model, str(fixtures_dir / names[0]), adapter_name=names[0])
        for name in names[1:]:
            peft.load_adapter(str(fixtures_dir / name), adapter_name=name)
        peft.base_model.set_adapter(names)
        layer = peft.base_model.model.model.layers[0].self_attn.q_proj
        layer.scaling = {name: value * adapters[name] for name, value in layer.scaling.items()}
        with torch.no_grad():
            return layer(x)

    with torch.no_grad():
        base = q_proj_out({})
        both = q_proj_out({"support": 1.0, "legal": 0.5})
        support = q_proj_out({"support": 1.0}) - base
        legal = q_proj_out({"legal": 0.5}) - base
    assert float((support.abs().max())) > 1e-2 and float(legal.abs().max()) > 1e-2
    torch.testing.assert_close(both, base + support + legal, atol=1e-6, rtol=0)


def test_order_of_adapters_does_not_change_the_logits(bundle):
    forward = etlora.load(bundle, adapters={"support": 1.0, "legal": 0.5}).logits(TOKENS)
    backward = etlora.load(bundle, adapters={"legal": 0.5, "support": 1.0}).logits(TOKENS)
    assert max_error(forward, backward) < ORDER_TOLERANCE


def test_zero_strengths_and_empty_slots_are_the_foundation_bit_for_bit(bundle, foundation_only_bundle):
    expected = etlora.load(foundation_only_bundle).logits(TOKENS)
    session = etlora.load(bundle)
    for adapters in [{}, {"support": 0.0}, {"legal": 0.0}, {"support": 0.0, "legal": 0.0}, {"legal": 0.0, "support": 0.0}]:
        session.set_adapters(adapters)
        np.testing.assert_array_equal(session.logits(TOKENS), expected, err_msg=str(adapters))
    session.set_adapters({"support": 1.0, "legal": 0.0})  # a zero beside a live one adds nothing either
    np.testing.assert_array_equal(session.logits(TOKENS), etlora.load(bundle, adapters={"support": 1.0}).logits(TOKENS))


@pytest.mark.parametrize(
    "adapters, message",
    [
        ({"support": 1.0, "legal": 0.5, "sql": 1.0}, r"3 adapters requested \(support, legal, sql\), this program has 2 adapter slot"),
        ({"support": 1.0, "chat": 0.5}, r"no adapter named 'chat' \(bundle has: legal, sql, support\)"),
        ({"support": 1.0, "legal": math.nan}, r"adapter 'legal': strength must be a finite number, got nan"),
        ({"support": math.inf}, r"adapter 'support': strength must be a finite number, got inf"),
    ],
)
def test_bad_adapter_sets_leave_the_session_unchanged(three_adapter_bundle, adapters, message):
    session = etlora.load(three_adapter_bundle, adapters={"support": 1.0, "legal": 0.5})
    before = session.logits(TOKENS)
    with pytest.raises(etlora.EtloraError, match=message):
        session.set_adapters(adapters)
    assert session.active_adapters == {"support": 1.0, "legal": 0.5}
    np.testing.assert_array_equal(session.logits(TOKENS), before)


# --- etlora run ----------------------------------------------------------------------------------


def etlora_run(bundle: Path, *adapter_flags: str) -> subprocess.CompletedProcess:
    flags = [part for flag in adapter_flags for part in ("--adapter", flag)]
    return subprocess.run(
        [sys.executable, "-m", "etlora.cli", "run", str(bundle), *flags, "--prompt", PROMPT,
         "--max-new-tokens", str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def two_adapter_text(bundle) -> tuple[str, list[int]]:
    result = etlora.load(bundle, adapters={"support": 1.0, "legal": 0.5}).generate(PROMPT, max_new_tokens=NEW_TOKENS)
    alone = etlora.load(bundle, adapters={"support": 1.0}).generate(PROMPT, max_new_tokens=NEW_TOKENS)
    assert result.token_ids and result.token_ids != alone.token_ids  # legal at 0.5 changes the answer
    return result.text, result.token_ids


def test_run_command_with_two_adapters_writes_the_session_text(bundle, two_adapter_text):
    text, token_ids = two_adapter_text
    result = etlora_run(bundle, "support=1.0", "legal=0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == text
    assert "adapters: support=1, legal=0.5" in result.stderr
    assert f"decode: {len(token_ids)} tokens" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["support=1.0", "support=0.5"], "--adapter: expected each adapter once, received 'support' more than once "
                                         "(hint: one --adapter support=STRENGTH)"),
        (["support=1.0", "chat=0.5"], "no adapter named 'chat' (bundle has: legal, support)"),
        (["support", "legal", "legal2=1"], "3 adapters requested (support, legal, legal2), this program has 2 adapter slot(s)"),
        (["support=1.0", "legal=nan"], "adapter 'legal': strength must be a finite number, got nan"),
        (["support=inf"], "adapter 'support': strength must be a finite number, got inf"),
    ],
)
def test_run_command_refuses_bad_adapter_flags_in_one_line(bundle, flags, message):
    result = etlora_run(bundle, *flags)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_run_command_refuses_a_strength_that_is_no_number(bundle):
    result = etlora_run(bundle, "support=x")  # argparse's own error: usage, then the one error line
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "etlora run: error: argument --adapter: expected NAME or NAME=STRENGTH, received 'support=x'")


# --- etlora_runner -------------------------------------------------------------------------------


def runner(*args: str) -> subprocess.CompletedProcess:
    import sysconfig

    found = shutil.which("etlora_runner") or str(Path(sysconfig.get_path("scripts")) / "etlora_runner")
    if not Path(found).exists():
        pytest.skip("etlora_runner is not installed")
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=300)


def test_runner_with_two_adapters_gives_the_session_logits(bundle):
    expected = etlora.load(bundle, adapters={"support": 1.0, "legal": 0.5}).logits(TOKENS)
    result = runner("--bundle", str(bundle), "--adapter", "support=1.0", "--adapter", "legal=0.5",
                    "--tokens", ",".join(map(str, TOKENS)))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert int(lines["argmax"]) == int(np.argmax(expected)), result.stdout
    printed = np.array([float(value) for value in lines["logits[:8]"].split()])
    np.testing.assert_allclose(printed, expected[:8], atol=1e-5)


def test_runner_with_two_adapters_writes_the_session_text(bundle, two_adapter_text):
    text, token_ids = two_adapter_text
    result = runner("--bundle", str(bundle), "--adapter", "support=1.0", "--adapter", "legal=0.5",
                    "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == text
    assert f"decode: {len(token_ids)} tokens" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["support=1.0", "support=0.5"], "is given twice"),
        (["support=1.0", "chat=0.5"], "chat"),
        (["support", "legal", "support=0.5"], "adapter slot(s)"),
        (["support=1.0", "legal=nan"], "strength must be a finite number"),
    ],
)
def test_runner_refuses_bad_adapter_flags(bundle, flags, message):
    args = [part for flag in flags for part in ("--adapter", flag)]
    result = runner("--bundle", str(bundle), *args, "--tokens", ",".join(map(str, TOKENS)))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # beside info lines
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "argmax" not in result.stdout
