"""`etlora::cached_attention`: rotate (RoPE), write into the KV cache, attend over the filled prefix.

Why a custom op: in plain ATen the cache update is a functional index_put that copies the whole
cache at every layer and token, and attention runs over every cache row (masked) instead of the
filled prefix. Our runtime's kernel (runtime_cpp/src/cached_attention.cpp) updates the cache in
place and reads only positions 0 .. input_pos[-1]. This module defines the op's schema for
torch.export and ExecuTorch's out-variant pass, and an eager reference the export traces through
and the tests compare against.

The rotary embedding and the LoRA updates of q/k/v are applied here too: in the graph they are
four small ops per projection and adapter slot, and every op of the XNNPACK delegate costs a
thread-pool round trip (and a dynamic operand a repack) at every layer and token.

Layouts (docs/bundle-format.md): query [1, T, heads, head_dim] and key/value [1, T, kv_heads,
head_dim] as the projections produce them (not rotated), caches [1, max_seq_len, kv_heads, head_dim]
(token-major, so a call's rows are one contiguous block, keys stored rotated), input_pos [T] int64,
rope_cos/rope_sin [max_seq_len, head_dim] (the rotary tables, rotate-half convention); output
[1, T, heads, head_dim]. Query i attends to cache positions <= input_pos[i]; heads share kv heads in
groups of heads / kv_heads (grouped-query attention); scores are scaled by 1/sqrt(head_dim).
LoRA: `hidden` [1, T, hidden_size] is the projections' input; `lora_sites` lists which of
query (0), key (1), value (2) are sites; `lora` holds, for each slot s of `adapter_scales` [S] and
each listed site, lora_a [1, hidden_size, R] and lora_b [1, R, out]; the site's projection gains
adapter_scales[s] * (hidden @ lora_a) @ lora_b before RoPE.
"""

from __future__ import annotations

import math

import torch

NAMESPACE = "etlora"
OP_NAME = "cached_attention"
_ARGS = (
    "Tensor query, Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
    "Tensor input_pos, Tensor rope_cos, Tensor rope_sin, "
    "Tensor hidden, Tensor adapter_scales, Tensor[] lora, int[] lora_sites"
)

_library = torch.library.Library(NAMESPACE, "DEF")
_library.define(f"{OP_NAME}({_ARGS}) -> Tensor")
_library.define(f"{OP_NAME}.out({_ARGS}, *, Tensor(c!) out) -> Tensor(c!)")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [1, T, heads, head_dim] rotated by the rows cos/sin [T, head_dim] (rotate-half)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def _with_lora(projections, hidden, adapter_scales, lora, lora_sites):
    """query, key, value plus every slot's LoRA update of the sites in lora_sites."""
    projections = list(projections)
    for slot in range(len(adapter_scales)):
        for position, site in enumerate(lora_sites):
            base = 2 * (slot * len(lora_sites) + position)
            lora_a, lora_b = lora[base], lora[base + 1]
            update = torch.bmm(torch.bmm(hidden, lora_a) * adapter_scales[slot], lora_b)
            projections[site] = projections[site] + update.view(projections[site].shape)
    return projections


def _reference(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
               hidden, adapter_scales, lora, lora_sites):
    query, key, value = _with_lora((query, key, value), hidden, adapter_scales, lora, lora_sites)
    cos, sin = rope_cos[input_pos], rope_sin[input_pos]
    query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
    key_cache[:, input_pos] = key
    value_cache[:, input_pos] = value
    heads, kv_heads = query.shape[2], key_cache.shape[2]
    groups = heads // kv_heads
    keys = key_cache[0].repeat_interleave(groups, dim=1).transpose(0, 1)  # [heads, S, D]
    values = value_cache[0].repeat_interleave(groups, dim=1).transpose(0, 1)
    queries = query[0].transpose(0, 1)  # [heads, T, D]
    scores = queries @ keys.transpose(1, 2) / math.sqrt(query.shape[-1])
    positions = torch.arange(key_cache.shape[1], device=query.device)
    visible = positions.unsqueeze(0) <= input_pos.unsqueeze(1)  # [T, S]
    scores = scores.masked_fill(~visible, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ values  # [heads, T, D]
    return out.transpose(0, 1).unsqueeze(0).contiguous()


def _reference_out(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
                   hidden, adapter_scales, lora, lora_sites, *, out):
    out.copy_(_reference(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
                         hidden, adapter_scales, lora, lora_sites))
    return out


def _fake(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin, *adapter_args):
    return torch.empty_like(query)


def _fake_out(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin, *adapter_args, out):
    return out


_library.impl(OP_NAME, _reference, "CompositeExplicitAutograd")
_library.impl(f"{OP_NAME}.out", _reference_out, "CompositeExplicitAutograd")
_library.impl(OP_NAME, _fake, "Meta")
_library.impl(f"{OP_NAME}.out", _fake_out, "Meta")


def cached_attention(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
                     hidden, adapter_scales, lora, lora_sites):
    return torch.ops.etlora.cached_attention(
        query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
        hidden, adapter_scales, lora, lora_sites,
    )
