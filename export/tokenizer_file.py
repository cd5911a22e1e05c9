"""The bundle's tokenizer/ folder: the Hugging Face files, plus etlora_tokenizer.txt for the C++ runtime.

etlora_tokenizer.txt is a line format (docs/bundle-format.md, "tokenizer/etlora_tokenizer.txt") that
C++ reads without a JSON parser: every token as its raw bytes in hex (GPT-2's bytes_to_unicode is
undone here), merges as id triples in rank order, the chat template rendered around the user text.
Only byte-level BPE with the GPT-2 split pattern is supported; anything else is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from etlora.format.errors import EtloraError

TOKENIZER_DIR = "tokenizer"
TOKENIZER_TEXT_FILE = "etlora_tokenizer.txt"
TOKENIZER_TEXT_VERSION = 1
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# Stands for the user's message while the chat template is rendered, then split on.
USER_SENTINEL = "<<etlora-user-message-5b1e>>"


def gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable stand-in character -> raw byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    stand_ins = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            stand_ins.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, stand_ins)}


def check_tokenizer(tokenizer) -> None:
    """Refuses, before any export work, a tokenizer the C++ runtime would encode differently."""
    _check_supported(json.loads(tokenizer.backend_tokenizer.to_str()))


def _check_supported(spec: dict) -> None:
    """Refuses tokenizers the C++ runtime would encode differently from Hugging Face."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} (expected 'BPE')")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        problems.append(f"pre_tokenizer {json.dumps(pre)[:120]} (expected ByteLevel with use_regex true)")
    elif pre.get("add_prefix_space"):
        problems.append("pre_tokenizer ByteLevel add_prefix_space true (expected false)")
    if spec.get("normalizer") is not None:
        problems.append(f"normalizer {spec['normalizer'].get('type')!r} (expected none)")
    if model.get("byte_fallback"):
        problems.append("BPE byte_fallback true (expected false)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("BPE subword prefix/suffix set (expected none)")
    for added in spec.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            problems.append(f"added token {added['content']!r} with lstrip/rstrip/single_word (expected none)")
    if problems:
        raise EtloraError(
            "tokenizer: the C++ runtime reads byte-level BPE with the GPT-2 split pattern only; got "
            + "; ".join(problems)
            + " (hint: etlora export --no-tokenizer, and tokenize on the host)"
        )


def _token_bytes(spec: dict, size: int) -> list[bytes | None]:
    """Raw bytes of every id 0..size-1 (None where no token has that id)."""
    decoder = gpt2_byte_decoder()
    by_id: list[bytes | None] = [None] * size
    for token, token_id in spec["model"]["vocab"].items():
        try:
            by_id[token_id] = bytes(decoder[char] for char in token)
        except KeyError as missing:
            raise EtloraError(
                f"tokenizer: vocab token {token!r} (id {token_id}) has character {missing} outside "
                "GPT-2's byte alphabet (expected a ByteLevel vocabulary)"
            ) from None
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"].encode("utf-8")
    return by_id


def _merge_triples(spec: dict) -> list[tuple[int, int, int]]:
    vocab = spec["model"]["vocab"]
    triples = []
    for rank, merge in enumerate(spec["model"]["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        merged = vocab.get(left + right)
        if left not in vocab or right not in vocab or merged is None:
            raise EtloraError(
                f"tokenizer: merge {rank} ({left!r}, {right!r}) names a token missing from the vocab "
                "(expected every merge and its result in the vocab; hint: damaged tokenizer.json)"
            )
        triples.append((vocab[left], vocab[right], merged))
    return triples


def _chat_parts(tokenizer) -> tuple[str, str] | None:
    """The chat template rendered around one user message: (prefix, suffix), or None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": USER_SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    if text.count(USER_SENTINEL) != 1:
        raise EtloraError(
            f"tokenizer: the chat template shows the user message {text.count(USER_SENTINEL)} times "
            "(expected exactly once, so that it splits into a prefix and a suffix)"
        )
    prefix, suffix = text.split(USER_SENTINEL)
    return prefix, suffix


def _eos_ids(tokenizer) -> list[int]:
    """The model's eos plus the usual end-of-turn tokens that the vocabulary has."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"):
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos] != tokenizer.encode(
        "a", add_special_tokens=False
    )[:1]


def _hex(data: bytes) -> str:
    return data.hex() if data else "-"


def tokenizer_text(tokenizer) -> str:
    """etlora_tokenizer.txt for a transformers fast tokenizer (same tokenizer -> same text)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    _check_supported(spec)
    size = max([len(tokenizer)] + [a["id"] + 1 for a in spec.get("added_tokens", [])])
    token_bytes = _token_bytes(spec, size)
    eos = _eos_ids(tokenizer)
    if not eos:
        raise EtloraError("tokenizer: no eos token (expected eos_token or <|im_end|>; generation could not stop)")
    chat = _chat_parts(tokenizer)
    bos = tokenizer.bos_token_id
    lines = [
        f"etlora-tokenizer {TOKENIZER_TEXT_VERSION}",
        "model byte_level_bpe gpt2",
        f"bos {bos} {int(_adds_bos(tokenizer))}" if bos is not None else "bos none",
        "eos " + " ".join(map(str, eos)),
        "special " + " ".join(str(a["id"]) for a in sorted(spec.get("added_tokens", []), key=lambda a: a["id"])),
        f"chat {_hex(chat[0].encode())} {_hex(chat[1].encode())}" if chat else "chat none",
        f"vocab {size}",
    ]
    lines += [_hex(data) if data is not None else "none" for data in token_bytes]
    merges = _merge_triples(spec)
    lines.append(f"merges {len(merges)}")
    lines += [f"{left} {right} {merged}" for left, right, merged in merges]
    lines.append("end")
    return "\n".join(lines) + "\n"


def write_tokenizer_files(tokenizer, out_dir: Path) -> list[str]:
    """Writes the Hugging Face files and etlora_tokenizer.txt into out_dir (the bundle's tokenizer/).

    Returns the written names relative to the bundle, e.g. "tokenizer/etlora_tokenizer.txt", sorted.
    """
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = tokenizer_text(tokenizer)  # validates before anything is written
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        for name in HF_FILES:
            source = Path(scratch) / name
            if source.is_file():
                (out_dir / name).write_bytes(source.read_bytes())
                written.append(name)
    (out_dir / TOKENIZER_TEXT_FILE).write_text(text, encoding="utf-8", newline="\n")
    written.append(TOKENIZER_TEXT_FILE)
    return sorted(f"{TOKENIZER_DIR}/{name}" for name in written)
