"""HtpDecoder: the decoder of model.py reshaped for an NPU (Qualcomm HTP), plus a host-side driver.

Why a second graph: etlora's CPU program keeps its KV cache as mutable state and attends through
its own op `etlora::cached_attention` (attention_op.py), with a dynamic token count. The HTP runs
none of that: it takes standard ATen ops with shapes fixed at export, and it cannot grow or
mutate a cache in place. So this twin, like ExecuTorch's static Llama for Qualcomm
(examples/qualcomm/oss_scripts/llama), is a pure function of fixed-size tensors:

    forward(tokens, input_pos, attention_mask, k_cache, v_cache, adapter_scales,
            [sliding_mask,] *adapter_tensors) -> (logits, new_k, new_v)

    tokens          int64   [1, T]            T = chunk_len (e.g. 32 for prefill, 1 for decode)
    input_pos       int64   [T]               the position of every token, 0 .. C-1 (RoPE rows)
    attention_mask  float32 [1, T, C + T]     additive: 0 where visible, -inf where not; columns
                                              0..C-1 are cache rows, C..C+T-1 this chunk's rows
    k_cache         float32 [L, kv_heads, C, head_dim]   keys stored rotated (after RoPE)
    v_cache         float32 [L, kv_heads, C, head_dim]   C = cache_len
    adapter_scales  float32 [slots]           strength * scaling of the adapter in each slot
    sliding_mask    float32 [1, T, C + T]     only for a model with sliding-window layers (Gemma 3):
                                              attention_mask, and each query sees only the last W
                                              positions (its own included); those layers read it
    adapter_tensors float32, for slot in slots, for site in sites: <site>.lora_a [1, in, R],
                    <site>.lora_b [1, R, out]: the same order as DecoderForExport and the same
                    keys and layout as an adapter .ptd (adapter_file.py), so one file feeds both

    logits          float32 [1, T, vocab]     every position (a padded last prefill chunk has its
                                              last real token anywhere in the chunk)
    new_k, new_v    float32 [L, kv_heads, T, head_dim]   this chunk's rows (keys rotated), which
                                              the caller writes into its cache at input_pos

The cache is an input and the new rows an output, so the graph never mutates anything; the mask
is an input (built on the host, `attention_mask`) so the graph does no integer compares and the
host decides which cache rows are filled. Module names follow Hugging Face
(`model.layers.0.self_attn.q_proj`), and foundation weights load from the same state dict as
DecoderForExport, so tagging foundation constants by module path works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from etlora.format.errors import EtloraError

from .families import DecoderShape, RopeTable
from .model import MLP, ROPE_BUFFERS, AdaptableLinear, AdapterInputs, RMSNorm, site_path


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in Hugging Face's rotate-half convention on the first rotary_dim dims of x
    [heads, T, D], cos/sin [T, rotary_dim]; the other dims pass through (rotary_dim 0: none)."""
    rotary_dim = cos.shape[-1]
    if rotary_dim == 0:
        return x
    if rotary_dim < x.shape[-1]:  # partial rotary: only then slice, since every op that the
        # delegate does not take splits the graph
        return torch.cat((rotate(x[..., :rotary_dim], cos, sin), x[..., rotary_dim:]), dim=-1)
    half = rotary_dim // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def sliding_window_of(shape: DecoderShape) -> int:
    """The one window W of the model's sliding-window layers (0: none). The program has one mask
    input for them, so a model whose layers slide over different windows is refused by name."""
    windows = sorted({layer.sliding_window for layer in shape.layers if layer.sliding_window})
    if len(windows) > 1:
        raise EtloraError(
            f"the HTP program has one sliding-window mask; this {shape.family.value} model's layers slide "
            f"over {len(windows)} different windows {windows} (hint: --backend xnnpack)"
        )
    return windows[0] if windows else 0


