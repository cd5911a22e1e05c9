"""Per-session state predicted from model.pte: the memory ExecuTorch plans for one loaded `forward`.

Every Session owns one copy of the method's memory-planned buffers (`non_const_buffer_sizes`,
allocated and zero-filled when the method loads): the activations, sized for the largest prefill
the program accepts (`max_seq_len` tokens), and the KV cache, which is the program's mutable
buffers. The emitter writes a method's values in graph-placeholder order, so the planned tensors
before the method's first input are its buffers; the KV cache is all of them here
(2 x layers x kv_heads x max_seq_len x head_dim x 4 bytes, checked in tests/test_report.py).

Read with ExecuTorch's own deserializer, in the parent process (it imports torch, inside
read_planned_memory only; the measuring children never do). A module of its own because it is the
report's one reader of the program's internals; the record it returns is schema.PlannedMemory.
"""

from __future__ import annotations

import math
from pathlib import Path

from etlora.format.errors import BundleError
from etlora.report.schema import METHOD, PlannedMemory

# ExecuTorch ScalarType name -> bytes per element (the dtypes an etlora program plans).
_ELEMENT_BYTES = {
    "BYTE": 1, "CHAR": 1, "BOOL": 1, "SHORT": 2, "HALF": 2, "BFLOAT16": 2,
    "INT": 4, "FLOAT": 4, "LONG": 8, "DOUBLE": 8,
}


def _tensor_bytes(tensor) -> int:
    name = tensor.scalar_type.name
    if name not in _ELEMENT_BYTES:
        raise BundleError(f"planned tensor dtype: expected one of {sorted(_ELEMENT_BYTES)}, received {name}")
    return math.prod(tensor.sizes) * _ELEMENT_BYTES[name]


def read_planned_memory(program_path: str | Path, method: str = METHOD) -> PlannedMemory:
    from executorch.exir._serialize._program import deserialize_pte_binary

    program_path = Path(program_path)
    try:
        program = deserialize_pte_binary(program_path.read_bytes()).program
    except Exception as error:  # the deserializer raises whatever its flatbuffer parser raises
        raise BundleError(
            f"{program_path}: expected an ExecuTorch program, received bytes the deserializer refused "
            f"({type(error).__name__}: {error}); hint: a truncated or damaged model.pte"
        ) from None
    plans = {plan.name: plan for plan in program.execution_plan}
    if method not in plans:
        raise BundleError(f"{program_path}: expected a method {method!r}, received {sorted(plans)}")
    plan = plans[method]
    first_input = min(plan.inputs, default=len(plan.values))
    kv_bytes = kv_tensors = end = 0
    for index, value in enumerate(plan.values):
        tensor = value.val
        if type(tensor).__name__ != "Tensor" or tensor.allocation_info is None:
            continue
        info = tensor.allocation_info
        offset = info.memory_offset_low + (info.memory_offset_high << 32)
        size = _tensor_bytes(tensor)
        end = max(end, offset + size)
        if index < first_input:
            kv_bytes += size
            kv_tensors += 1
    return PlannedMemory(
        method=method,
        buffer_bytes=tuple(plan.non_const_buffer_sizes[1:]),
        kv_cache_bytes=kv_bytes,
        kv_cache_tensors=kv_tensors,
        planned_end_bytes=end,
    )


def kv_cache_bytes_from_shape(num_layers: int, num_kv_heads: int, head_dim: int, max_seq_len: int) -> int:
    """The KV cache the model allocates (export/model.py): K and V, float32, per layer."""
    return 2 * num_layers * num_kv_heads * max_seq_len * head_dim * 4
