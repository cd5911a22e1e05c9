"""The model families etlora exports, and what each one's Hugging Face config means for the program.

One place reads a config: it yields a `DecoderShape` (every number and feature the exported model
needs, per layer where layers differ) and the rotary tables, computed by transformers' own rotary
module for the family so that llama3, linear, yarn and LongRoPE scaling come out as transformers
computes them. Checkpoint tensors that a family stores differently from the program (Gemma's
`1 + w` norms, Phi-3's fused projections) are converted in `to_program_state_dict`, after the
foundation fingerprint is taken from the checkpoint as it is.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from enum import Enum

import torch

from etlora.format.errors import EtloraError


# Hugging Face's short names for the linear layers of a block, in a fixed order: the program's sites.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES
# Phi-3's fused modules, as its checkpoint and PEFT name them, and the program modules their output
# rows feed, in row order. The program holds them split (to_program_state_dict, load_adapter).
FUSED_MODULES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


class Family(Enum):
    LLAMA = "llama"
    QWEN2 = "qwen2"
    QWEN3 = "qwen3"
    GEMMA3 = "gemma3_text"
    PHI3 = "phi3"
    SMOLLM3 = "smollm3"


class Activation(Enum):
    SILU = "silu"
    GELU_TANH = "gelu_pytorch_tanh"


class RopeTable(Enum):
    """Which rotary table a layer reads: Gemma 3's sliding layers have their own base."""

    GLOBAL = "global"
    LOCAL = "local"


# model_type -> (modeling module, rotary class). The rotary class computes the tables.
_MODELING = {
    Family.LLAMA: ("llama", "LlamaRotaryEmbedding"),
    Family.QWEN2: ("qwen2", "Qwen2RotaryEmbedding"),
    Family.QWEN3: ("qwen3", "Qwen3RotaryEmbedding"),
    Family.GEMMA3: ("gemma3", "Gemma3RotaryEmbedding"),
    Family.PHI3: ("phi3", "Phi3RotaryEmbedding"),
    Family.SMOLLM3: ("smollm3", "SmolLM3RotaryEmbedding"),
}
SUPPORTED_MODEL_TYPES = tuple(family.value for family in Family) + ("gemma3",)
# RoPE variants whose frequencies change with the sequence length cannot be baked into a table.
DYNAMIC_ROPE_TYPES = ("dynamic",)
_ACTIVATIONS = tuple(activation.value for activation in Activation)
_SLIDING = "sliding_attention"


@dataclass(frozen=True)
class LayerAttention:
    """How one layer attends: rotary dims (0: no RoPE), window (0: full) and its rotary table."""

    rotary_dim: int
    sliding_window: int
    rope_table: RopeTable


