"""Tokenizers of each kind the C++ runtime reads, trained on the spot with the `tokenizers` library,
and generated test strings: the differential tests (tests/test_tokenizer.py) hold the runtime's ids
and text to the library's on them. No downloads.

Kinds follow real families' tokenizer.json: GPT-2 (ByteLevel with its own regex), Llama 3 (Split
regex + ByteLevel, ignore_merges), Qwen2 (NFC + Split regex), o200k (Phi-4), SentencePiece-style
BPE with byte fallback (Llama 2: Prepend + Replace; Gemma: Replace only), Metaspace, Digits and
Split behaviors, and added tokens with lstrip/rstrip/single_word/normalized.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from enum import Enum

GPT2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])


class TokenizerKind(Enum):
    GPT2 = "gpt2"
    LLAMA3 = "llama3"
    QWEN2 = "qwen2"
    O200K = "o200k"
    LLAMA2_BYTE_FALLBACK = "llama2_byte_fallback"
    GEMMA_BYTE_FALLBACK = "gemma_byte_fallback"
    METASPACE = "metaspace"
    DIGITS_AND_SPLITS = "digits_and_splits"
    ADDED_TOKENS = "added_tokens"


# Pieces the generator draws from: every script, whitespace and symbol class the pre-tokenizers
# and normalizers treat differently.
_WORDS = ["the", "The", "quick", "BROWN", "fox", "it's", "They'VE", "we'll", "I'm", "don't", "you'd", "hello",
          "world", "naïve", "café", "Straße", "ÆØÅ", "ﬁne", "Ⅻ", "①②", "x²", "ＡＢＣ", "ｶﾀｶﾅ"]
_SCRIPTS = ["日本語のテキスト", "中文字符", "한국어", "\u1100\u1161\u11a8", "Ελληνικά ΣΊΣΥΦΟΣ", "русский", "עברית",
            "عربي", "١٢٣٤", "हिन्दी", "०१२", "ไทย", "ᚠᚢᚦ", "𝔘𝔫𝔦", "İstanbul", "e\u0301", "a\u0308\u0304",
            "\u200b", "\u200d", "\ufeff", "\u00ad"]
_EMOJI = ["🙂", "👍🏽", "👨\u200d👩\u200d👧", "🇩🇪", "❤️", "🤖", "✅"]
_SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\u0085",
           "\u2028", "\x0b", "\x0c"]
_CODE = ["def f(x):\n    return x**2", "if (a && b) { c++; }", "x = [1, 2, 3]", "#include <stdio.h>",
         "// comment", "a->b", "'''doc'''", "$HOME/bin", "<div class=\"x\">", "0x1F", "3.14159", "-42", "1e10",
         "1,000,000", "12:45", "https://a.b/c?d=e&f=g"]
_PUNCT = ["!", "?", "...", "—", "–", "“", "”", "«", "»", "(", ")", "[", "]", "{", "}", "'", "\"", "'s", "'T", "@",
          "#", "%", "&", "*", "/", "\\", "|", "~", "`", "^", "€", "£", "¥", "§", "°", "·", "…", "▁", "Ġ"]


def _digits(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9)))


def sample_texts(count: int, seed: int, inserts: tuple[str, ...] = ()) -> list[str]:
    """`count` strings mixing the pieces above (and `inserts`, e.g. added tokens, inside text)."""
    rng = random.Random(seed)
    pools = [_WORDS, _SCRIPTS, _EMOJI, _SPACES, _CODE, _PUNCT]
    texts = ["", " ", "  ", "\n", "a", "1", "🙂", "\u0085", " hello", "hello ", "  x  ", "\t\tcode"]
    while len(texts) < count:
        parts = []
        for _ in range(rng.randint(1, 12)):
            roll = rng.random()
            if inserts and roll < 0.08:
                parts.append(rng.choice(inserts))
            elif roll < 0.18:
                parts.append(_digits(rng))
            else:
                parts.append(rng.choice(rng.choice(pools)))
            if rng.random() < 0.5:
                parts.append(rng.choice([" ", " ", " ", "", "\n", "  "]))
        texts.append("".join(parts))
    return texts[:count]


def _corpus() -> list[str]:
    return sample_texts(600, seed=7) * 2


def _train_bpe(pre_tokenizer, normalizer=None, vocab_size: int = 900, alphabet=(), specials=GPT2_SPECIALS):
    """(vocab, merges) of a BPE trained on the corpus with this normalizer and pre-tokenizer."""
    from tokenizers import Tokenizer, models, trainers

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=list(alphabet),
                                  show_progress=False)
    backend.train_from_iterator(_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _byte_level(pre_tokenizer, normalizer=None, ignore_merges=False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab, merges = _train_bpe(pre_tokenizer, normalizer, alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(list(GPT2_SPECIALS))
    return tokenizer


def _sentencepiece_style(normalizer, pre_tokenizer, decoder, bos: bool):
    """BPE over '▁'-marked text with <0xNN> byte tokens in the vocab (byte_fallback), like Llama 2 and Gemma."""
    from tokenizers import Tokenizer, models, processors

    specials = ("<unk>", "<s>", "</s>")
    vocab, merges = _train_bpe(pre_tokenizer, normalizer, specials=specials)
    base = dict(vocab)
    for byte in range(256):  # the byte tokens go right after the specials, as in Llama 2's vocab
        base.setdefault(f"<0x{byte:02X}>", len(base))
    tokenizer = Tokenizer(models.BPE(base, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    tokenizer.add_special_tokens(list(specials))
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                                 special_tokens=[("<s>", base["<s>"])])
    return tokenizer


def build_tokenizer(kind: TokenizerKind):
    """A `tokenizers.Tokenizer` of this kind."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors

    if kind is TokenizerKind.GPT2:
        return _byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False))
    if kind in (TokenizerKind.LLAMA3, TokenizerKind.QWEN2, TokenizerKind.O200K):
        pattern = {TokenizerKind.LLAMA3: LLAMA3_PATTERN, TokenizerKind.QWEN2: QWEN2_PATTERN,
                   TokenizerKind.O200K: O200K_PATTERN}[kind]
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tokenizer = _byte_level(pre, normalizers.NFC() if kind is TokenizerKind.QWEN2 else None,
                                ignore_merges=kind is TokenizerKind.LLAMA3)
        if kind is TokenizerKind.LLAMA3:  # bos through TemplateProcessing, as Llama 3's file has it
            tokenizer.post_processor = processors.Sequence([
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single="<|im_start|> $A", pair="<|im_start|> $A $B",
                                              special_tokens=[("<|im_start|>", tokenizer.token_to_id("<|im_start|>"))]),
            ])
        return tokenizer
    if kind is TokenizerKind.LLAMA2_BYTE_FALLBACK:
        return _sentencepiece_style(
            normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]), None,
            decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                               decoders.Strip(" ", 1, 0)]), bos=True)
    if kind is TokenizerKind.GEMMA_BYTE_FALLBACK:
        return _sentencepiece_style(
            normalizers.Replace(" ", "▁"), None,
            decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]), bos=True)
    if kind is TokenizerKind.METASPACE:
        return _sentencepiece_style(
            normalizers.NFKC(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]),
            bos=False)
    if kind is TokenizerKind.DIGITS_AND_SPLITS:
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s*\n"), behavior="merged_with_previous"),
            pre_tokenizers.Split("-", behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(r"[.,;:]"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\p{P}"), behavior="contiguous"),
            pre_tokenizers.Split(Regex(r"[^\p{Han}]+"), behavior="isolated", invert=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
        ])
        return _byte_level(pre, normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()]))
    if kind is TokenizerKind.ADDED_TOKENS:
        tokenizer = _byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False),
                                normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\t"), "    ")]))
        tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True),
                                      AddedToken("<sep>", lstrip=False, rstrip=True, special=True),
                                      AddedToken("<|tool|>", lstrip=True, rstrip=True, special=True, normalized=False)])
        tokenizer.add_tokens([AddedToken("hello world", normalized=True), AddedToken("ＡＢ", normalized=True),
                              AddedToken("cat", single_word=True), AddedToken("[[x]]", normalized=False),
                              AddedToken("\t-\t", normalized=False, lstrip=True)])
        return tokenizer
    raise ValueError(f"unknown tokenizer kind {kind}")


def added_contents(tokenizer) -> tuple[str, ...]:
    """The added tokens' contents (to put inside generated text)."""
    return tuple(token.content for token in tokenizer.get_added_tokens_decoder().values())