class HtpAttention(nn.Module):
    def __init__(self, shape: DecoderShape, layer: int):
        super().__init__()
        self.shape = shape
        h, q_out, kv_out = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        self.q_proj = AdaptableLinear(h, q_out, shape.qkv_bias, site_path(layer, "q_proj"))
        self.k_proj = AdaptableLinear(h, kv_out, shape.qkv_bias, site_path(layer, "k_proj"))
        self.v_proj = AdaptableLinear(h, kv_out, shape.qkv_bias, site_path(layer, "v_proj"))
        self.o_proj = AdaptableLinear(q_out, h, shape.o_bias, site_path(layer, "o_proj"))
        if shape.qk_norm:
            self.q_norm = RMSNorm(shape.head_dim, shape.rms_norm_eps)
            self.k_norm = RMSNorm(shape.head_dim, shape.rms_norm_eps)

    def _heads(self, rows: torch.Tensor, heads: int, norm: RMSNorm | None) -> torch.Tensor:
        """[1, T, heads * D] -> [heads, T, D], each head RMS-normalized when the family says so."""
        s, t = self.shape, rows.shape[1]
        if norm is not None:
            rows = norm(rows.view(1, t * heads, s.head_dim))
        return rows.view(t, heads, s.head_dim).transpose(0, 1)

    def forward(self, x, cos, sin, mask, k_cache, v_cache, adapters):
        """x [1, T, hidden]; k_cache/v_cache [kv_heads, C, D] -> (out, new k, new v [kv_heads, T, D])."""
        s = self.shape
        t = x.shape[1]  # a Python int: shapes are static
        # Head-major [heads, T, D]: attention is then plain 3D bmm, which every backend has.
        q = self._heads(self.q_proj(x, adapters), s.num_heads, self.q_norm if s.qk_norm else None)
        k = self._heads(self.k_proj(x, adapters), s.num_kv_heads, self.k_norm if s.qk_norm else None)
        v = self._heads(self.v_proj(x, adapters), s.num_kv_heads, None)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # Attend over cache rows and this chunk's rows side by side: a concat, not a cache write.
        keys = torch.cat((k_cache, k), dim=1)  # [kv_heads, C + T, D]
        values = torch.cat((v_cache, v), dim=1)
        # Grouped-query attention without copying keys: query head h reads kv head h // groups
        # (Hugging Face's repeat_kv layout), so the `groups` query heads of one kv head are stacked
        # as rows [kv_heads, groups * T, D] and meet their keys in one bmm.
        groups = s.num_heads // s.num_kv_heads
        q = q.reshape(s.num_kv_heads, groups * t, s.head_dim)
        scores = torch.bmm(q, keys.transpose(1, 2)) * s.attention_scale
        scores = scores.view(s.num_kv_heads, groups, t, -1) + mask  # mask [1, T, C + T] broadcasts
        weights = torch.softmax(scores, dim=-1).view(s.num_kv_heads, groups * t, -1)
        out = torch.bmm(weights, values).view(s.num_heads, t, s.head_dim)
        out = out.transpose(0, 1).reshape(1, t, s.num_heads * s.head_dim)
        return self.o_proj(out, adapters), k, v


class HtpDecoderLayer(nn.Module):
    def __init__(self, shape: DecoderShape, layer: int):
        super().__init__()
        self.sandwich_norms = shape.sandwich_norms
        self.sliding = shape.layers[layer].sliding_window > 0  # reads the program's sliding_mask
        self.rotary_dim = shape.layers[layer].rotary_dim
        self.rope_table = shape.layers[layer].rope_table
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.self_attn = HtpAttention(shape, layer)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        if shape.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
            self.post_feedforward_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = MLP(shape, layer)  # the CPU program's MLP: standard ops already

    def forward(self, x, cos, sin, mask, k_cache, v_cache, adapters):
        if self.rotary_dim == 0:
            cos, sin = cos[:, :0], sin[:, :0]
        attended, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, k_cache, v_cache, adapters)
        if self.sandwich_norms:
            x = x + self.post_attention_layernorm(attended)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x), adapters)), k, v
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x), adapters), k, v


class HtpBody(nn.Module):
    def __init__(self, shape: DecoderShape):
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(HtpDecoderLayer(shape, layer) for layer in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)


