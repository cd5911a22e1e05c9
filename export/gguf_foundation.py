"""A foundation from a GGUF file: read by transformers' GGUF loader, refused where that loader would
build a different model than the file describes.

transformers turns a GGUF's metadata into a config through a table of keys per architecture, and
loads the tensors its model has a name for; a key or a tensor outside its tables is dropped without
a word. For the families etlora exports, transformers 5.25 drops RoPE scaling (rope.scaling.*,
Llama 3's rope_freqs tensor, Phi-3's LongRoPE factor tensors), Phi-3's rotary width
(rope.dimension_count), Qwen3's head size (attention.key_length), Gemma 3's local RoPE base
(rope.freq_base_swa), Phi-3's sliding window, and tensors its config class does not expect (a
Llama's biases); a Gemma 3 GGUF does not record query_pre_attn_scalar at all. So before any weight
is read, the file's own metadata is compared with the config transformers built, as etlora reads it
(DecoderShape, RoPE parameters), and the file's tensors with the model's parameters, one for one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from etlora.format.errors import EtloraError

from .families import (
    DecoderShape,
    Family,
    RopeTable,
    _rope_parameters,
    check_config,
    decoder_shape,
    text_config,
)

HINT = "hint: export the Hugging Face checkpoint directory instead, --model DIR"
# llama.cpp's architecture name of a family, where it differs from the model_type.
_ARCHITECTURE_NAMES = {Family.GEMMA3: "gemma3"}
# GGUF rope.scaling.type -> Hugging Face rope_type
_ROPE_SCALING_TYPES = {"none": "default", "linear": "linear", "yarn": "yarn", "longrope": "longrope"}
_SLIDING, _FULL = "sliding_attention", "full_attention"


def readable_architectures() -> tuple[str, ...]:
    """The GGUF architectures of etlora's families that transformers' GGUF loader reads."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = (_ARCHITECTURE_NAMES.get(family, family.value) for family in Family)
    return tuple(name for name in names if name in GGUF_SUPPORTED_ARCHITECTURES)


