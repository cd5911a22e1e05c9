"""Graph preparation and lowering: foundation + program shape -> model.pte bytes + foundation.ptd bytes.

One path for every backend: the backend is a choice of partitioners, nothing else is copied.
Foundation constants are tagged by their module path in the model (the state-dict name), never by
a substring of a node name; a constant whose path is not a foundation path stops the export.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch.export import Dim, export

from .adapter_file import ProgramSlots
from .errors import EtloraError
from .foundation import Foundation
from .model import Attention, LlamaForExport
from .quantization import FoundationQuantization, foundation_path

FORMAT_VERSION = 2  # 2: KV cache [1, S, kv_heads, head_dim] updated by etlora::cached_attention
FOUNDATION_TAG = "foundation"
# Buffers computed from the foundation's config rather than loaded from its checkpoint.
DERIVED_CONSTANTS = ("rope_cos", "rope_sin")


class Backend(enum.Enum):
    XNNPACK = "xnnpack"


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
class LoweredProgram:
    program_bytes: bytes
    foundation_bytes: bytes
    quantized_modules: tuple[str, ...] = ()  # module paths whose weights foundation.ptd holds as integers


def build_model(foundation: Foundation, spec: ProgramSpec) -> LlamaForExport:
    """The export model with the foundation's weights loaded (strictly: every name must match),
    not yet quantized (`spec.quantization.apply`)."""
    model = LlamaForExport(
        foundation.shape,
        foundation.inv_freq,
        foundation.rope_attention_scaling,
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
            f"{foundation.source}: checkpoint does not match a Llama of this config: "
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


def _partitioners(backend: Backend) -> list:
    if backend is Backend.XNNPACK:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    raise EtloraError(f"backend {backend.value!r} is not available in this build")


def _constant_methods(foundation: Foundation, spec: ProgramSpec) -> dict:
    slots = spec.slots(foundation)
    return {
        "etlora_format_version": FORMAT_VERSION,
        "etlora_foundation_fingerprint": foundation.fingerprint,
        # The foundation as stored (fp32 or quantized): names the packed weight file.
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
    """torch.export -> tag foundation constants -> lower -> serialize program and foundation."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

    model = build_model(foundation, spec)
    quantized_modules = spec.quantization.apply(model)
    inputs = example_inputs(foundation, spec)
    tokens = Dim("tokens", min=1, max=spec.max_seq_len)
    adapter_shapes = (None,) * (len(inputs) - 3)
    # torch.export drops an empty *adapter_tensors from the structure (foundation-only programs).
    dynamic_shapes = ({1: tokens}, {0: tokens}, None) + ((adapter_shapes,) if adapter_shapes else ())
    foundation_paths = _foundation_paths(foundation)
    kv_cache_paths = {
        f"{path}.{name}"
        for path, module in model.named_modules()
        if isinstance(module, Attention)
        for name in ("k_cache", "v_cache")
    }

    def tag_by_path(path: str) -> str | None:
        if path in kv_cache_paths:
            return None  # method state, planned in the program's memory
        if foundation_path(path) not in foundation_paths:
            raise EtloraError(
                f"constant {path} is not a foundation weight; refusing to place it in foundation.ptd"
            )
        return FOUNDATION_TAG

    with torch.no_grad():
        traced = export(model, inputs, dynamic_shapes=dynamic_shapes, strict=False)
        unlifted = traced.module()
        delegate_external_constants_pass_unlifted(unlifted, lambda node: tag_by_path(node.target))
        # The unlifted module takes its inputs flat, not as (tokens, pos, scales, *adapters).
        flat_shapes = ({1: tokens}, {0: tokens}, None, *adapter_shapes)
        traced = export(unlifted, inputs, dynamic_shapes=flat_shapes, strict=False)

    edge = to_edge_transform_and_lower(
        traced,
        partitioner=_partitioners(spec.backend),
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods=_constant_methods(foundation, spec),
    )
    signature = edge.exported_program().graph_signature
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
            # Inputs are not memory-planned: the runtime points them at mapped adapter files.
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            external_constants=tag_placeholder,
        )
    )
    program_bytes = bytes(executorch_program.buffer)  # serializes the .pte and the data files
    # The manager has no public accessor for the data files' bytes, only write_tensor_data_to_file.
    external = {name: bytes(cord) for name, cord in (executorch_program._tensor_data or {}).items()}
    if set(external) != {FOUNDATION_TAG}:
        raise EtloraError(f"expected one external data file '{FOUNDATION_TAG}', lowering produced {sorted(external)}")
    return LoweredProgram(
        program_bytes=program_bytes,
        foundation_bytes=external[FOUNDATION_TAG],
        quantized_modules=tuple(quantized_modules),
    )
