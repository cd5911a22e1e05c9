"""Graph preparation and lowering: foundation + program shape -> model.pte bytes + foundation.ptd bytes.

One path for every backend (lower_exported): a backend contributes a Lowering (its partitioners,
its passes, whether it reads weights from foundation.ptd), nothing else is copied. The CPU
program (lower_program) and the HTP-shaped one (htp_program.py) both go through it.
Foundation constants are tagged by their module path in the model (the state-dict name), never by
a substring of a node name; a constant whose path is not a foundation path stops the export.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import ContextManager

import torch
from torch.export import Dim, ExportedProgram, export

from etlora.format.adapter_format import ProgramSlots
from etlora.format.backends import Backend
from etlora.format.errors import EtloraError

from .foundation import Foundation, foundation_rope_tables
from .model import ROPE_BUFFERS, Attention, DecoderForExport
from .quantization import FoundationQuantization, foundation_path

FORMAT_VERSION = 3  # 3: cached_attention takes the family features; 2: KV cache [1, S, kv_heads, head_dim]
FOUNDATION_TAG = "foundation"
# Buffers computed from the foundation's config rather than loaded from its checkpoint.
DERIVED_CONSTANTS = tuple(name for names in ROPE_BUFFERS.values() for name in names)


Tagger = Callable[[str], "str | None"]  # constant path -> external data file tag, or None


@dataclass(frozen=True)
class Lowering:
    """A backend's part in the one lowering path (lower_exported); everything else is shared."""

    backend: Backend
    partitioners: tuple
    # Weights read from foundation.ptd (XNNPACK's named data), or kept inside the backend's own
    # payload (a QNN context binary holds its weights), which then duplicates the foundation.
    shares_foundation: bool = True
    # Backend passes on the ATen program before edge lowering: exported -> (exported, transform passes).
    prepare: Callable[[ExportedProgram], tuple[ExportedProgram, list]] | None = None
    context: Callable[[], ContextManager] = nullcontext  # held while the backend compiles


@dataclass(frozen=True)
class ProgramSpec:
    """Everything that fixes the program, and so which adapters it can run."""

    sites: tuple[str, ...]
    target_modules: tuple[str, ...]
    max_rank: int
    adapter_slots: int
    max_seq_len: int
    backend: Backend
    quantization: FoundationQuantization = FoundationQuantization()

    def slots(self, foundation: Foundation) -> ProgramSlots:
        dims = tuple(foundation.shape.linear_dims(site.rsplit(".", 1)[1]) for site in self.sites)
        return ProgramSlots(self.sites, dims, self.max_rank, foundation.fingerprint)


@dataclass(frozen=True)
class Delegation:
    """What the backend took from the edge graph (counted before serialization)."""

    delegates: int = 0  # delegate calls (each a partition the backend runs as one piece)
    delegated_ops: int = 0  # call nodes inside them
    undelegated_ops: tuple[str, ...] = ()  # ops left to ExecuTorch's portable kernels
    payload_bytes: int = 0  # the backends' compiled payloads (a QNN context binary holds its weights)
    embedded_constant_bytes: int = 0  # weights stored in the program itself, not in foundation.ptd


@dataclass(frozen=True)
class LoweredProgram:
    program_bytes: bytes
    foundation_bytes: bytes  # b"" when the backend keeps every weight in the program
    quantized_modules: tuple[str, ...] = ()  # module paths whose weights foundation.ptd holds as integers
    delegation: Delegation = Delegation()


def build_model(foundation: Foundation, spec: ProgramSpec) -> DecoderForExport:
    """The export model with the foundation's weights loaded (strictly: every name must match),
    not yet quantized (`spec.quantization.apply`)."""
    model = DecoderForExport(
        foundation.shape,
        foundation_rope_tables(foundation, spec.max_seq_len),
        spec.max_seq_len,
        list(spec.sites),
        spec.adapter_slots,
    )
    state_dict = dict(foundation.state_dict)
    if foundation.shape.tie_word_embeddings:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise EtloraError(
            f"{foundation.source}: checkpoint does not match a {foundation.shape.family.value} of this config: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]} (hint: unsupported variant?)"
        )
    return model.eval()