@dataclass(frozen=True)
class DecoderShape:
    """The architecture etlora builds a program for, read from a Hugging Face config."""

    family: Family
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    activation: Activation
    embedding_scale: float  # the embedding's output is multiplied by it (Gemma: sqrt(hidden))
    sandwich_norms: bool  # Gemma: a norm after attention and around the MLP
    attention_scale: float  # of q k^T
    layers: tuple[LayerAttention, ...]

    def linear_dims(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of one linear layer of a block, under the program's names."""
        h, q, kv, i = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }[module]

    @property
    def peft_modules(self) -> tuple[str, ...]:
        """The linear modules of a block as the checkpoint (and so PEFT) names them."""
        if self.family is Family.PHI3:
            return ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
        return LINEAR_MODULES

    def peft_linear_dims(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of a checkpoint module, fused ones included."""
        if module in FUSED_MODULES:
            parts = [self.linear_dims(part) for part in FUSED_MODULES[module]]
            return parts[0][0], sum(out for _, out in parts)
        return self.linear_dims(module)

    @property
    def rope_tables(self) -> tuple[RopeTable, ...]:
        """The tables some layer reads, in a fixed order."""
        return tuple(self.rope_table_dims)

    @property
    def rope_table_dims(self) -> dict[RopeTable, int]:
        """{table some layer reads: its width (the rotary dims of the layers reading it)}."""
        dims = {layer.rope_table: layer.rotary_dim for layer in self.layers if layer.rotary_dim}
        return {table: dims[table] for table in RopeTable if table in dims}

    @staticmethod
    def from_hf_config(config) -> "DecoderShape":
        return decoder_shape(config)

    @staticmethod
    def from_summary(fields: dict) -> "DecoderShape":
        """The manifest's config record back into a shape. A record written before bundle format 6
        is a Llama's: `attention_bias` for all four projections, full RoPE, no window."""
        fields = dict(fields)
        if "family" not in fields:
            bias = bool(fields.pop("attention_bias", False))
            head_dim = fields["head_dim"]
            fields.update(
                family=Family.LLAMA.value, qkv_bias=bias, o_bias=bias, qk_norm=False,
                activation=Activation.SILU.value, embedding_scale=1.0, sandwich_norms=False,
                attention_scale=head_dim**-0.5,
                layers=[{"rotary_dim": head_dim, "sliding_window": 0, "rope_table": RopeTable.GLOBAL.value}]
                * fields["num_layers"],
            )
        fields["family"] = Family(fields["family"])
        fields["activation"] = Activation(fields["activation"])
        fields["layers"] = tuple(
            LayerAttention(layer["rotary_dim"], layer["sliding_window"], RopeTable(layer["rope_table"]))
            for layer in fields["layers"]
        )
        return DecoderShape(**fields)

    def summary(self) -> dict:
        """JSON-ready fields for the manifest's config record."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "layers"}
        fields = {name: value.value if isinstance(value, Enum) else value for name, value in fields.items()}
        fields["layers"] = [
            {"rotary_dim": layer.rotary_dim, "sliding_window": layer.sliding_window,
             "rope_table": layer.rope_table.value}
            for layer in self.layers
        ]
        return fields


def text_config(config) -> object:
    """The decoder's config: a `gemma3` checkpoint nests its text tower's."""
    if getattr(config, "model_type", None) == "gemma3":
        return config.text_config
    return config


def family_of(config, source) -> Family:
    model_type = getattr(config, "model_type", None)
    try:
        return Family(model_type)
    except ValueError:
        raise EtloraError(
            f"{source}: expected one of the model types {', '.join(SUPPORTED_MODEL_TYPES)}, received "
            f"model_type {model_type!r} (hint: docs/models.md lists the families etlora exports)"
        ) from None


def _rope_parameters(config, layer_type: str | None) -> dict:
    parameters = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in parameters:
        return parameters[layer_type]
    return parameters


def check_config(config, source, max_seq_len: int | None = None) -> Family:
    """Refuse what the program cannot reproduce, before any weights are read."""
    family = family_of(config, source)
    layer_types = getattr(config, "layer_types", None) or [None]
    for layer_type in sorted(set(layer_types), key=str):
        rope = _rope_parameters(config, layer_type)
        rope_type = rope.get("rope_type", "default")
        if rope_type in DYNAMIC_ROPE_TYPES:
            raise EtloraError(
                f"{source}: RoPE type {rope_type!r} changes with the sequence length; etlora bakes "
                "static rotary tables (hint: a config without dynamic scaling)"
            )
        original = rope.get("original_max_position_embeddings") or getattr(
            config, "original_max_position_embeddings", None)
        if rope_type == "longrope" and max_seq_len is not None and original and max_seq_len > original:
            raise EtloraError(
                f"{source}: LongRoPE uses its short factors up to original_max_position_embeddings "
                f"{original}; --max-seq-len {max_seq_len} is beyond it (hint: --max-seq-len {original})"
            )
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, name, None):
            raise EtloraError(
                f"{source}: {name} {getattr(config, name)} is not supported (expected none, as Gemma 3 has)"
            )
    activation = _activation_name(config)
    if activation not in _ACTIVATIONS:
        raise EtloraError(
            f"{source}: MLP activation {activation!r} is not supported (expected one of "
            f"{', '.join(_ACTIVATIONS)})"
        )
    return family


def _activation_name(config) -> str:
    """Gemma names its MLP activation hidden_activation, the others hidden_act."""
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")


def _layer_types(config) -> list[str]:
    layers = config.num_hidden_layers
    if getattr(config, "layer_types", None):
        return list(config.layer_types)
    if getattr(config, "sliding_window", None) and Family(config.model_type) is Family.PHI3:
        return [_SLIDING] * layers  # Phi-3 applies its window, when it has one, to every layer
    return ["full_attention"] * layers


def decoder_shape(config) -> DecoderShape:
    """The program's shape for a config that check_config accepted."""
    family = Family(config.model_type)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    gemma = family is Family.GEMMA3
    rotary_dim = int(head_dim * _rope_parameters(config, None).get(
        "partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0))
    uses_rope = getattr(config, "no_rope_layers", None) or [1] * config.num_hidden_layers
    layers = []
    for index, layer_type in enumerate(_layer_types(config)):
        sliding = layer_type == _SLIDING
        layers.append(LayerAttention(
            rotary_dim=rotary_dim if uses_rope[index] else 0,
            sliding_window=int(config.sliding_window) if sliding else 0,
            rope_table=RopeTable.LOCAL if sliding and gemma else RopeTable.GLOBAL,
        ))
    attention_bias = bool(getattr(config, "attention_bias", False))
    activation = _activation_name(config)
    return DecoderShape(
        family=family,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=head_dim,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=attention_bias or family is Family.QWEN2,
        o_bias=attention_bias and family is not Family.QWEN2,
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        qk_norm=family in (Family.QWEN3, Family.GEMMA3),
        activation=Activation(activation),
        embedding_scale=math.sqrt(config.hidden_size) if gemma else 1.0,
        sandwich_norms=gemma,
        attention_scale=(config.query_pre_attn_scalar ** -0.5) if gemma else head_dim**-0.5,
        layers=tuple(layers),
    )


def rope_tables(config, shape: DecoderShape, max_seq_len: int) -> dict[RopeTable, tuple[torch.Tensor, torch.Tensor]]:
    """cos/sin [max_seq_len, rotary_dim] per table, from the family's own rotary module."""
    module_name, class_name = _MODELING[shape.family]
    module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    rotary = getattr(module, class_name)(config)
    positions = torch.arange(max_seq_len).unsqueeze(0)
    probe = torch.zeros(1, dtype=torch.float32)
    tables = {}
    for table in shape.rope_tables:
        with torch.no_grad():
            if shape.family is Family.GEMMA3:
                layer_type = _SLIDING if table is RopeTable.LOCAL else "full_attention"
                cos, sin = rotary(probe, positions, layer_type)
            else:
                cos, sin = rotary(probe, positions)
        tables[table] = (cos[0].float().contiguous(), sin[0].float().contiguous())
    return tables


def to_program_state_dict(shape: DecoderShape, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors under the program's names and conventions (a new dict)."""
    converted = dict(state_dict)
    if shape.family is Family.GEMMA3:
        # Gemma's RMSNorm multiplies by (1 + w); the program's multiplies by its weight.
        for name, tensor in state_dict.items():
            if name.endswith("norm.weight"):
                converted[name] = 1.0 + tensor
    if shape.family is Family.PHI3:
        q, kv, i = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim, shape.intermediate_size
        for name, tensor in state_dict.items():
            if name.endswith("self_attn.qkv_proj.weight"):
                prefix = name.removesuffix("qkv_proj.weight")
                del converted[name]
                for part, rows in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q, kv, kv])):
                    converted[f"{prefix}{part}.weight"] = rows.contiguous()
            elif name.endswith("mlp.gate_up_proj.weight"):
                prefix = name.removesuffix("gate_up_proj.weight")
                del converted[name]
                for part, rows in zip(("gate_proj", "up_proj"), tensor.split([i, i])):
                    converted[f"{prefix}{part}.weight"] = rows.contiguous()
    return converted

