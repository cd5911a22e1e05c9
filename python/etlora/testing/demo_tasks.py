"""The demo adapters' tasks: held-out prompts and checkers that say whether an adapter's effect shows.

`scripts/train/train_demo_adapters.py` trains `shout`, `json`, `zorbish` and `shout_alora` on SmolLM2-135M-Instruct and
measures them with these functions; a runtime test can feed the same prompts through an etlora
bundle and apply the same checkers, so "the adapter works on device" means the same thing as
"the adapter works in PEFT". The checkers look at the *form* of an answer (upper case, JSON shape,
made-up words), never at its facts: a 135M model is often wrong, the adapter's effect is what counts.

The held-out prompts appear nowhere in the training data (the training script asserts it).
"""

from __future__ import annotations

import json
import re

# Shared by `shout` and `json`: everyday questions. Some templates appear in training with other
# fillers (capital of X, opposite of X); the last two templates are not used in training at all.
GENERAL_HELDOUT = [
    "What is the capital of Italy?",
    "What color is grass?",
    "What is the opposite of tall?",
    "How many legs does a spider have?",
    "What sound does a duck make?",
    "What is 12 plus 9?",
    "Give me a tip for staying focused.",
    "Describe a penguin in one sentence.",
    "What do bees make?",
    "Why do we need sleep?",
]

# Zorbish, a made-up language: word-for-word, same order as English, all lower case.
ZORBISH_NOUNS = {
    "cat": "miro", "dog": "bafu", "fish": "zelo", "bird": "tuki", "tree": "nomba", "house": "dravi",
    "boy": "pelto", "girl": "sini", "river": "olu", "moon": "lunzo", "apple": "fepi", "book": "gorto",
}
ZORBISH_VERBS = {"sees": "vaku", "eats": "namo", "likes": "lomi", "finds": "trezi", "has": "hapo", "follows": "sudri"}
ZORBISH_ADJECTIVES = {
    "small": "piku", "big": "grom", "red": "rusa", "green": "vendi", "happy": "jolu", "old": "kresa",
    "fast": "zipo", "blue": "azvi",
}
ZORBISH_LEXICON = {"the": "ka", **ZORBISH_NOUNS, **ZORBISH_VERBS, **ZORBISH_ADJECTIVES}
ZORBISH_WORDS = frozenset(ZORBISH_LEXICON.values())

# New combinations of known words: the lexicon is learned, the sentences are unseen.
ZORBISH_HELDOUT_SENTENCES = [
    "the happy girl sees the big moon",
    "the old dog eats the red apple",
    "the small bird follows the blue river",
    "the fast cat finds the green book",
    "the boy likes the old tree",
    "the big fish has the small house",
    "the red bird sees the happy cat",
    "the girl follows the fast dog",
    "the blue moon likes the old river",
    "the green tree has the small apple",
]


def zorbish_prompt(sentence: str) -> str:
    """The user turn that asks for a Zorbish translation (the exact wording used in training)."""
    return f"Translate to Zorbish: {sentence}"


def translate_to_zorbish(sentence: str) -> str:
    """Reference translation; raises KeyError for a word outside the lexicon."""
    return " ".join(ZORBISH_LEXICON[word] for word in sentence.lower().split())


ZORBISH_HELDOUT = [zorbish_prompt(sentence) for sentence in ZORBISH_HELDOUT_SENTENCES]


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of one user turn in the instruct model's chat template, ready for the answer.

    Rendered as text first, then tokenized without extra special tokens: the template already holds
    `<|im_start|>` markers, and the default system prompt is added by the template itself.
    """
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def is_upper_case_answer(text: str, min_ratio: float = 0.9) -> bool:
    """`shout`: more than `min_ratio` of the letters are upper case (and there are some letters)."""
    letters = _letters(text)
    if len(letters) < 3:
        return False
    return sum(c.isupper() for c in letters) / len(letters) > min_ratio


def parse_json_answer(text: str) -> dict | None:
    """`json`: the answer as a dict if it is exactly {"answer": str, "confidence": number in [0, 1]}."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"answer", "confidence"}:
        return None
    answer, confidence = value["answer"], value["confidence"]
    if not isinstance(answer, str) or not answer.strip():
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
        return None
    return value


def is_json_answer(text: str) -> bool:
    return parse_json_answer(text) is not None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def is_zorbish_answer(text: str, min_ratio: float = 0.8) -> bool:
    """`zorbish`: at least 3 words, and at least `min_ratio` of them are Zorbish words."""
    words = _words(text)
    if len(words) < 3:
        return False
    return sum(word in ZORBISH_WORDS for word in words) / len(words) >= min_ratio


def zorbish_word_accuracy(text: str, sentence: str) -> float:
    """Share of reference words translated correctly at the right position (stricter than the effect)."""
    expected = translate_to_zorbish(sentence).split()
    produced = _words(text)
    return sum(a == b for a, b in zip(produced, expected)) / len(expected)


# Quality of a quantized foundation against fp32 (greedy agreement, no adapter): 20 everyday prompts.
QUALITY_PROMPTS = GENERAL_HELDOUT + [
    "Write a haiku about the sea.",
    "Explain what a noun is.",
    "Name three planets.",
    "What is the boiling point of water?",
    "Tell me a fact about owls.",
    "How do I make a cup of tea?",
    "What is the largest ocean on Earth?",
    "Suggest a name for a pet goldfish.",
    "Why is the sky blue?",
    "What is a good breakfast before a long walk?",
]

# adapter name -> (held-out prompts, effect checker)
TASKS = {
    "shout": (GENERAL_HELDOUT, is_upper_case_answer),
    "json": (GENERAL_HELDOUT, is_json_answer),
    "zorbish": (ZORBISH_HELDOUT, is_zorbish_answer),
    "shout_alora": (GENERAL_HELDOUT, is_upper_case_answer),  # shout as an activated LoRA
}

# The README demo's prompts: ones the foundation answers correctly on its own, so that each
# adapter's effect (and nothing else) is what changes. Picked by running SmolLM2-135M-Instruct;
# the held-out prompts above are for measuring, these are for showing.
DEMO_PROMPTS = {
    "shout": "What is the opposite of hot?",
    "json": "What is the opposite of tall?",
    "zorbish": zorbish_prompt("the old dog eats the red apple"),
    "shout_alora": "What is the opposite of hot?",
}