def example_inputs(foundation: Foundation, spec: ProgramSpec, length: int = 4) -> tuple:
    """Inputs in the program's order (docs/bundle-format.md); adapter tensors are zeros."""
    slots = spec.slots(foundation)
    adapter_tensors = []
    for _ in range(spec.adapter_slots):
        for in_features, out_features in slots.site_dims:
            adapter_tensors.append(torch.zeros(1, in_features, spec.max_rank))
            adapter_tensors.append(torch.zeros(1, spec.max_rank, out_features))
    return (
        torch.zeros(1, length, dtype=torch.int64),
        torch.arange(length, dtype=torch.int64),
        torch.zeros(spec.adapter_slots),
        *adapter_tensors,
    )


def default_lowering(backend: Backend) -> Lowering:
    """The lowering a backend needs nothing else for; HTP needs a SoC and a QNN SDK
    (qnn_lowering.qnn_htp_lowering)."""
    if backend is Backend.XNNPACK:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return Lowering(backend, (XnnpackPartitioner(),))
    raise EtloraError(
        f"backend {backend.value!r}: expected a SoC and a usable QNN SDK (qnn_lowering.qnn_htp_lowering), "
        "received neither; hint: export with --backend htp --soc ..."
    )


def _constant_methods(foundation: Foundation, spec: ProgramSpec) -> dict:
    slots = spec.slots(foundation)
    return {
        "etlora_format_version": FORMAT_VERSION,
        "etlora_foundation_fingerprint": foundation.fingerprint,
        # The foundation as stored (fp32 or quantized): names the packed cache file.
        "etlora_foundation_weights_id": spec.quantization.weights_id(foundation.fingerprint),
        "etlora_sites": list(spec.sites),
        "etlora_site_shapes": [size for dims in slots.site_dims for size in dims],
        "etlora_max_rank": spec.max_rank,
        "etlora_adapter_slots": spec.adapter_slots,
        "etlora_max_seq_len": spec.max_seq_len,
        "etlora_vocab_size": foundation.shape.vocab_size,
    }


def _foundation_paths(foundation: Foundation) -> set[str]:
    return set(foundation.state_dict) | {"lm_head.weight"} | set(DERIVED_CONSTANTS)


def lower_program(foundation: Foundation, spec: ProgramSpec) -> LoweredProgram:
    """torch.export (token count dynamic) -> tag foundation constants -> lower_exported."""
    model = build_model(foundation, spec)
    quantized_modules = spec.quantization.apply(model)
    inputs = example_inputs(foundation, spec)
    tokens = Dim("tokens", min=1, max=spec.max_seq_len)
    adapter_shapes = (None,) * (len(inputs) - 3)
    # torch.export drops an empty *adapter_tensors from the structure (foundation-only programs).
    dynamic_shapes = ({1: tokens}, {0: tokens}, None) + ((adapter_shapes,) if adapter_shapes else ())
    kv_cache_paths = {
        f"{path}.{name}"
        for path, module in model.named_modules()
        if isinstance(module, Attention)
        for name in ("k_cache", "v_cache")
    }
    lowering = default_lowering(spec.backend)
    tagger = foundation_tagger(foundation, kv_cache_paths) if lowering.shares_foundation else None
    with torch.no_grad():
        traced = export(model, inputs, dynamic_shapes=dynamic_shapes, strict=False)
        if tagger is not None:
            # The unlifted module takes its inputs flat, not as (tokens, pos, scales, *adapters).
            traced = with_external_constants(traced, inputs, ({1: tokens}, {0: tokens}, None, *adapter_shapes), tagger)
    lowered = lower_exported(traced, lowering, _constant_methods(foundation, spec), tagger)
    return replace(lowered, quantized_modules=tuple(quantized_modules))


def foundation_tagger(foundation: Foundation, state_paths: set[str] = frozenset()) -> Tagger:
    """Constant path -> FOUNDATION_TAG (stored in foundation.ptd), or None for method state
    (`state_paths`: the CPU program's KV cache, planned in the program's memory).

    Tags by module path, never by a substring of a node name; any other constant stops the
    export, so nothing but foundation weights (and the tables derived from its config) can land
    in foundation.ptd.
    """
    foundation_paths = _foundation_paths(foundation)

    def tag_by_path(path: str) -> str | None:
        if path in state_paths:
            return None
        if foundation_path(path) not in foundation_paths:
            raise EtloraError(
                f"constant {path} is not a foundation weight; refusing to place it in foundation.ptd"
            )
        return FOUNDATION_TAG

    return tag_by_path


