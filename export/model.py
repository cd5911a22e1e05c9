"""The decoder of every supported family (export/families.py) in plain PyTorch, shaped for export with swappable LoRA adapters.

Module names follow Hugging Face (`model.layers.0.self_attn.q_proj`) so that a Hugging Face state
dict loads unchanged and a site is named the way PEFT names its target. Adapter weights are not
parameters: they arrive as method inputs (see docs/bundle-format.md), which keeps the program
holding foundation constants only and lets a runtime switch adapters without reloading anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention_op import cached_attention
from .families import ATTENTION_MODULES, LINEAR_MODULES, MLP_MODULES, Activation, DecoderShape, RopeTable  # noqa: F401



def site_path(layer: int, module: str) -> str:
    """Module path of an adaptable linear layer, as in Hugging Face and PEFT."""
    block = "self_attn" if module in ATTENTION_MODULES else "mlp"
    return f"model.layers.{layer}.{block}.{module}"


class AdapterInputs:
    """The adapter tensors of one forward call, grouped by site.

    `per_site[path]` lists (lora_a, lora_b, scale) for every adapter slot.
    """

    def __init__(self, sites: list[str], adapter_slots: int, scales: torch.Tensor, tensors):
        expected = 2 * adapter_slots * len(sites)
        if len(tensors) != expected:
            raise ValueError(f"expected {expected} adapter tensors, received {len(tensors)}")
        self.scales = scales
        self.per_site: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
            path: [] for path in sites
        }
        for slot in range(adapter_slots):
            scale = scales[slot : slot + 1]
            for index, path in enumerate(sites):
                base = 2 * (slot * len(sites) + index)
                self.per_site[path].append((tensors[base], tensors[base + 1], scale))


class AdaptableLinear(nn.Linear):
    """A foundation linear layer plus, when it is a site, LoRA updates from method inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool, path: str):
        super().__init__(in_features, out_features, bias=bias)
        self.path = path

    def forward(self, x: torch.Tensor, adapters: AdapterInputs | None = None) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if adapters is None or not self.is_site(adapters):
            return y
        # x is [1, T, in]; lora_a [1, in, R]; lora_b [1, R, out]: two bmm that XNNPACK runs with
        # both operands dynamic, so the adapter stays inside the delegate without being a constant.
        for lora_a, lora_b, scale in adapters.per_site[self.path]:
            y = y + torch.bmm(torch.bmm(x, lora_a) * scale, lora_b)
        return y

    def is_site(self, adapters: AdapterInputs) -> bool:
        return self.path in adapters.per_site


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mean over a [1, T, 1, dim] view: XNNPACK lowers a 4D mean over the last two dims, so the
        # norm stays inside the delegate instead of splitting the graph at every layer.
        squares = (x * x).view(1, -1, 1, x.shape[-1])
        variance = squares.mean(dim=(2, 3), keepdim=True).view(1, -1, 1)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class Attention(nn.Module):
    def __init__(self, shape: DecoderShape, layer: int, max_seq_len: int):
        super().__init__()
        self.shape = shape
        self.layer = shape.layers[layer]
        q_out = shape.num_heads * shape.head_dim
        kv_out = shape.num_kv_heads * shape.head_dim
        self.q_proj = AdaptableLinear(shape.hidden_size, q_out, shape.qkv_bias, site_path(layer, "q_proj"))
        self.k_proj = AdaptableLinear(shape.hidden_size, kv_out, shape.qkv_bias, site_path(layer, "k_proj"))
        self.v_proj = AdaptableLinear(shape.hidden_size, kv_out, shape.qkv_bias, site_path(layer, "v_proj"))
        self.o_proj = AdaptableLinear(q_out, shape.hidden_size, shape.o_bias, site_path(layer, "o_proj"))
        if shape.qk_norm:
            self.q_norm = RMSNorm(shape.head_dim, shape.rms_norm_eps)
            self.k_norm = RMSNorm(shape.head_dim, shape.rms_norm_eps)
        cache_shape = (1, max_seq_len, shape.num_kv_heads, shape.head_dim)
        # The KV cache is method state (mutable buffers), not a foundation weight; token-major so
        # that cached_attention writes a call's rows as one block (export/attention_op.py).
        self.register_buffer("k_cache", torch.zeros(cache_shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape), persistent=False)

    def forward(self, x, residual, input_pos, rope_cos, rope_sin, adapters, post_norm=None):
        """residual + attention(x): the residual stream after this block's attention (with
        `post_norm`, Gemma's, residual + post_norm(attention(x)))."""
        # Shapes use -1 for the token count and views only of contiguous tensors: XNNPACK takes
        # reshapes with one inferred dimension but not symbolic ones, and every op it refuses
        # splits the delegate, which costs time at every token.
        s = self.shape
        # Foundation projections in the delegate; their LoRA updates in the attention kernel,
        # where they cost no delegate ops (export/attention_op.py). o_proj's update is added to
        # the residual there, so that the delegate only adds the foundation's o_proj output;
        # after a post-attention norm it cannot be, and o_proj's LoRA runs in the graph instead.
        q = F.linear(x, self.q_proj.weight, self.q_proj.bias).view(1, -1, s.num_heads, s.head_dim)
        k = F.linear(x, self.k_proj.weight, self.k_proj.bias).view(1, -1, s.num_kv_heads, s.head_dim)
        v = F.linear(x, self.v_proj.weight, self.v_proj.bias).view(1, -1, s.num_kv_heads, s.head_dim)
        projections = (self.q_proj, self.k_proj, self.v_proj) if post_norm else (
            self.q_proj, self.k_proj, self.v_proj, self.o_proj)
        lora_sites = [index for index, proj in enumerate(projections) if proj.is_site(adapters)]
        lora = [
            tensor
            for slot in range(len(adapters.scales))
            for index in lora_sites
            for tensor in adapters.per_site[projections[index].path][slot][:2]
        ]
        out, residual = cached_attention(
            q, k, v, self.k_cache, self.v_cache, input_pos, rope_cos, rope_sin,
            x, residual, adapters.scales, lora, lora_sites,
            query_norm=self.q_norm.weight if s.qk_norm else None,
            key_norm=self.k_norm.weight if s.qk_norm else None,
            norm_eps=s.rms_norm_eps, rotary_dim=self.layer.rotary_dim,
            sliding_window=self.layer.sliding_window, scale=s.attention_scale,
        )
        out = out.view(1, -1, s.num_heads * s.head_dim)
        if post_norm is not None:
            return residual + post_norm(self.o_proj(out, adapters))
        return residual + F.linear(out, self.o_proj.weight, self.o_proj.bias)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation written out (mul, add, tanh in the delegate). F.gelu(approximate=
    "tanh") lowered to XNNPACK's GELU put a tiny Gemma 1.3e-4 from transformers' logits; this, 6e-7."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))