class HtpDecoder(nn.Module):
    """forward(tokens, input_pos, attention_mask, k_cache, v_cache, adapter_scales, [sliding_mask,]
    *adapter_tensors) -> (logits [1, T, vocab], new_k, new_v [L, kv_heads, T, head_dim]); see the
    module docstring."""

    def __init__(
        self,
        shape: DecoderShape,
        rope_tables: dict[RopeTable, tuple[torch.Tensor, torch.Tensor]],
        chunk_len: int,
        cache_len: int,
        sites: Sequence[str],
        adapter_slots: int,
    ):
        super().__init__()
        if chunk_len < 1 or cache_len < 1:
            raise ValueError(f"chunk_len and cache_len must be >= 1, received {chunk_len}, {cache_len}")
        self.sliding_window = sliding_window_of(shape)
        self.shape = shape
        self.chunk_len = chunk_len
        self.cache_len = cache_len
        self.sites = list(sites)
        self.adapter_slots = adapter_slots
        self.model = HtpBody(shape)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        # Rows for positions 0 .. C-1, the same names and values as DecoderForExport's tables with
        # max_seq_len = C, so both programs' foundation data match (the tables are derived from
        # the config, not loaded). Padding tokens past the cache take position C-1 (HostKVCache).
        self.table_names = {table: ROPE_BUFFERS[table] for table in rope_tables}
        for table, (cos, sin) in rope_tables.items():
            cos_name, sin_name = ROPE_BUFFERS[table]
            self.register_buffer(cos_name, cos[:cache_len].contiguous(), persistent=False)
            self.register_buffer(sin_name, sin[:cache_len].contiguous(), persistent=False)

    def forward(self, tokens, input_pos, attention_mask, k_cache, v_cache, adapter_scales, *extra_inputs):
        sliding_mask = extra_inputs[0] if self.sliding_window else None
        adapter_tensors = extra_inputs[1:] if self.sliding_window else extra_inputs
        adapters = AdapterInputs(self.sites, self.adapter_slots, adapter_scales, adapter_tensors)
        rows = {  # [T, rotary_dim] per table, shared by the layers that read it
            table: (torch.index_select(getattr(self, cos_name), 0, input_pos),
                    torch.index_select(getattr(self, sin_name), 0, input_pos))
            for table, (cos_name, sin_name) in self.table_names.items()
        }
        empty = torch.zeros(tokens.shape[1], 0)
        x = self.model.embed_tokens(tokens)
        if self.shape.embedding_scale != 1.0:
            x = x * self.shape.embedding_scale
        new_k, new_v = [], []
        for index, layer in enumerate(self.model.layers):
            cos, sin = rows.get(layer.rope_table, (empty, empty))
            mask = sliding_mask if layer.sliding else attention_mask
            x, k, v = layer(x, cos, sin, mask, k_cache[index], v_cache[index], adapters)
            new_k.append(k)
            new_v.append(v)
        logits = self.lm_head(self.model.norm(x))
        return logits, torch.stack(new_k), torch.stack(new_v)

    def example_inputs(self, site_dims: Sequence[tuple[int, int]], max_rank: int) -> tuple:
        """Inputs of the right shapes and dtypes (zeros; an empty cache) for torch.export."""
        s, t, c = self.shape, self.chunk_len, self.cache_len
        cache = (s.num_layers, s.num_kv_heads, c, s.head_dim)
        scales, lora = adapter_method_inputs(self.sites, site_dims, max_rank, self.adapter_slots, [])
        return (
            torch.zeros(1, t, dtype=torch.int64),
            torch.arange(t, dtype=torch.int64).clamp(max=c - 1),
            attention_mask(0, t, c),
            torch.zeros(cache),
            torch.zeros(cache),
            scales,
            *([attention_mask(0, t, c, self.sliding_window)] if self.sliding_window else []),
            *lora,
        )


def attention_mask(start: int, chunk_len: int, cache_len: int, sliding_window: int = 0) -> torch.Tensor:
    """[1, T, C + T] additive mask for a chunk whose first token sits at position `start`.

    Cache rows 0 .. start-1 are filled and visible to every query; rows from `start` on are stale
    or empty. Within the chunk, query i sees rows 0 .. i (causal): padding after the last real
    token is never seen by a real one. With a `sliding_window` W > 0, query i (position start + i)
    also sees no position at or before start + i - W, as the kernel's window (attention_op.py).
    """
    visible = torch.zeros(chunk_len, cache_len + chunk_len, dtype=torch.bool)
    visible[:, :start] = True
    visible[:, cache_len:] = torch.ones(chunk_len, chunk_len, dtype=torch.bool).tril()
    if sliding_window > 0:
        query_pos = torch.arange(start, start + chunk_len).unsqueeze(1)
        key_pos = torch.cat((torch.arange(cache_len), torch.arange(start, start + chunk_len))).unsqueeze(0)
        visible &= key_pos > query_pos - sliding_window
    mask = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))
    return mask.unsqueeze(0)


