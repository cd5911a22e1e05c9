"""`etlora::cached_attention`: rotate (RoPE), write into the KV cache, attend over the filled prefix.

Why a custom op: in plain ATen the cache update is a functional index_put that copies the whole
cache at every layer and token, and attention runs over every cache row (masked) instead of the
filled prefix. Our runtime's kernel (runtime_cpp/src/kernels/cached_attention.cpp) updates the cache in
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
query (0), key (1), value (2), o_proj (3) are sites; `lora` holds, for each slot s of
`adapter_scales` [S] and each listed site, lora_a [1, in, R] and lora_b [1, R, out]; a q/k/v
site's projection gains adapter_scales[s] * (hidden @ lora_a) @ lora_b before RoPE; o_proj's
update, computed from the attention output, is added to `residual` [1, T, hidden_size] (the block's
input), which comes back as the second output: the graph then adds only the foundation's o_proj.
"""

from __future__ import annotations

import math

import torch

NAMESPACE = "etlora"
OP_NAME = "cached_attention"
_ARGS = (
    "Tensor query, Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
    "Tensor input_pos, Tensor rope_cos, Tensor rope_sin, "
    "Tensor hidden, Tensor residual, Tensor adapter_scales, Tensor[] lora, int[] lora_sites"
)

_library = torch.library.Library(NAMESPACE, "DEF")
_library.define(f"{OP_NAME}({_ARGS}) -> (Tensor, Tensor)")
_library.define(
    f"{OP_NAME}.out({_ARGS}, *, Tensor(c!) out, Tensor(d!) residual_out) -> (Tensor(c!), Tensor(d!))"
)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [1, T, heads, head_dim] rotated by the rows cos/sin [T, head_dim] (rotate-half)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def _with_lora(projections, hidden, adapter_scales, lora, lora_sites, sites=(0, 1, 2)):
    """projections plus every slot's LoRA update of those `sites` listed in lora_sites."""
    projections = list(projections)
    for slot in range(len(adapter_scales)):
        for position, site in enumerate(lora_sites):
            if site not in sites:
                continue
            base = 2 * (slot * len(lora_sites) + position)
            lora_a, lora_b = lora[base], lora[base + 1]
            update = torch.bmm(torch.bmm(hidden, lora_a) * adapter_scales[slot], lora_b)
            index = sites.index(site)
            projections[index] = projections[index] + update.view(projections[index].shape)
    return projections


def _reference(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
               hidden, residual, adapter_scales, lora, lora_sites):
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
    out = out.transpose(0, 1).unsqueeze(0).contiguous()
    (residual,) = _with_lora(
        (residual,), out.view(1, out.shape[1], -1), adapter_scales, lora, lora_sites, sites=(3,)
    )
    return out, residual.clone()


def _reference_out(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
                   hidden, residual, adapter_scales, lora, lora_sites, *, out, residual_out):
    result, updated = _reference(query, key, value, key_cache, value_cache, input_pos, rope_cos,
                                 rope_sin, hidden, residual, adapter_scales, lora, lora_sites)
    out.copy_(result)
    residual_out.copy_(updated)
    return out, residual_out


def _fake(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin, hidden,
          residual, *adapter_args):
    return torch.empty_like(query), torch.empty_like(residual)


def _fake_out(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin, hidden,
              residual, *adapter_args, out, residual_out):
    return out, residual_out


_library.impl(OP_NAME, _reference, "CompositeExplicitAutograd")
_library.impl(f"{OP_NAME}.out", _reference_out, "CompositeExplicitAutograd")
_library.impl(OP_NAME, _fake, "Meta")
_library.impl(f"{OP_NAME}.out", _fake_out, "Meta")


def cached_attention(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
                     hidden, residual, adapter_scales, lora, lora_sites):
    """-> (attention output [1, T, heads, head_dim], residual + o_proj's LoRA update)."""
    return torch.ops.etlora.cached_attention(
        query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
        hidden, residual, adapter_scales, lora, lora_sites,
    )
