"""Writing adapter .ptd files: one LoRA adapter, padded to the program's rank, in ExecuTorch's FlatTensor.

The format (keys, metadata, dtypes) and its torch-free reader live in etlora.format.adapter_format.
`export` and `add-adapter` both write through `write_adapter_ptd`, which needs no torch.export: an
adapter file depends only on the adapter, the program's sites and rank, and the foundation's
fingerprint. Layout and keys: docs/bundle-format.md.
"""

from __future__ import annotations

from pathlib import Path

import torch
from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
from executorch.exir.tensor_layout import TensorLayout
from executorch.extension.flat_tensor.serialize.serialize import FlatTensorConfig, FlatTensorSerializer

from etlora.format.adapter_format import (
    ADAPTER_FORMAT_VERSION,
    ALORA_TOKENS_KEY,
    FINGERPRINT_KEY,
    FORMAT_VERSION_KEY,
    SCALING_KEY,
    TENSOR_ALIGNMENT,
    PAGE_ALIGNMENT,
    AdapterDtype,
    ProgramSlots,
)
from etlora.format.errors import AdapterError
from etlora.format.files import write_atomically

_TORCH_DTYPES = {AdapterDtype.FP32: torch.float32, AdapterDtype.FP16: torch.float16}


def _text_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)


def padded_adapter_tensors(
    adapter, slots: ProgramSlots, dtype: AdapterDtype = AdapterDtype.FP32
) -> dict[str, torch.Tensor]:
    """The adapter's tensors as the program consumes them: transposed, zero-padded to max_rank."""
    if adapter.rank > slots.max_rank:
        raise AdapterError(
            f"adapter {adapter.name!r} ({adapter.source}): rank {adapter.rank} is above the "
            f"program's max rank {slots.max_rank} (hint: re-export with --max-rank {adapter.rank})"
        )
    missing = [site for site in adapter.sites if site not in slots.sites]
    if missing:
        raise AdapterError(
            f"adapter {adapter.name!r} ({adapter.source}) targets {missing[0]}, which the program "
            f"has no slot for ({len(missing)} such sites; program targets "
            f"{sorted({s.rsplit('.', 1)[1] for s in slots.sites})}) "
            "(hint: re-export with --target-modules covering it, or all-linear)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for site in adapter.sites:
        lora_a, lora_b = adapter.tensors[site]
        in_features, out_features = slots.dims(site)
        padded_a = torch.zeros(1, in_features, slots.max_rank)
        padded_a[0, :, : adapter.rank] = lora_a.T
        padded_b = torch.zeros(1, slots.max_rank, out_features)
        padded_b[0, : adapter.rank, :] = lora_b.T
        tensors[f"{site}.lora_a"] = padded_a.to(_TORCH_DTYPES[dtype])
        tensors[f"{site}.lora_b"] = padded_b.to(_TORCH_DTYPES[dtype])
    return tensors


def adapter_ptd_bytes(adapter, slots: ProgramSlots, dtype: AdapterDtype = AdapterDtype.FP32) -> bytes:
    """Serialize one adapter; the same adapter, program and dtype always give the same bytes."""
    entries = padded_adapter_tensors(adapter, slots, dtype)
    entries[FORMAT_VERSION_KEY] = _text_tensor(ADAPTER_FORMAT_VERSION)
    entries[FINGERPRINT_KEY] = _text_tensor(slots.foundation_fingerprint)
    entries[SCALING_KEY] = torch.tensor([adapter.scaling], dtype=torch.float32)
    tokens = getattr(adapter, "alora_invocation_tokens", None)
    if tokens is not None:  # activated LoRA only: an ordinary adapter's file has no such key
        entries[ALORA_TOKENS_KEY] = torch.tensor(list(tokens), dtype=torch.int64)
    buffers = []
    named_data = {}
    for key in sorted(entries):
        tensor = entries[key].contiguous()
        named_data[key] = DataEntry(
            buffer_index=len(buffers),
            alignment=TENSOR_ALIGNMENT,
            tensor_layout=TensorLayout.from_tensor(tensor),
        )
        buffers.append(tensor.numpy().tobytes())
    serializer = FlatTensorSerializer(FlatTensorConfig(segment_alignment=PAGE_ALIGNMENT))
    return bytes(serializer.serialize(DataPayload(buffers=buffers, named_data=named_data)))


def write_adapter_ptd(
    adapter, slots: ProgramSlots, path: Path, dtype: AdapterDtype = AdapterDtype.FP32
) -> int:
    """Write atomically; returns the size in bytes."""
    data = adapter_ptd_bytes(adapter, slots, dtype)
    write_atomically(path, data)
    return len(data)