def adapter_method_inputs(
    sites: Sequence[str],
    site_dims: Sequence[tuple[int, int]],
    max_rank: int,
    adapter_slots: int,
    adapters: Sequence[tuple[dict, float]],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(adapter_scales, adapter_tensors) for the program's adapter inputs.

    `adapters` lists, per slot in use, (tensors keyed `<site>.lora_a` / `<site>.lora_b` exactly as
    in an adapter .ptd or `padded_adapter_tensors`, scale = strength * scaling). A site the
    adapter does not touch, and every unused slot, get zeros (and scale 0).
    """
    if len(adapters) > adapter_slots:
        raise ValueError(f"{len(adapters)} adapters for a program with {adapter_slots} slots")
    scales = torch.zeros(adapter_slots)
    tensors: list[torch.Tensor] = []
    for slot in range(adapter_slots):
        weights, scale = adapters[slot] if slot < len(adapters) else ({}, 0.0)
        scales[slot] = scale
        for site, (in_features, out_features) in zip(sites, site_dims):
            for key, size in ((f"{site}.lora_a", (1, in_features, max_rank)), (f"{site}.lora_b", (1, max_rank, out_features))):
                tensor = torch.as_tensor(weights[key]) if key in weights else torch.zeros(size)
                if tuple(tensor.shape) != size:
                    raise ValueError(f"{key}: expected shape {list(size)}, received {list(tensor.shape)}")
                tensors.append(tensor.to(torch.float32).contiguous())
    return scales, tensors


class HostKVCache:
    """Drives an HTP-shaped forward from the host: keeps the KV cache, chunks, pads and writes back.

    `prefill` and `decode` are callables taking the flat inputs in HtpDecoder's order and returning
    (logits, new_k, new_v): an eager HtpDecoder, or a lowered program's method. Tokens go through
    `prefill` in chunks of its length T (the last chunk padded with token 0); a single token goes
    through `decode` (chunk length 1) when one is given. Cache row p holds position p.
    """

    def __init__(
        self,
        shape: DecoderShape,
        cache_len: int,
        prefill: Callable,
        prefill_len: int,
        decode: Callable | None = None,
        adapter_inputs: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
    ):
        self.shape = shape
        self.cache_len = cache_len
        self.prefill, self.prefill_len, self.decode = prefill, prefill_len, decode
        self.adapter_scales, self.adapter_tensors = adapter_inputs or (torch.zeros(0), [])
        self.sliding_window = sliding_window_of(shape)
        cache = (shape.num_layers, shape.num_kv_heads, cache_len, shape.head_dim)
        self.k_cache = torch.zeros(cache)
        self.v_cache = torch.zeros(cache)
        self.length = 0  # filled rows

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()
        self.length = 0

    def forward(self, tokens: Sequence[int]) -> torch.Tensor:
        """Logits [len(tokens), vocab] for tokens appended at the current length."""
        if self.length + len(tokens) > self.cache_len:
            raise ValueError(f"{self.length} + {len(tokens)} tokens exceed the cache of {self.cache_len}")
        if not tokens:
            raise ValueError("no tokens to run")
        if len(tokens) == 1 and self.decode is not None:
            return self._chunk(self.decode, 1, tokens)
        return torch.cat([
            self._chunk(self.prefill, self.prefill_len, tokens[start : start + self.prefill_len])
            for start in range(0, len(tokens), self.prefill_len)
        ])

    def _chunk(self, run: Callable, chunk_len: int, tokens: Sequence[int]) -> torch.Tensor:
        n, start = len(tokens), self.length
        padded = torch.zeros(1, chunk_len, dtype=torch.int64)
        padded[0, :n] = torch.tensor(list(tokens), dtype=torch.int64)
        logits, new_k, new_v = run(
            padded,
            # Padding's positions are clamped into the RoPE table; its rows are never seen.
            torch.arange(start, start + chunk_len, dtype=torch.int64).clamp(max=self.cache_len - 1),
            attention_mask(start, chunk_len, self.cache_len),
            self.k_cache,
            self.v_cache,
            self.adapter_scales,
            *([attention_mask(start, chunk_len, self.cache_len, self.sliding_window)] if self.sliding_window else []),
            *self.adapter_tensors,
        )
        # Only the real tokens' rows enter the cache; padding rows are dropped.
        self.k_cache[:, :, start : start + n] = new_k[:, :, :n]
        self.v_cache[:, :, start : start + n] = new_v[:, :, :n]
        self.length += n
        return logits[0, :n].clone()  # a program may reuse its output buffer on the next call

    def generate(self, prompt: Sequence[int], steps: int) -> tuple[list[int], torch.Tensor]:
        """Greedy: prefill `prompt`, then decode `steps` tokens one at a time.

        Returns (prompt + generated tokens, logits [len(prompt) + steps - 1, vocab]): the logits
        row i predicts token i + 1.
        """
        tokens = list(prompt)
        rows = [self.forward(tokens)]
        for step in range(steps):
            tokens.append(int(rows[-1][-1].argmax()))
            if step < steps - 1:
                rows.append(self.forward(tokens[-1:]))
        return tokens, torch.cat(rows)