def activation_fn(activation: Activation):
    return gelu_tanh if activation is Activation.GELU_TANH else F.silu


class MLP(nn.Module):
    def __init__(self, shape: DecoderShape, layer: int):
        super().__init__()
        h, i, bias = shape.hidden_size, shape.intermediate_size, shape.mlp_bias
        self.gate_proj = AdaptableLinear(h, i, bias, site_path(layer, "gate_proj"))
        self.up_proj = AdaptableLinear(h, i, bias, site_path(layer, "up_proj"))
        self.down_proj = AdaptableLinear(i, h, bias, site_path(layer, "down_proj"))
        self.activation = activation_fn(shape.activation)

    def forward(self, x, adapters):
        gated = self.activation(self.gate_proj(x, adapters)) * self.up_proj(x, adapters)
        return self.down_proj(gated, adapters)


class DecoderLayer(nn.Module):
    """Pre-norm block; with sandwich norms (Gemma), the attention and MLP outputs are normed too."""

    def __init__(self, shape: DecoderShape, layer: int, max_seq_len: int):
        super().__init__()
        self.sandwich_norms = shape.sandwich_norms
        self.rope_table = shape.layers[layer].rope_table
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.self_attn = Attention(shape, layer, max_seq_len)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        if shape.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
            self.post_feedforward_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = MLP(shape, layer)

    def forward(self, x, input_pos, rope_cos, rope_sin, adapters):
        if self.sandwich_norms:
            x = self.self_attn(self.input_layernorm(x), x, input_pos, rope_cos, rope_sin, adapters,
                               post_norm=self.post_attention_layernorm)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x), adapters))
        x = self.self_attn(self.input_layernorm(x), x, input_pos, rope_cos, rope_sin, adapters)
        return x + self.mlp(self.post_attention_layernorm(x), adapters)


class DecoderBody(nn.Module):
    def __init__(self, shape: DecoderShape, max_seq_len: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(shape, layer, max_seq_len) for layer in range(shape.num_layers)
        )
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)


# Buffer names of the rotary tables (derived from the config, not loaded from the checkpoint).
ROPE_BUFFERS = {RopeTable.GLOBAL: ("rope_cos", "rope_sin"), RopeTable.LOCAL: ("rope_cos_local", "rope_sin_local")}


class DecoderForExport(nn.Module):
    """forward(tokens, input_pos, adapter_scales, *adapter_tensors) -> last position's logits."""

    def __init__(
        self,
        shape: DecoderShape,
        rope_tables: dict[RopeTable, tuple[torch.Tensor, torch.Tensor]],
        max_seq_len: int,
        sites: list[str],
        adapter_slots: int,
    ):
        super().__init__()
        self.shape = shape
        self.max_seq_len = max_seq_len
        self.sites = list(sites)
        self.adapter_slots = adapter_slots
        self.model = DecoderBody(shape, max_seq_len)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        for table, (cos, sin) in rope_tables.items():
            cos_name, sin_name = ROPE_BUFFERS[table]
            self.register_buffer(cos_name, cos[:max_seq_len].contiguous(), persistent=False)
            self.register_buffer(sin_name, sin[:max_seq_len].contiguous(), persistent=False)

    def tables_for(self, table: RopeTable) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's rotary tables; a layer without RoPE (rotary_dim 0) reads none: empty ones."""
        cos_name, sin_name = ROPE_BUFFERS[table]
        if not hasattr(self, cos_name):
            empty = torch.zeros(self.max_seq_len, 0)
            return empty, empty
        return getattr(self, cos_name), getattr(self, sin_name)

    def forward(self, tokens, input_pos, adapter_scales, *adapter_tensors):
        adapters = AdapterInputs(self.sites, self.adapter_slots, adapter_scales, adapter_tensors)
        x = self.model.embed_tokens(tokens)
        if self.shape.embedding_scale != 1.0:
            x = x * self.shape.embedding_scale
        for layer in self.model.layers:
            rope_cos, rope_sin = self.tables_for(layer.rope_table)
            x = layer(x, input_pos, rope_cos, rope_sin, adapters)
        last = self.model.norm(x[:, -1, :])
        return self.lm_head(last)