def load_gguf(path: Path, max_seq_len: int | None = None):
    """(transformers config, float32 state dict) of a GGUF file, once every check above passed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    metadata, tensor_names = _read_header(path)
    architecture = metadata.get("general.architecture")
    readable = readable_architectures()
    if architecture not in readable:
        raise EtloraError(
            f"{path}: expected a GGUF of architecture {', '.join(readable)} (the families etlora exports "
            f"that transformers' GGUF loader reads), received {architecture!r} ({HINT})"
        )
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:  # transformers raises many types for a bad GGUF
        raise EtloraError(f"{path}: could not read the GGUF's model config ({error})") from None
    decoder = text_config(config)
    check_config(decoder, path, max_seq_len)
    shape = decoder_shape(decoder)
    _check_metadata(path, architecture, metadata, decoder, shape, max_seq_len)
    _check_tensors(path, architecture, tensor_names, config)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                     dtype=torch.float32)
    except Exception as error:
        raise EtloraError(f"{path}: could not read GGUF model ({error})") from None
    return model.config, model.state_dict()


def _read_header(path: Path) -> tuple[dict, tuple[str, ...]]:
    """The file's metadata (key -> value; a vocabulary or merge list as its length) and tensor names,
    by the reader transformers' own config loading starts with: nothing else is read, so a file
    refused here costs no time."""
    from transformers.integrations.gguf import read_gguf_metadata

    try:
        return read_gguf_metadata(str(path))
    except Exception as error:  # ValueError for what it checks, struct and numpy errors past the end
        raise EtloraError(f"{path}: expected a GGUF file, could not read its header ({error})") from None


def _stated_facts(config, shape: DecoderShape) -> dict[str, tuple[str, object]]:
    """metadata key (after '{architecture}.') -> (what it is, its value in the model transformers
    builds, as etlora reads that model)."""
    rotary_dims = sorted({layer.rotary_dim for layer in shape.layers if layer.rotary_dim})
    windows = sorted({layer.sliding_window for layer in shape.layers if layer.sliding_window})
    full = _rope_parameters(config, _FULL)
    facts = {
        "attention.key_length": ("head_dim", shape.head_dim),
        "attention.value_length": ("head_dim", shape.head_dim),
        "rope.dimension_count": ("rotary dims", rotary_dims[0] if len(rotary_dims) == 1 else rotary_dims),
        "rope.freq_base": ("rope_theta", full.get("rope_theta")),
        "rope.scaling.type": ("rope_type", full.get("rope_type", "default")),
        "attention.sliding_window": ("sliding_window", windows[0] if len(windows) == 1 else windows or 0),
    }
    if RopeTable.LOCAL in shape.rope_tables:
        facts["rope.freq_base_swa"] = ("the sliding layers' rope_theta", _rope_parameters(config, _SLIDING).get("rope_theta"))
    if full.get("rope_type", "default") not in ("default", "llama3"):
        facts["rope.scaling.factor"] = ("RoPE scaling factor", full.get("factor"))
    return facts


def _same(stated, built) -> bool:
    if isinstance(stated, float) or isinstance(built, float):
        return built is not None and np.float32(stated) == np.float32(built)
    return stated == built


def _check_metadata(path: Path, architecture: str, metadata: dict, config, shape: DecoderShape,
                    max_seq_len: int | None) -> None:
    for key, (what, built) in _stated_facts(config, shape).items():
        stated = metadata.get(f"{architecture}.{key}")
        if stated is None:
            continue
        if key == "rope.scaling.type":
            stated = _ROPE_SCALING_TYPES.get(stated, stated)
        if key == "attention.sliding_window":
            if stated == 0 or _same(stated, built):
                continue
            if built == 0 and max_seq_len is not None and max_seq_len <= stated:
                continue  # a window no sequence of the program reaches: full attention is the same
        elif _same(stated, built):
            continue
        raise EtloraError(
            f"{path}: expected {what} {built!r} (the model transformers' GGUF loader builds from this "
            f"file), received {architecture}.{key} = {stated!r} in the file: the loader does not carry it "
            f"over, so the model would not be the file's ({HINT})"
        )
    if shape.family is Family.GEMMA3 and config.query_pre_attn_scalar != shape.head_dim:
        raise EtloraError(
            f"{path}: expected a Gemma 3 GGUF with head_dim {config.query_pre_attn_scalar}, received "
            f"{architecture}.attention.key_length = {shape.head_dim}: a GGUF does not record "
            f"query_pre_attn_scalar, and transformers' loader takes {config.query_pre_attn_scalar}, which "
            f"is right for the Gemma 3 checkpoints whose head_dim it equals ({HINT})"
        )


def _check_tensors(path: Path, architecture: str, tensor_names: tuple[str, ...], config) -> None:
    """Every tensor of the file becomes a parameter of the model transformers builds, and every
    parameter comes from the file (a tied lm_head from the embedding), by gguf's table of tensor
    names, which transformers' loader maps through."""
    from gguf import MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES, get_tensor_name_map
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # names only, no memory
        model = AutoModelForCausalLM.from_config(config)
    arch = next(arch for arch, name in MODEL_ARCH_NAMES.items() if name == architecture)
    table = get_tensor_name_map(arch, text_config(config).num_hidden_layers)
    file_name = {}  # parameter -> its tensor's name in a GGUF
    for name in model.state_dict():
        module, _, kind = name.rpartition(".")
        if (gguf_module := table.get_name(module)) is not None:
            file_name[name] = f"{gguf_module}.{kind}"
    taken = set(file_name.values())
    skipped = [name for name in tensor_names if name not in taken]
    if skipped:
        meaning = {f"{TENSOR_NAMES[tensor]}.weight": what for tensor, what in (
            (MODEL_TENSOR.ROPE_FREQS, "Llama 3 RoPE scaling"),
            (MODEL_TENSOR.ROPE_FACTORS_LONG, "LongRoPE long factors"),
            (MODEL_TENSOR.ROPE_FACTORS_SHORT, "LongRoPE short factors"))}
        listed = ", ".join(f"{name} ({meaning[name]})" if name in meaning else name for name in skipped[:8])
        raise EtloraError(
            f"{path}: expected every tensor of the file to be read, received {len(skipped)} that "
            f"transformers' GGUF loader skips for {architecture}: {listed}; the model would not be the "
            f"file's ({HINT})"
        )
    in_file = set(tensor_names)
    tied = {"lm_head.weight"} if getattr(text_config(config), "tie_word_embeddings", False) else set()
    missing = [name for name in model.state_dict() if file_name.get(name) not in in_file and name not in tied]
    if missing:
        raise EtloraError(
            f"{path}: expected a tensor for every parameter of the model transformers' GGUF loader "
            f"builds, received none for {len(missing)}: {', '.join(missing[:8])} ({HINT})"
        )
