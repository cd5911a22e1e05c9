"""The bundle's tokenizer/ folder: the model's own Hugging Face files plus etlora_chat.json.

The C++ runtime reads tokenizer.json itself (runtime_cpp/src/text) and encodes as `tokenizers`
does. Which tokenizers it runs is decided in one place, the C++ loader: `check_tokenizer` loads the
tokenizer.json that would be written through etlora._runtime before any export work, so a
component the runtime lacks is refused here, by name, with the same words as at load. It then
encodes a set of probe texts both ways and refuses a tokenizer whose ids differ.

etlora_chat.json (docs/bundle-format.md, "tokenizer/") holds what tokenizer.json lacks: the ids
that stop generation and the chat template rendered around one user message, checked against
apply_chat_template here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from etlora.format.errors import EtloraError
from etlora.format.files import write_atomically

TOKENIZER_DIR = "tokenizer"
TOKENIZER_JSON = "tokenizer.json"
CHAT_FILE = "etlora_chat.json"
CHAT_FILE_VERSION = 1
HF_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# Stands for the user's message while the chat template is rendered, then split on.
USER_SENTINEL = "<<etlora-user-message-5b1e>>"
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>")

# Texts the runtime must encode as Hugging Face does before a bundle is written: scripts, digits,
# whitespace runs, code, and every added token inside text.
PROBE_TEXTS = (
    "Hello, world! It's 12:45 and they've got 3 apples; I'm sure we'll see.",
    "  leading and trailing spaces   \n\n\ttabs\t\tand\r\nnewlines\n",
    "numbers 1234567890 3.14159 -42 mixed123abc456",
    "def f(x):\n    return x**2  # square\n",
    "café crème naïve ÀÉÎÕÜ ß ø ﬁ ①②",
    "日本語のテキスト 한국어 텍스트 Ελληνικά русский עברית عربي ١٢٣ हिन्दी",
    "emoji 🙂👍🏽👨‍👩‍👧 e\u0301 zero\u200bwidth nbsp\u00a0x\u3000y",
)


def _runtime_tokenizer(path: Path):
    from etlora import _runtime

    return _runtime.Tokenizer(str(path))


def _checked_load(tokenizer, folder: Path):
    """The runtime's tokenizer of `folder`; its refusal (one line, naming the component) as an EtloraError."""
    try:
        return _runtime_tokenizer(folder / TOKENIZER_JSON)
    except (RuntimeError, ValueError, OSError) as error:
        message = str(error).replace(str(folder / TOKENIZER_JSON), f"{_source(tokenizer)} tokenizer.json")
        raise EtloraError(f"tokenizer: {message}") from None


def _source(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "the model's"


def _probe_mismatch(tokenizer, runtime) -> str | None:
    """The first probe text the runtime encodes differently from Hugging Face, described, or None."""
    added = [token.content for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()][:64]
    texts = list(PROBE_TEXTS) + [f"a{token}b {token} x{token}" for token in added]
    for text in texts:
        for special in (False, True):
            expected = tokenizer.encode(text, add_special_tokens=special)
            received = runtime.encode(text, special)
            if received != expected:
                return (f"{text!r} (add_special_tokens={special}): Hugging Face {expected[:12]}..., "
                        f"runtime {received[:12]}...")
    return None


def check_tokenizer(tokenizer) -> None:
    """Refuses, before any export work, a tokenizer the C++ runtime would not encode as Hugging Face does."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / TOKENIZER_JSON).write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
        runtime = _checked_load(tokenizer, folder)
        mismatch = _probe_mismatch(tokenizer, runtime)
    if mismatch:
        raise EtloraError(
            f"tokenizer: expected the runtime's ids to equal Hugging Face's, got a difference on {mismatch} "
            "(hint: a tokenizer feature etlora does not run; etlora export --no-tokenizer, and tokenize on the host)"
        )
    _stop_token_ids(tokenizer)
    _single_user_turn(tokenizer)


def _stop_token_ids(tokenizer) -> list[int]:
    """The model's eos plus the usual end-of-turn tokens its vocabulary has."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    for text in END_OF_TURN_TOKENS:
        token_id = vocab.get(text)
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise EtloraError(
            "tokenizer: expected an eos token or one of " + ", ".join(END_OF_TURN_TOKENS)
            + ", got none (hint: generation could not stop; set eos_token in tokenizer_config.json)"
        )
    return ids


def _single_user_turn(tokenizer) -> dict[str, str] | None:
    """The chat template rendered around one user message with the generation prompt, split there."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": USER_SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    if text.count(USER_SENTINEL) != 1:
        raise EtloraError(
            f"tokenizer: expected the chat template to show the user message once, got {text.count(USER_SENTINEL)} "
            "times (hint: a template that changes the message cannot be split into a prefix and a suffix)"
        )
    prefix, suffix = text.split(USER_SENTINEL)
    return {"prefix": prefix, "suffix": suffix}


def chat_file_text(tokenizer) -> str:
    """etlora_chat.json for a transformers fast tokenizer (same tokenizer -> same text)."""
    chat = {
        "format": "etlora-chat",
        "format_version": CHAT_FILE_VERSION,
        "stop_token_ids": _stop_token_ids(tokenizer),
        "single_user_turn": _single_user_turn(tokenizer),
    }
    return json.dumps(chat, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def _check_chat_against_template(tokenizer, runtime) -> None:
    """The runtime's chat prompt must be apply_chat_template's ids for a sample message."""
    if not runtime.has_chat_template:
        return
    message = "Hi there! 1 + 1 = 2?"
    expected = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=True,
                                             add_generation_prompt=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    received = runtime.encode_chat(message)
    if received != expected:
        raise EtloraError(
            f"tokenizer: expected the chat prompt of {message!r} to be apply_chat_template's {expected[:16]}..., "
            f"got {received[:16]}... (hint: the template renders the message differently per call?)"
        )


def write_tokenizer_files(tokenizer, out_dir: Path) -> list[str]:
    """Writes the Hugging Face files and etlora_chat.json into out_dir (the bundle's tokenizer/).

    Returns the written names relative to the bundle, e.g. "tokenizer/tokenizer.json", sorted.
    """
    out_dir = Path(out_dir)
    check_tokenizer(tokenizer)  # refuses before anything is written
    chat_text = chat_file_text(tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        for name in HF_FILES:
            source = Path(scratch) / name
            if source.is_file():
                write_atomically(out_dir / name, source.read_bytes())
                written.append(name)
    write_atomically(out_dir / CHAT_FILE, chat_text.encode("utf-8"))
    written.append(CHAT_FILE)
    _check_chat_against_template(tokenizer, _checked_load(tokenizer, out_dir))
    return sorted(f"{TOKENIZER_DIR}/{name}" for name in written)
