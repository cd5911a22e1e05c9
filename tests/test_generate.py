"""Text generation through etlora.load(...).generate and `etlora run`, on the tiny bundle."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import etlora


def greedy_reference(session, prompt_ids: list[int], steps: int, eos_ids) -> list[int]:
    """Greedy decoding written out over Session.forward: what generate must reproduce."""
    logits = session.forward(prompt_ids, 0)
    generated: list[int] = []
    position = len(prompt_ids)
    for _ in range(steps):
        token = int(np.argmax(logits))
        if token in eos_ids:
            break
        generated.append(token)
        logits = session.forward([token], position)
        position += 1
    return generated


def test_generate_equals_greedy_loop_with_each_adapter(bundle):
    session = etlora.load(bundle)
    prompt_ids = session.tokenizer.encode_chat("hello world")
    for adapters in [{}, {"support": 1.0}, {"legal": 0.5}]:
        session.set_adapters(adapters)
        streamed: list[str] = []
        result = session.generate("hello world", max_new_tokens=12, on_text=streamed.append)
        expected = greedy_reference(session, prompt_ids, 12, set(session.tokenizer.eos_ids))
        assert result.token_ids == expected, adapters
        assert result.prompt_tokens == len(prompt_ids)
        assert "".join(streamed) == result.text == session.tokenizer.decode(expected)
        assert result.decode_tokens_per_second > 0


def test_sampling_is_reproducible_with_a_seed(bundle):
    session = etlora.load(bundle, adapters={"support": 1.0})
    first = session.generate("hello", max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    second = session.generate("hello", max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    assert first.token_ids == second.token_ids


def test_run_command_streams_text_and_reports_speed(bundle):
    expected = etlora.load(bundle, adapters={"legal": 1.0}).generate("hello world", max_new_tokens=8).text
    result = subprocess.run(
        [sys.executable, "-m", "etlora.cli", "run", str(bundle), "--adapter", "legal",
         "--prompt", "hello world", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == expected
    assert "decode:" in result.stderr and "tok/s" in result.stderr
