"""Tiny GGUF files of known weights, written the way llama.cpp's converter (convert_hf_to_gguf.py)
writes a checkpoint, so that etlora's `--model FILE.gguf` path can be tested per family without a
download.

`write_gguf` takes a checkpoint made by fixtures.make_tiny_model (plus a tokenizer) and writes every
tensor as F32 under gguf's own tables (architecture, metadata keys, tensor names), with the layout
changes llama.cpp makes: Llama's q/k rows permuted for its rotary layout, Gemma's norms stored as
`1 + w`, Phi-3's fused projections kept fused. It writes the metadata llama.cpp writes, including
what transformers' GGUF loader does not read (RoPE scaling, Llama 3's rope_freqs tensor, LongRoPE
factors, the rotary width, Gemma 3's local RoPE base), so that etlora's refusal of such a file can be
tested as well as a file that goes through.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .fixtures import make_tiny_model, make_tiny_tokenizer

# Hugging Face model_type -> llama.cpp's architecture for it.
GGUF_ARCHITECTURE_NAMES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma3_text": "gemma3",
    "smollm3": "smollm3",
}

# Each family of FAMILY_CONFIGS changed only where transformers' GGUF loader (5.25) cannot read the
# feature back, so that the file means the same model to transformers as the checkpoint does:
READABLE_OVERRIDES = {
    # Llama 3's RoPE scaling is a rope_freqs tensor in a GGUF, which the loader skips.
    "llama3": dict(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "qwen2": {},
    # The loader's qwen3 table has no attention.key_length: head_dim is Qwen3Config's default, 128.
    "qwen3": dict(head_dim=128),
    # A Gemma 3 GGUF records neither the layer pattern nor query_pre_attn_scalar: the loader takes
    # Gemma3TextConfig's (five sliding layers then a full one; 256, which equals head_dim in every
    # Gemma 3 with head_dim 256); rope.scaling.* is not read, so no linear scaling.
    "gemma3_text": dict(
        num_hidden_layers=6, head_dim=256, query_pre_attn_scalar=256,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}),
    # rope.dimension_count is not read for phi3: the rotary width is the whole head.
    "phi3": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


def make_tiny_gguf(out_dir: str | Path, family: str, seed: int = 0, **config_overrides) -> tuple[Path, Path]:
    """(checkpoint directory, GGUF file) of one random model of a family (FAMILY_CONFIGS plus the
    overrides), with a byte-level BPE tokenizer whose size is the model's vocabulary, as a GGUF
    written by llama.cpp always carries one."""
    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    tokenizer = make_tiny_tokenizer(model_dir)
    make_tiny_model(model_dir, family, seed=seed, vocab_size=len(tokenizer), **config_overrides)
    return model_dir, write_gguf(model_dir, out_dir / f"{family}.gguf")


def write_gguf(model_dir: str | Path, out_path: str | Path) -> Path:
    """Write the checkpoint in `model_dir` (config.json, model.safetensors, tokenizer.json) as an
    F32 GGUF at `out_path`."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model_dir, out_path = Path(model_dir), Path(out_path)
    config = AutoConfig.from_pretrained(model_dir)
    hparams = json.loads((model_dir / "config.json").read_text())  # what llama.cpp's converter reads
    architecture = _architecture(config.model_type)
    state_dict = load_file(model_dir / "model.safetensors")
    writer = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[architecture])
    _write_parameters(writer, architecture, config, hparams)
    _write_vocabulary(writer, model_dir, config.vocab_size)
    for name, tensor in _gguf_tensors(architecture, config, state_dict):
        writer.add_tensor(name, np.ascontiguousarray(tensor.to(torch.float32).numpy()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _architecture(model_type: str):
    import gguf

    if model_type not in GGUF_ARCHITECTURE_NAMES:
        raise ValueError(f"expected one of the model types {', '.join(GGUF_ARCHITECTURE_NAMES)}, received {model_type!r}")
    name = GGUF_ARCHITECTURE_NAMES[model_type]
    return next(arch for arch, arch_name in gguf.MODEL_ARCH_NAMES.items() if arch_name == name)


def _rope_parameters(config) -> tuple[dict, dict | None]:
    """(the full-attention layers' RoPE parameters, the sliding layers' or None)."""
    parameters = dict(config.rope_parameters or {})
    if "full_attention" in parameters:
        return parameters["full_attention"], parameters.get("sliding_attention")
    return parameters, None


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_parameters(writer, architecture, config, hparams: dict) -> None:
    """The hyperparameters llama.cpp's converter writes for these families."""
    import gguf

    rope, sliding_rope = _rope_parameters(config)
    rope_type = rope.get("rope_type", "default")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope["rope_theta"])
    if architecture is gguf.MODEL_ARCH.PHI3:  # Phi-3's writer: rotary width and original context, no scaling type
        partial = rope.get("partial_rotary_factor", 1.0)
        writer.add_rope_dimension_count(int(partial * config.hidden_size) // config.num_attention_heads)
        original = rope.get("original_max_position_embeddings") or config.original_max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_sliding_window(config.sliding_window or 0)
        if rope_type == "longrope":  # the factors go in as tensors (_gguf_tensors)
            scale = config.max_position_embeddings / original
            writer.add_rope_scaling_attn_factors(
                math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0)
    else:
        if sliding_rope is not None:
            writer.add_rope_freq_base_swa(sliding_rope["rope_theta"])
        if rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
        elif rope_type == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(rope["factor"])
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        elif rope_type not in ("default", "llama3"):  # llama3: the rope_freqs tensor
            raise ValueError(f"rope_type {rope_type!r}: not written by this fixture")
        if "head_dim" in hparams or architecture is gguf.MODEL_ARCH.GEMMA3:
            writer.add_key_length(_head_dim(config))
            writer.add_value_length(_head_dim(config))
    if architecture is gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(_head_dim(config))
    if architecture is gguf.MODEL_ARCH.GEMMA3:
        writer.add_sliding_window(config.sliding_window)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _write_vocabulary(writer, model_dir: Path, vocab_size: int) -> None:
    """A GPT-2 style BPE vocabulary padded to the model's size, its merges and special token ids."""
    import gguf
    from transformers import AutoTokenizer

    if not (model_dir / "tokenizer.json").is_file():
        raise ValueError(f"{model_dir}: expected tokenizer.json (a GGUF carries its tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"{model_dir}: tokenizer ids up to {max(by_id)}, the model's vocabulary is {vocab_size}")
    special = {index for index, added in tokenizer.added_tokens_decoder.items() if added.special}
    tokens, types = [], []
    for index in range(vocab_size):
        tokens.append(by_id.get(index, f"[PAD{index}]"))
        types.append(gguf.TokenType.UNUSED if index not in by_id
                     else gguf.TokenType.CONTROL if index in special else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def _gguf_tensors(architecture, config, state_dict: dict[str, torch.Tensor]):
    """(GGUF name, tensor) for every checkpoint tensor, plus the RoPE factor tensors llama.cpp adds."""
    import gguf

    names = gguf.get_tensor_name_map(architecture, config.num_hidden_layers)
    for name, tensor in state_dict.items():
        base, _, suffix = name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ValueError(f"{name}: gguf's {gguf.MODEL_ARCH_NAMES[architecture]} table has no name for it")
        if architecture is gguf.MODEL_ARCH.LLAMA and base.endswith(("q_proj", "k_proj")):
            heads = config.num_attention_heads if base.endswith("q_proj") else config.num_key_value_heads
            tensor = _rotary_pairs_interleaved(tensor, heads)
        if architecture is gguf.MODEL_ARCH.GEMMA3 and name.endswith("norm.weight"):
            tensor = tensor + 1.0  # Gemma's RMSNorm scales by 1 + w; llama.cpp stores the scale
        yield f"{gguf_name}.{suffix}", tensor
    rope, _ = _rope_parameters(config)
    if rope.get("rope_type") == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_frequency_divisors(config)
    if rope.get("rope_type") == "longrope":
        for key, tensor in ((gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, "long_factor"),
                            (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, "short_factor")):
            yield gguf.TENSOR_NAMES[key] + ".weight", torch.tensor(rope[tensor], dtype=torch.float32)


def _rotary_pairs_interleaved(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's Llama layout of q/k rows: per head, HF's [first halves | second halves] of the
    rotary pairs become interleaved pairs (what transformers' loader undoes)."""
    rows = tensor.shape[0]
    return tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)


def _llama3_frequency_divisors(config) -> torch.Tensor:
    """Llama 3's RoPE scaling as llama.cpp stores it: per frequency, the default frequency over the
    scaled one (transformers' own llama3 computation)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    dim = _head_dim(config)
    default = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return (default / scaled).to(torch.float32)
