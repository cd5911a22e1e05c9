"""Loading the foundation: a Hugging Face Llama checkpoint directory or a GGUF file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from etlora.format.errors import EtloraError

from .model import LlamaShape

SUPPORTED_MODEL_TYPES = ("llama",)
# RoPE variants whose frequencies change with the sequence length cannot be baked into a table.
DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")


@dataclass(frozen=True)
class Foundation:
    """A foundation model in float32, ready to be built into a program."""

    source: str
    hf_config: object  # transformers.LlamaConfig
    shape: LlamaShape
    state_dict: dict[str, torch.Tensor]
    inv_freq: torch.Tensor
    rope_attention_scaling: float
    fingerprint: str
    tokenizer: object | None = None  # transformers PreTrainedTokenizerFast, when the checkpoint has one


def fingerprint_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a foundation, as specified in docs/bundle-format.md."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().contiguous().cpu()
        shape = ",".join(str(size) for size in tensor.shape)
        dtype = str(tensor.dtype).removeprefix("torch.")
        digest.update(f"{name}\0{dtype}\0{shape}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _check_llama(config, source: Path) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EtloraError(
            f"{source}: expected a Llama-family model (model_type 'llama'), received "
            f"model_type {model_type!r} (hint: etlora exports Llama-architecture checkpoints)"
        )
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type in DYNAMIC_ROPE_TYPES:
        raise EtloraError(f"{source}: RoPE type {rope_type!r} is not supported (static RoPE only)")


def _load_hf_directory(directory: Path):
    from transformers import AutoConfig

    if not (directory / "config.json").is_file():
        raise EtloraError(
            f"{directory}: expected a Hugging Face checkpoint (config.json + *.safetensors), "
            "config.json is missing (hint: pass a .gguf file with --model FILE.gguf)"
        )
    try:
        config = AutoConfig.from_pretrained(directory)
    except (ValueError, OSError, KeyError) as error:
        raise EtloraError(f"{directory / 'config.json'}: not a readable model config ({error})") from None
    _check_llama(config, directory)  # before reading gigabytes of weights
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise EtloraError(f"{directory}: expected model weights in *.safetensors, found none")
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            state_dict.update(load_file(shard))
        except (SafetensorError, OSError) as error:
            raise EtloraError(f"{shard}: not a readable safetensors file ({error})") from None
    return config, state_dict


def _load_tokenizer(source: Path):
    """The checkpoint's tokenizer, or None for a checkpoint that ships none (e.g. test models)."""
    from transformers import AutoTokenizer

    if source.is_file():
        return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if (source / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(source)
    return None


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except Exception as error:  # transformers raises many types for a bad GGUF
        raise EtloraError(f"{path}: could not read GGUF model ({error})") from None
    return hf_model.config, hf_model.state_dict()


def load_foundation(path: str | Path) -> Foundation:
    """Read a checkpoint, check it is a Llama we can export, and fingerprint its weights."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    source = Path(path)
    if not source.exists():
        raise EtloraError(f"{source}: model not found (expected a checkpoint directory or .gguf file)")
    if source.is_file():
        config, state_dict = _load_gguf(source)
        _check_llama(config, source)
    else:
        config, state_dict = _load_hf_directory(source)
    shape = LlamaShape.from_hf_config(config)
    if shape.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    state_dict = {
        name: tensor.to(torch.float32).contiguous()
        for name, tensor in state_dict.items()
        if not name.endswith("rotary_emb.inv_freq")
    }
    rotary = LlamaRotaryEmbedding(config)
    return Foundation(
        source=str(source),
        hf_config=config,
        shape=shape,
        state_dict=state_dict,
        inv_freq=rotary.inv_freq.detach().clone(),
        rope_attention_scaling=float(rotary.attention_scaling),
        fingerprint=fingerprint_state_dict(state_dict),
        tokenizer=_load_tokenizer(source),
    )


def config_summary(foundation: Foundation) -> dict:
    """The architecture fields recorded in the manifest."""
    return json.loads(json.dumps(foundation.shape.__dict__))
