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
[1, T, heads, head_dim]. Query i attends to cache positions <= input_pos[i] (and, with a
`sliding_window` W > 0, only to the last W of them: positions > input_pos[i] - W); heads share kv
heads in groups of heads / kv_heads (grouped-query attention); scores are multiplied by `scale`.
Family features (docs/models.md): `query_norm`/`key_norm` [head_dim], when given, RMS-normalize
every head of q/k (after LoRA, before RoPE; eps `norm_eps`); `rotary_dim` is how many leading
dims of each head RoPE rotates (0: none, a layer without RoPE; less than head_dim: partial
rotary), and rope_cos/rope_sin are then [max_seq_len, rotary_dim].
LoRA: `hidden` [1, T, hidden_size] is the projections' input; `lora_sites` lists which of
query (0), key (1), value (2), o_proj (3) are sites; `lora` holds, for each slot s of
`adapter_scales` [S] and each listed site, lora_a [1, in, R] and lora_b [1, R, out]; a q/k/v
site's projection gains adapter_scales[s] * (hidden @ lora_a) @ lora_b before RoPE; o_proj's
update, computed from the attention output, is added to `residual` [1, T, hidden_size] (the block's
input), which comes back as the second output: the graph then adds only the foundation's o_proj.
"""

from __future__ import annotations

import torch

NAMESPACE = "etlora"
OP_NAME = "cached_attention"
_ARGS = (
    "Tensor query, Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
    "Tensor input_pos, Tensor rope_cos, Tensor rope_sin, "
    "Tensor hidden, Tensor residual, Tensor adapter_scales, Tensor[] lora, int[] lora_sites, "
    "Tensor? query_norm, Tensor? key_norm, float norm_eps, int rotary_dim, int sliding_window, "
    "float scale"
)

_library = torch.library.Library(NAMESPACE, "DEF")
_library.define(f"{OP_NAME}({_ARGS}) -> (Tensor, Tensor)")
_library.define(
    f"{OP_NAME}.out({_ARGS}, *, Tensor(c!) out, Tensor(d!) residual_out) -> (Tensor(c!), Tensor(d!))"
)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """x [1, T, heads, head_dim] with its first rotary_dim dims rotated by the rows cos/sin
    [T, rotary_dim] (rotate-half, as Hugging Face), the rest passed through."""
    if rotary_dim == 0:
        return x
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    x_rot = x_rot * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot


def head_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x [..., head_dim] RMS-normalized per head and scaled by weight (none: unchanged)."""
    if weight is None:
        return x
    return weight * (x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps))


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
               hidden, residual, adapter_scales, lora, lora_sites, query_norm, key_norm,
               norm_eps, rotary_dim, sliding_window, scale):
    query, key, value = _with_lora((query, key, value), hidden, adapter_scales, lora, lora_sites)
    query, key = head_rms_norm(query, query_norm, norm_eps), head_rms_norm(key, key_norm, norm_eps)
    cos, sin = rope_cos[input_pos], rope_sin[input_pos]
    query, key = apply_rope(query, cos, sin, rotary_dim), apply_rope(key, cos, sin, rotary_dim)
    key_cache[:, input_pos] = key
    value_cache[:, input_pos] = value
    heads, kv_heads = query.shape[2], key_cache.shape[2]
    groups = heads // kv_heads
    keys = key_cache[0].repeat_interleave(groups, dim=1).transpose(0, 1)  # [heads, S, D]
    values = value_cache[0].repeat_interleave(groups, dim=1).transpose(0, 1)
    queries = query[0].transpose(0, 1)  # [heads, T, D]
    scores = (queries @ keys.transpose(1, 2)) * scale
    positions = torch.arange(key_cache.shape[1], device=query.device)
    visible = positions.unsqueeze(0) <= input_pos.unsqueeze(1)  # [T, S]
    if sliding_window > 0:
        visible = visible & (positions.unsqueeze(0) > input_pos.unsqueeze(1) - sliding_window)
    scores = scores.masked_fill(~visible, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ values  # [heads, T, D]
    out = out.transpose(0, 1).unsqueeze(0).contiguous()
    (residual,) = _with_lora(
        (residual,), out.view(1, out.shape[1], -1), adapter_scales, lora, lora_sites, sites=(3,)
    )
    return out, residual.clone()


def _reference_out(query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
                   hidden, residual, adapter_scales, lora, lora_sites, query_norm, key_norm,
                   norm_eps, rotary_dim, sliding_window, scale, *, out, residual_out):
    result, updated = _reference(query, key, value, key_cache, value_cache, input_pos, rope_cos,
                                 rope_sin, hidden, residual, adapter_scales, lora, lora_sites,
                                 query_norm, key_norm, norm_eps, rotary_dim, sliding_window, scale)
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
                     hidden, residual, adapter_scales, lora, lora_sites, query_norm=None,
                     key_norm=None, norm_eps=1e-6, rotary_dim=None, sliding_window=0, scale=None):
    """-> (attention output [1, T, heads, head_dim], residual + o_proj's LoRA update).

    Defaults are the Llama layer: full RoPE, no q/k norm, no window, 1/sqrt(head_dim)."""
    head_dim = query.shape[-1]
    return torch.ops.etlora.cached_attention(
        query, key, value, key_cache, value_cache, input_pos, rope_cos, rope_sin,
        hidden, residual, adapter_scales, lora, lora_sites, query_norm, key_norm, float(norm_eps),
        head_dim if rotary_dim is None else int(rotary_dim), int(sliding_window),
        float(head_dim**-0.5 if scale is None else scale),
    )