def with_external_constants(traced: ExportedProgram, inputs: tuple, flat_shapes, tagger: Tagger) -> ExportedProgram:
    """Marks the constants `tagger` tags as external data, then exports again (ExecuTorch's pass
    works on the unlifted module). `flat_shapes`: the dynamic shapes with the inputs flattened,
    or None for a static graph."""
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

    unlifted = traced.module()
    delegate_external_constants_pass_unlifted(unlifted, lambda node: tagger(node.target))
    return export(unlifted, inputs, dynamic_shapes=flat_shapes, strict=False)


def lower_exported(
    exported: ExportedProgram,
    lowering: Lowering,
    constant_methods: dict,
    tagger: Tagger | None,
) -> LoweredProgram:
    """The one lowering path: edge dialect + the backend's partitioners -> ExecuTorch program
    bytes, and the foundation.ptd bytes of the constants `tagger` tags (None: every constant
    stays in the program, as for a backend that keeps its weights in its own payload)."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    transform_passes = None
    if lowering.prepare is not None:
        exported, transform_passes = lowering.prepare(exported)
    with lowering.context():
        edge = to_edge_transform_and_lower(
            exported,
            transform_passes=transform_passes,
            partitioner=list(lowering.partitioners),
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=constant_methods,
        )
    edge_program = edge.exported_program()
    placeholder_paths = _placeholder_paths(edge_program)

    def tag_placeholder(node: torch.fx.Node) -> str | None:
        path = placeholder_paths.get(node.name)
        return tagger(path) if path is not None and tagger is not None else None

    executorch_program = edge.to_executorch(
        ExecutorchBackendConfig(
            extract_delegate_segments=True,
            # Inputs are not memory-planned: the runtime points them at mapped adapter files
            # (and, for the HTP program, at the KV cache it owns).
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            external_constants=tag_placeholder,
        )
    )
    program_bytes = bytes(executorch_program.buffer)  # serializes the .pte and the data files
    # The manager has no public accessor for the data files' bytes, only write_tensor_data_to_file.
    external = {name: bytes(cord) for name, cord in (executorch_program._tensor_data or {}).items()}
    expected = {FOUNDATION_TAG} if tagger is not None else set()
    if set(external) != expected:
        raise EtloraError(f"expected external data files {sorted(expected)}, lowering produced {sorted(external)}")
    return LoweredProgram(
        program_bytes=program_bytes,
        foundation_bytes=external.get(FOUNDATION_TAG, b""),
        delegation=summarize_delegation(edge_program, tagger),
    )


def summarize_delegation(edge_program: ExportedProgram, tagger: Tagger | None) -> Delegation:
    """What the partitioners took, and how many constant bytes the program holds itself."""
    delegates = delegated = payload = 0
    undelegated: set[str] = set()
    for node in edge_program.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if "executorch_call_delegate" in str(node.target):
            delegates += 1
            delegate = getattr(edge_program.graph_module, node.args[0].target)
            delegated += sum(1 for n in delegate.original_module.graph.nodes if n.op == "call_function")
            payload += len(delegate.processed_bytes)
        else:
            undelegated.add(getattr(node.target, "__name__", str(node.target)))
    # Constants still in the top-level graph (not consumed by a delegate) that stay in the program.
    paths = _placeholder_paths(edge_program)
    state = set(edge_program.graph_signature.buffers_to_mutate.values())
    tensors = {**edge_program.state_dict, **edge_program.constants}
    embedded = 0
    for node in edge_program.graph.nodes:
        path = paths.get(node.name) if node.op == "placeholder" else None
        tensor = tensors.get(path)
        # Lifted tensor constants are literals of the code (ExecuTorch never moves them out), not weights.
        if not isinstance(tensor, torch.Tensor) or path in state or "_lifted_tensor" in node.name:
            continue
        if tagger is None or tagger(path) is None:
            embedded += tensor.numel() * tensor.element_size()
    return Delegation(delegates, delegated, tuple(sorted(undelegated)), payload, embedded)


def _placeholder_paths(program: ExportedProgram) -> dict[str, str]:
    """Placeholder name -> module path of the parameter, buffer or constant it feeds."""
    signature = program.graph_signature
    return {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
