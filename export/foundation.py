"""Loading the foundation: a Hugging Face checkpoint directory or a GGUF file of a supported family."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from etlora.format.errors import EtloraError

from .families import DecoderShape, RopeTable, check_config, decoder_shape, rope_tables, text_config, to_program_state_dict
from .gguf_foundation import load_gguf


@dataclass(frozen=True)
class Foundation:
    """A foundation model in float32, ready to be built into a program.

    `state_dict` is under the program's names and conventions (export/families.py); `fingerprint` is
    of the checkpoint's tensors as read, before that conversion."""

    source: str
    hf_config: object  # the decoder's transformers config (a gemma3 checkpoint's text_config)
    shape: DecoderShape
    state_dict: dict[str, torch.Tensor]
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


def _load_hf_directory(directory: Path, max_seq_len: int | None):
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
    check_config(text_config(config), directory, max_seq_len)  # before reading gigabytes of weights
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


def load_foundation(path: str | Path, max_seq_len: int | None = None) -> Foundation:
    """Read a checkpoint, check it is a family we can export, and fingerprint its weights."""
    source = Path(path)
    if not source.exists():
        raise EtloraError(f"{source}: model not found (expected a checkpoint directory or .gguf file)")
    if source.is_file():  # a GGUF: its metadata checked against what transformers reads, then its weights
        config, state_dict = load_gguf(source, max_seq_len)
    else:
        config, state_dict = _load_hf_directory(source, max_seq_len)
    config = text_config(config)
    state_dict = _decoder_tensors(state_dict)
    shape = decoder_shape(config)
    if shape.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    state_dict = {
        name: tensor.to(torch.float32).contiguous()
        for name, tensor in state_dict.items()
        if not name.endswith("rotary_emb.inv_freq")
    }
    return Foundation(
        source=str(source),
        hf_config=config,
        shape=shape,
        state_dict=to_program_state_dict(shape, state_dict),
        fingerprint=fingerprint_state_dict(state_dict),
        tokenizer=_load_tokenizer(source),
    )


def _decoder_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A multimodal Gemma 3 checkpoint's text tower under the decoder's names; other towers dropped."""
    prefix = "model.language_model."
    if not any(name.startswith(prefix) for name in state_dict):
        return state_dict
    return {
        ("model." + name.removeprefix(prefix)) if name.startswith(prefix) else name: tensor
        for name, tensor in state_dict.items()
        if name.startswith(prefix) or name == "lm_head.weight"
    }


def foundation_rope_tables(foundation: Foundation, max_seq_len: int) -> dict[RopeTable, tuple[torch.Tensor, torch.Tensor]]:
    return rope_tables(foundation.hf_config, foundation.shape, max_seq_len)


def config_summary(foundation: Foundation) -> dict:
    """The architecture fields recorded in the manifest."""
    return foundation.shape.summary()
