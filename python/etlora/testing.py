"""Generated fixtures: tiny random Llama checkpoints and PEFT adapters, made on the spot.

Used by the tests and the tiny demo so that nothing is downloaded. Adapters get random non-zero A
and B (PEFT's default init leaves B at zero, which would hide any bug in the adapter path).
"""

from __future__ import annotations

from pathlib import Path

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


def make_lora_adapter(
    model_dir: str | Path,
    out_dir: str | Path,
    rank: int,
    target_modules: list[str],
    alpha: float | None = None,
    seed: int = 1,
    **lora_overrides,
) -> Path:
    """A PEFT LoRA adapter with random non-zero weights, saved with PEFT's own writer."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    foundation = LlamaForCausalLM.from_pretrained(model_dir)
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
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if strength != 1.0:
            for module in model.modules():
                if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                    module.scaling = {k: v * strength for k, v in module.scaling.items()}
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0, -1].numpy()


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
