"""Generated fixtures: tiny random Llama checkpoints and PEFT adapters, made on the spot.

Used by the tests and the tiny demo so that nothing is downloaded. Adapters get random non-zero A
and B (PEFT's default init leaves B at zero, which would hide any bug in the adapter path).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def make_tiny_llama(out_dir: str | Path, seed: int = 0, **config_overrides) -> Path:
    """A random Llama saved as a Hugging Face checkpoint (config.json + model.safetensors)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**config_overrides))
    model.save_pretrained(out_dir)
    return Path(out_dir)


# Tiny configurations of each family with its special features switched on: GQA everywhere, and
# Llama 3's scaled RoPE, Qwen2's q/k/v biases, Qwen3's q/k norms with an explicit head_dim, SmolLM3's
# layers without RoPE, Gemma 3's sliding window of a few tokens, its own local RoPE base, (1 + w)
# norms, scaled embedding, GELU and query_pre_attn_scalar, Phi-3's fused projections and partial
# rotary factor.
_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=False)
FAMILY_CONFIGS = {
    "llama3": ("LlamaConfig", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "qwen2": ("Qwen2Config", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "qwen3": ("Qwen3Config", dict(head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "smollm3": ("SmolLM3Config", dict(pad_token_id=0, no_rope_layers=[1, 0, 1])),
    "gemma3_text": ("Gemma3TextConfig", dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}})),
    "phi3": ("Phi3Config", dict(pad_token_id=0, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
}


def make_tiny_model(out_dir: str | Path, family: str, seed: int = 0, **config_overrides) -> Path:
    """A random model of one family (FAMILY_CONFIGS) saved as a Hugging Face checkpoint. Norm
    weights are randomized too, so that a norm convention wrongly read (Gemma's 1 + w) shows."""
    import transformers
    from transformers import AutoModelForCausalLM

    class_name, fields = FAMILY_CONFIGS[family]
    config = getattr(transformers, class_name)(**{**_COMMON, **fields, **config_overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma stores w of (1 + w), the others the scale
                parameter.copy_((0.0 if family == "gemma3_text" else 1.0) + 0.1 * torch.randn_like(parameter))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(out_dir)
    return Path(out_dir)


def edit_config(adapter: Path, **fields) -> Path:
    """Overwrite fields of a saved PEFT adapter's adapter_config.json (tests of options etlora refuses)."""
    path = Path(adapter) / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))
    return adapter


def make_lora_adapter(
    model_dir: "str | Path | torch.nn.Module",
    out_dir: str | Path,
    rank: int,
    target_modules: list[str],
    alpha: float | None = None,
    seed: int = 1,
    alora_invocation_tokens: list[int] | None = None,
    **lora_overrides,
) -> Path:
    """A PEFT LoRA adapter with random non-zero weights, saved with PEFT's own writer.

    `alora_invocation_tokens` makes an activated LoRA (PEFT applies it from the start of the last
    occurrence of these tokens on); PEFT supports those for CAUSAL_LM only, so task_type defaults to it.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    # A checkpoint directory, or a model already loaded (PEFT then adds the adapter to it in place).
    foundation = model_dir if isinstance(model_dir, torch.nn.Module) else AutoModelForCausalLM.from_pretrained(model_dir)
    if alora_invocation_tokens is not None:
        lora_overrides.setdefault("task_type", "CAUSAL_LM")
        lora_overrides["alora_invocation_tokens"] = list(alora_invocation_tokens)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        target_modules=target_modules,
        init_lora_weights=False,
        **lora_overrides,
    )
    model = get_peft_model(foundation, config)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def peft_logits(model_dir: str | Path, adapter_dir: str | Path | None, token_ids: list[int], strength: float = 1.0):
    """Reference: last-position logits from transformers (+ PEFT), adapter scaled by `strength`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if strength != 1.0:
            for module in model.modules():
                if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                    module.scaling = {k: v * strength for k, v in module.scaling.items()}
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0, -1].numpy()


def alora_start(token_ids: list[int], invocation_tokens: list[int] | tuple[int, ...]) -> int | None:
    """Where an activated LoRA starts applying: the start of the LAST occurrence of the invocation
    sequence in `token_ids` (PEFT's calculate_alora_offsets), None when it does not occur."""
    n, tokens = len(invocation_tokens), list(invocation_tokens)
    starts = [i for i in range(len(token_ids) - n + 1) if list(token_ids[i:i + n]) == tokens]
    return starts[-1] if starts else None


class _OwnAloraOffsets:
    """PEFT hands one alora_offsets to every adapter of a layer; this gives one aLoRA its own."""

    def __init__(self, offsets: list[int | None]):
        self.offsets = offsets

    def forward(self, module, active_adapter, x, result, **kwargs):
        from peft.tuners.lora.variants import ALoraLinearVariant

        kwargs["alora_offsets"] = self.offsets
        return ALoraLinearVariant.forward(module, active_adapter=active_adapter, x=x, result=result, **kwargs)


def peft_reference_logits(
    model_dir: str | Path,
    adapters: "str | Path | Mapping[str | Path, float] | None",
    token_ids: list[int],
    check_alora: bool = True,
) -> np.ndarray:
    """Reference logits at every position, [len(token_ids), vocab]: transformers plus PEFT with the
    given adapters active at once (one directory at strength 1, or {directory: strength}).

    Activated LoRA (alora_invocation_tokens) is gated as PEFT's forward gates it: each aLoRA gets
    `alora_offsets` from PEFT's own calculate_alora_offsets for its invocation sequence (its own
    sequence even with several aLoRAs active, which PEFT's single alora_offsets cannot express), so it
    applies from the start of the last occurrence of that sequence on, and nowhere without one.
    With `check_alora` and only aLoRA adapters active, the reference is checked to be gated at all
    (PEFT silently turns an aLoRA off when it gets no offsets): equal to the foundation before the
    earliest invocation start (everywhere if none occurs), different at the last position if one occurs.
    """
    from peft import PeftModel
    from peft.tuners.lora.variants import calculate_alora_offsets
    from transformers import AutoModelForCausalLM

    if adapters is None:
        adapters = {}
    elif not isinstance(adapters, Mapping):
        adapters = {adapters: 1.0}
    input_ids = torch.tensor([list(token_ids)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    if not adapters:
        with torch.no_grad():
            return model(input_ids).logits[0].numpy()
    names = [f"adapter{index}" for index in range(len(adapters))]
    directories = [str(directory) for directory in adapters]
    model = PeftModel.from_pretrained(model, directories[0], adapter_name=names[0])
    for name, directory in zip(names[1:], directories[1:]):
        model.load_adapter(directory, adapter_name=name)
    model.base_model.set_adapter(names)  # every adapter adds its update
    strengths = dict(zip(names, adapters.values()))
    for module in model.modules():
        if isinstance(getattr(module, "scaling", None), dict):
            module.scaling = {name: value * strengths[name] for name, value in module.scaling.items()}
    invocations = {name: model.peft_config[name].alora_invocation_tokens for name in names
                   if model.peft_config[name].alora_invocation_tokens}
    offsets = {name: calculate_alora_offsets(model.peft_config, name, input_ids) for name in invocations}
    for module in model.modules():
        variants = getattr(module, "lora_variant", None)
        if isinstance(variants, dict):
            for name in offsets:
                if name in variants:
                    variants[name] = _OwnAloraOffsets(offsets[name])
    model.eval()
    forward = {"alora_offsets": next(iter(offsets.values()))} if offsets else {}
    with torch.no_grad():
        logits = model(input_ids, **forward).logits[0].numpy()
        if not (check_alora and invocations and len(invocations) == len(names)):
            return logits
        with model.disable_adapter():
            foundation = model(input_ids).logits[0].numpy()
    starts = [alora_start(token_ids, invocations[name]) for name in names if strengths[name] != 0]
    found = [start for start in starts if start is not None]
    earliest = min(found, default=len(token_ids))
    before = float(np.max(np.abs(logits[:earliest] - foundation[:earliest]), initial=0.0))
    assert before <= 1e-6, f"aLoRA reference differs from the foundation by {before:.3g} before position {earliest}"
    if found:
        last = float(np.max(np.abs(logits[-1] - foundation[-1])))
        assert last > 1e-3, f"aLoRA reference equals the foundation at the last position ({last:.3g}): not applied"
    return logits


def peft_alora_logits(
    model_dir: str | Path,
    adapters: "str | Path | Mapping[str | Path, float] | None",
    token_ids: list[int],
) -> np.ndarray:
    """Last-position logits of peft_reference_logits (aLoRA gated and checked), as Session.logits."""
    return peft_reference_logits(model_dir, adapters, token_ids)[-1]


TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TINY_TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's 12:45 and they've got 3 apples!",
    "Hello, world! How are you doing today? I'm fine, we'll see; you'd think so.",
    "def main():\n    return x + 1  # comment\n\n\tTabs and  double  spaces.",
    "Numbers 0123456789 and symbols @#$%^&*()[]{}<>/\\|~`'\" ok",
    "Café crème, naïve résumé, 日本語のテキスト, emojis 🙂 too.",
]


def make_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens and chat template.

    Saved with save_pretrained into out_dir and returned (a PreTrainedTokenizerFast). No downloads.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(TINY_TOKENIZER_TEXT * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
        chat_template=TINY_CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def make_fake_qnn_sdk(root: str | Path, version: str | None = "2.37.0.250724",
                      libraries: tuple[str, ...] | None = None) -> dict[str, str]:
    """A QNN SDK layout with empty libraries: it passes etlora's file check (export/qnn_sdk.py) but
    no library loads, so ExecuTorch's QNN compiler fails at its start. Returns the environment
    (QNN_SDK_ROOT, LD_LIBRARY_PATH) that points at it. `version` None: no sdk.yaml."""
    from etlora.export.qnn_sdk import HOST_LIBRARIES, HOST_LIBRARY_DIR, ROOT_VARIABLE, VERSION_FILE

    root = Path(root)
    library_dir = root / HOST_LIBRARY_DIR
    library_dir.mkdir(parents=True, exist_ok=True)
    for name in HOST_LIBRARIES if libraries is None else libraries:
        (library_dir / name).write_bytes(b"")
    if version is not None:
        (root / VERSION_FILE).write_text(f"name: qairt\nversion: {version}\n")
    return {ROOT_VARIABLE: str(root), "LD_LIBRARY_PATH": str(library_dir)}
