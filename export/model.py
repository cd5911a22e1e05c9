"""A Llama-family decoder in plain PyTorch, shaped for export with swappable LoRA adapters.

Module names follow Hugging Face (`model.layers.0.self_attn.q_proj`) so that a Hugging Face state
dict loads unchanged and a site is named the way PEFT names its target. Adapter weights are not
parameters: they arrive as method inputs (see docs/bundle-format.md), which keeps the program
holding foundation constants only and lets a runtime switch adapters without reloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention_op import cached_attention

# Hugging Face's short names for the linear layers of a Llama block, in a fixed order.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES


@dataclass(frozen=True)
class LlamaShape:
    """The architecture numbers etlora needs, read from a Hugging Face LlamaConfig."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool

    @staticmethod
    def from_hf_config(config) -> "LlamaShape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return LlamaShape(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            head_dim=head_dim,
            rms_norm_eps=config.rms_norm_eps,
            tie_word_embeddings=bool(config.tie_word_embeddings),
            attention_bias=bool(getattr(config, "attention_bias", False)),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )

    def linear_dims(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of one linear layer of a block."""
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
    def __init__(self, shape: LlamaShape, layer: int, max_seq_len: int):
        super().__init__()
        self.shape = shape
        q_out = shape.num_heads * shape.head_dim
        kv_out = shape.num_kv_heads * shape.head_dim
        bias = shape.attention_bias
        self.q_proj = AdaptableLinear(shape.hidden_size, q_out, bias, site_path(layer, "q_proj"))
        self.k_proj = AdaptableLinear(shape.hidden_size, kv_out, bias, site_path(layer, "k_proj"))
        self.v_proj = AdaptableLinear(shape.hidden_size, kv_out, bias, site_path(layer, "v_proj"))
        self.o_proj = AdaptableLinear(q_out, shape.hidden_size, bias, site_path(layer, "o_proj"))
        cache_shape = (1, max_seq_len, shape.num_kv_heads, shape.head_dim)
        # The KV cache is method state (mutable buffers), not a foundation weight; token-major so
        # that cached_attention writes a call's rows as one block (export/attention_op.py).
        self.register_buffer("k_cache", torch.zeros(cache_shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape), persistent=False)

    def forward(self, x, residual, input_pos, rope_cos, rope_sin, adapters):
        """residual + attention(x): the residual stream after this block's attention."""
        # Shapes use -1 for the token count and views only of contiguous tensors: XNNPACK takes
        # reshapes with one inferred dimension but not symbolic ones, and every op it refuses
        # splits the delegate, which costs time at every token.
        s = self.shape
        # Foundation projections in the delegate; their LoRA updates in the attention kernel,
        # where they cost no delegate ops (export/attention_op.py). o_proj's update is added to
        # the residual there, so that the delegate only adds the foundation's o_proj output.
        q = F.linear(x, self.q_proj.weight, self.q_proj.bias).view(1, -1, s.num_heads, s.head_dim)
        k = F.linear(x, self.k_proj.weight, self.k_proj.bias).view(1, -1, s.num_kv_heads, s.head_dim)
        v = F.linear(x, self.v_proj.weight, self.v_proj.bias).view(1, -1, s.num_kv_heads, s.head_dim)
        projections = (self.q_proj, self.k_proj, self.v_proj, self.o_proj)
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
        )
        out = out.view(1, -1, s.num_heads * s.head_dim)
        return residual + F.linear(out, self.o_proj.weight, self.o_proj.bias)


class MLP(nn.Module):
    def __init__(self, shape: LlamaShape, layer: int):
        super().__init__()
        h, i, bias = shape.hidden_size, shape.intermediate_size, shape.mlp_bias
        self.gate_proj = AdaptableLinear(h, i, bias, site_path(layer, "gate_proj"))
        self.up_proj = AdaptableLinear(h, i, bias, site_path(layer, "up_proj"))
        self.down_proj = AdaptableLinear(i, h, bias, site_path(layer, "down_proj"))

    def forward(self, x, adapters):
        gated = F.silu(self.gate_proj(x, adapters)) * self.up_proj(x, adapters)
        return self.down_proj(gated, adapters)


class DecoderLayer(nn.Module):
    def __init__(self, shape: LlamaShape, layer: int, max_seq_len: int):
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.self_attn = Attention(shape, layer, max_seq_len)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = MLP(shape, layer)

    def forward(self, x, input_pos, rope_cos, rope_sin, adapters):
        x = self.self_attn(self.input_layernorm(x), x, input_pos, rope_cos, rope_sin, adapters)
        return x + self.mlp(self.post_attention_layernorm(x), adapters)


class LlamaBody(nn.Module):
    def __init__(self, shape: LlamaShape, max_seq_len: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(shape, layer, max_seq_len) for layer in range(shape.num_layers)
        )
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)


class LlamaForExport(nn.Module):
    """forward(tokens, input_pos, adapter_scales, *adapter_tensors) -> last position's logits."""

    def __init__(
        self,
        shape: LlamaShape,
        inv_freq: torch.Tensor,
        rope_attention_scaling: float,
        max_seq_len: int,
        sites: list[str],
        adapter_slots: int,
    ):
        super().__init__()
        self.shape = shape
        self.max_seq_len = max_seq_len
        self.sites = list(sites)
        self.adapter_slots = adapter_slots
        self.model = LlamaBody(shape, max_seq_len)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        positions = torch.arange(max_seq_len, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq.float())
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("rope_cos", angles.cos() * rope_attention_scaling, persistent=False)
        self.register_buffer("rope_sin", angles.sin() * rope_attention_scaling, persistent=False)

    def forward(self, tokens, input_pos, adapter_scales, *adapter_tensors):
        adapters = AdapterInputs(self.sites, self.adapter_slots, adapter_scales, adapter_tensors)
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, input_pos, self.rope_cos, self.rope_sin, adapters)
        last = self.model.norm(x[:, -1, :])
        return self.lm_head(last)
