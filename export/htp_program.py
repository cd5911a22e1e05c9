"""Lowering the HTP-shaped graph (htp_model.py): static shapes, standard ops, foundation outside.

No QNN SDK exists here, so XNNPACK stands in for the HTP backend: what this proves is that the
graph a QNN partitioner would see exports with every shape fixed, with only ATen ops (no
`etlora::` op, no in-place or index_put cache update), and that the lowered program computes
the same logits as the eager model. The backend is spec.backend's partitioners (program.py);
foundation constants are tagged by module path into foundation.ptd as for the CPU program.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.export import ExportedProgram, export

from .errors import EtloraError
from .foundation import Foundation
from .htp_model import HtpLlama
from .program import (
    FOUNDATION_TAG,
    LoweredProgram,
    ProgramSpec,
    _constant_methods,
    _foundation_paths,
    _partitioners,
    build_model,
)
from .quantization import foundation_path

HTP_FORMAT_VERSION = 1  # 1: KV cache as inputs [L, kv_heads, C, D], new rows as outputs
DEFAULT_CHUNK_LEN = 32


@dataclass(frozen=True)
class HtpShape:
    """What fixes an HTP program beyond ProgramSpec: tokens per call (T) and cache rows (C)."""

    chunk_len: int = DEFAULT_CHUNK_LEN
    cache_len: int | None = None  # None: spec.max_seq_len

    def resolve(self, spec: ProgramSpec) -> tuple[int, int]:
        return self.chunk_len, self.cache_len if self.cache_len is not None else spec.max_seq_len


def build_htp_model(foundation: Foundation, spec: ProgramSpec, htp: HtpShape = HtpShape()) -> HtpLlama:
    """HtpLlama with the foundation's weights, loaded through program.build_model (its strict
    name check, tied embeddings) so that both programs hold the same state dict by construction."""
    chunk_len, cache_len = htp.resolve(spec)
    model = HtpLlama(
        foundation.shape, foundation.inv_freq, foundation.rope_attention_scaling,
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
    delegates: int  # delegate calls (each a partition the backend runs as one piece)
    delegated_ops: int  # call nodes inside them
    undelegated_ops: tuple[str, ...]  # ops left to ExecuTorch's portable kernels


def _tagger(foundation: Foundation):
    """Module path -> FOUNDATION_TAG. Unlike lower_program there is no KV cache among the
    constants (it is an input here), so every constant must be a foundation weight or table."""
    paths = _foundation_paths(foundation)

    def tag_by_path(path: str) -> str:
        if foundation_path(path) not in paths:
            raise EtloraError(f"constant {path} is not a foundation weight; refusing to place it in foundation.ptd")
        return FOUNDATION_TAG

    return tag_by_path


def lower_htp_shaped(
    foundation: Foundation, spec: ProgramSpec, htp: HtpShape = HtpShape()
) -> LoweredHtpProgram:
    """torch.export HtpLlama with static shapes, check it, tag the foundation, lower, serialize.

    With cache_len == spec.max_seq_len the foundation data is byte-identical to lower_program's
    foundation.ptd (same weights, same RoPE tables, same keys), so one file serves both programs.

    TODO(program.py): the tagging and the edge -> executorch steps below copy lower_program,
    which inlines them; once program.py offers them as `tag_by_path(foundation, state_paths)` and
    `lower_exported(traced, spec, constant_methods, tag_by_path) -> LoweredProgram`, call those.
    """
    from executorch.exir import (
        EdgeCompileConfig,
        ExecutorchBackendConfig,
        to_edge_transform_and_lower,
    )
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.external_constants_pass import (
        delegate_external_constants_pass_unlifted,
    )

    if spec.quantization.quantized:
        raise EtloraError("the HTP-shaped program is float32 only (QNN quantizes with its own quantizer)")
    model = build_htp_model(foundation, spec, htp)
    slots = spec.slots(foundation)
    inputs = model.example_inputs(slots.site_dims, spec.max_rank)
    tag_by_path = _tagger(foundation)
    with torch.no_grad():
        traced = export(model, inputs, strict=False)  # no dynamic_shapes: every dim is static
        aten_ops = check_standard_graph(traced)
        unlifted = traced.module()
        delegate_external_constants_pass_unlifted(unlifted, lambda node: tag_by_path(node.target))
        traced = export(unlifted, inputs, strict=False)
        check_standard_graph(traced)

    chunk_len, cache_len = htp.resolve(spec)
    edge = to_edge_transform_and_lower(
        traced,
        partitioner=_partitioners(spec.backend),
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods={
            **_constant_methods(foundation, spec),
            "etlora_format_version": HTP_FORMAT_VERSION,
            "etlora_program_kind": "htp",
            "etlora_chunk_len": chunk_len,
            "etlora_cache_len": cache_len,
        },
    )
    edge_program = edge.exported_program()
    delegates = delegated = 0
    undelegated: set[str] = set()
    for node in edge_program.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if "executorch_call_delegate" in str(node.target):
            delegates += 1
            delegate = getattr(edge_program.graph_module, node.args[0].target)
            delegated += sum(1 for n in delegate.original_module.graph.nodes if n.op == "call_function")
        else:
            undelegated.add(getattr(node.target, "__name__", str(node.target)))
    signature = edge_program.graph_signature
    placeholder_paths = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }

    def tag_placeholder(node: torch.fx.Node) -> str | None:
        path = placeholder_paths.get(node.name)
        return tag_by_path(path) if path is not None else None

    executorch_program = edge.to_executorch(
        ExecutorchBackendConfig(
            extract_delegate_segments=True,
            # Inputs (cache, adapters) are not memory-planned: the host owns and points at them.
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            external_constants=tag_placeholder,
        )
    )
    program_bytes = bytes(executorch_program.buffer)
    external = {name: bytes(cord) for name, cord in (executorch_program._tensor_data or {}).items()}
    if set(external) != {FOUNDATION_TAG}:
        raise EtloraError(f"expected one external data file '{FOUNDATION_TAG}', lowering produced {sorted(external)}")
    return LoweredHtpProgram(
        lowered=LoweredProgram(program_bytes=program_bytes, foundation_bytes=external[FOUNDATION_TAG]),
        aten_ops=tuple(aten_ops),
        delegates=delegates,
        delegated_ops=delegated,
        undelegated_ops=tuple(sorted(undelegated)),
    )
