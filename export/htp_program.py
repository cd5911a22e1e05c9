"""Lowering the HTP-shaped graph (htp_model.py): static shapes, standard ops, foundation outside.

The same function lowers for ExecuTorch's QNN backend (qnn_lowering.py, which needs a QNN SDK)
and, where no SDK exists, for XNNPACK as a stand-in: what the stand-in proves is that the graph
a QNN partitioner would see exports with every shape fixed, with only ATen ops (no `etlora::`
op, no in-place or index_put cache update), and that the lowered program computes the same
logits as the eager model. Lowering itself is program.lower_exported, shared with the CPU
program; for a backend that reads foundation.ptd, foundation constants are tagged by module
path as for the CPU program.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.export import ExportedProgram, export

from etlora.format.errors import EtloraError

from .foundation import Foundation, foundation_rope_tables
from .htp_model import HtpDecoder
from .program import (
    LoweredProgram,
    Lowering,
    ProgramSpec,
    _constant_methods,
    build_model,
    default_lowering,
    foundation_tagger,
    lower_exported,
    with_external_constants,
)

# 1: KV cache as inputs [L, kv_heads, C, D], new rows as outputs; 2: etlora_sliding_window, and a
# sliding_mask input after adapter_scales when it is > 0
HTP_FORMAT_VERSION = 2
DEFAULT_CHUNK_LEN = 32


@dataclass(frozen=True)
class HtpShape:
    """What fixes an HTP program beyond ProgramSpec: tokens per call (T) and cache rows (C)."""

    chunk_len: int = DEFAULT_CHUNK_LEN
    cache_len: int | None = None  # None: spec.max_seq_len

    def resolve(self, spec: ProgramSpec) -> tuple[int, int]:
        return self.chunk_len, self.cache_len if self.cache_len is not None else spec.max_seq_len


def build_htp_model(foundation: Foundation, spec: ProgramSpec, htp: HtpShape = HtpShape()) -> HtpDecoder:
    """HtpDecoder with the foundation's weights, loaded through program.build_model (its strict
    name check, tied embeddings) so that both programs hold the same state dict by construction."""
    chunk_len, cache_len = htp.resolve(spec)
    model = HtpDecoder(
        foundation.shape, foundation_rope_tables(foundation, cache_len),
        chunk_len, cache_len, list(spec.sites), spec.adapter_slots,
    )
    # assign=True shares the tensors instead of copying a second foundation. Both models keep
    # their caches and RoPE tables out of the state dict, so strict matching holds.
    model.load_state_dict(build_model(foundation, spec).state_dict(), strict=True, assign=True)
    return model.eval()


def check_standard_graph(program: ExportedProgram) -> list[str]:
    """Raise unless the exported graph is HTP-shaped; returns the ATen ops it uses, sorted.

    HTP-shaped: every call is an ATen op (no `etlora::` or other custom op), none mutates (no
    in-place op, no index_put, no mutated buffer or input), and every shape is a plain int.
    """
    signature = program.graph_signature
    mutated = sorted({**signature.buffers_to_mutate, **signature.user_inputs_to_mutate}.values())
    dynamic: list[str] = []  # nodes whose value has a symbolic size
    custom: set[str] = set()  # calls that are not ATen ops
    mutating: set[str] = set()  # ATen ops that write their inputs
    ops: set[str] = set()
    for node in program.graph.nodes:
        value = node.meta.get("val")
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, torch.Tensor) and not all(isinstance(size, int) for size in item.shape):
                dynamic.append(f"{node.name} {list(item.shape)}")
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        target = node.target
        schema = getattr(target, "_schema", None)
        # torch.export's default IR keeps in-place ops and mutating custom ops as calls, so
        # mutation shows in the schema as well as (after functionalization) in the signature.
        name = schema.name.split("::")[-1] if schema is not None else ""
        if schema is not None and (schema.is_mutable or name.endswith("_") or name.startswith("index_put")):
            mutating.add(str(target))
        if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
            custom.add(str(target))
            continue
        ops.add(str(target))
    problems = [
        f"{label} {items[:4]}{' ...' if len(items) > 4 else ''}"
        for label, items in (
            ("non-ATen ops", sorted(custom)), ("mutating ops", sorted(mutating)),
            ("mutated state", mutated), ("symbolic dims", sorted(map(str, program.range_constraints))),
            ("dynamic shapes", dynamic),
        )
        if items
    ]
    if problems:
        raise EtloraError("graph is not HTP-shaped: " + "; ".join(problems))
    return sorted(ops)


@dataclass(frozen=True)
class LoweredHtpProgram:
    lowered: LoweredProgram
    aten_ops: tuple[str, ...]  # the exported graph's ops, before partitioning
    chunk_len: int
    cache_len: int
    # Foundation bytes the program carries itself (QNN context binaries hold their weights)
    # instead of reading foundation.ptd; 0 when it shares foundation.ptd.
    foundation_in_program_bytes: int

    @property
    def delegates(self) -> int:
        return self.lowered.delegation.delegates

    @property
    def delegated_ops(self) -> int:
        return self.lowered.delegation.delegated_ops

    @property
    def undelegated_ops(self) -> tuple[str, ...]:
        return self.lowered.delegation.undelegated_ops


def lower_htp_shaped(
    foundation: Foundation, spec: ProgramSpec, htp: HtpShape = HtpShape(), lowering: Lowering | None = None
) -> LoweredHtpProgram:
    """torch.export HtpDecoder with static shapes, check it, lower it (program.lower_exported).

    `lowering`: qnn_lowering.qnn_htp_lowering for the real HTP program; None lowers for
    spec.backend (XNNPACK: the stand-in that proves the graph here). A lowering that reads
    foundation.ptd gets the foundation tagged by module path; with cache_len == spec.max_seq_len
    its foundation data is byte-identical to lower_program's foundation.ptd (same weights, same
    RoPE tables, same keys), so one file serves both programs.
    """
    if spec.quantization.quantized:
        raise EtloraError(
            "the HTP-shaped program: expected a float foundation, received "
            f"{spec.quantization.scheme.value} (hint: QNN quantizes with its own quantizer; build it from the fp32 spec)"
        )
    lowering = lowering or default_lowering(spec.backend)
    model = build_htp_model(foundation, spec, htp)
    slots = spec.slots(foundation)
    inputs = model.example_inputs(slots.site_dims, spec.max_rank)
    # No KV cache among the constants (it is an input here): every constant is foundation data.
    tagger = foundation_tagger(foundation) if lowering.shares_foundation else None
    with torch.no_grad():
        traced = export(model, inputs, strict=False)  # no dynamic_shapes: every dim is static
        aten_ops = check_standard_graph(traced)
        if tagger is not None:
            traced = with_external_constants(traced, inputs, None, tagger)
            check_standard_graph(traced)

    chunk_len, cache_len = htp.resolve(spec)
    constant_methods = {
        **_constant_methods(foundation, spec),
        "etlora_format_version": HTP_FORMAT_VERSION,
        "etlora_program_kind": "htp",
        "etlora_chunk_len": chunk_len,
        "etlora_cache_len": cache_len,
        "etlora_sliding_window": model.sliding_window,
    }
    lowered = lower_exported(traced, lowering, constant_methods, tagger)
    delegation = lowered.delegation
    in_program = (0 if lowering.shares_foundation else delegation.payload_bytes) + delegation.embedded_constant_bytes
    return LoweredHtpProgram(
        lowered=lowered,
        aten_ops=tuple(aten_ops),
        chunk_len=chunk_len,
        cache_len=cache_len,
        foundation_in_program_bytes=in_program,
    )
