"""Adapter .ptd files: one LoRA adapter, padded to the program's rank, in ExecuTorch's FlatTensor.

`export` and `add-adapter` both write through `write_adapter_ptd`, which needs no torch.export: an
adapter file depends only on the adapter, the program's sites and rank, and the foundation's
fingerprint. Layout and keys: docs/bundle-format.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
from executorch.exir.tensor_layout import TensorLayout
from executorch.extension.flat_tensor.serialize.serialize import FlatTensorConfig, FlatTensorSerializer

from .errors import AdapterError, BundleError
from .files import write_atomically

ADAPTER_FORMAT_VERSION = "1"
FORMAT_VERSION_KEY = "etlora.format_version"
FINGERPRINT_KEY = "etlora.foundation_fingerprint"
SCALING_KEY = "etlora.scaling"
# Every tensor starts on its own page (the segment too, so file offsets are page-aligned): the
# runtime maps each tensor separately, rounded out to whole pages, and a page shared by two tensors
# would be mapped, and counted in RSS, twice. Adapter A/B sizes are mostly page multiples already.
PAGE_ALIGNMENT = 4096
TENSOR_ALIGNMENT = PAGE_ALIGNMENT


class AdapterDtype(Enum):
    """How an adapter file stores its tensors. The program always computes LoRA in float32: the
    runtime widens float16 files once at load (exact), so fp16 halves the file, not the memory."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {AdapterDtype.FP32: torch.float32, AdapterDtype.FP16: torch.float16}[self]

    @staticmethod
    def parse(text: str) -> "AdapterDtype":
        try:
            return AdapterDtype(text)
        except ValueError:
            raise AdapterError(
                f"--adapter-dtype: expected one of {[d.value for d in AdapterDtype]}, received {text!r}"
            ) from None


@dataclass(frozen=True)
class ProgramSlots:
    """What a program accepts from an adapter: its sites, their (in, out) sizes and the rank."""

    sites: tuple[str, ...]
    site_dims: tuple[tuple[int, int], ...]
    max_rank: int
    foundation_fingerprint: str

    def dims(self, site: str) -> tuple[int, int]:
        return self.site_dims[self.sites.index(site)]


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
        tensors[f"{site}.lora_a"] = padded_a.to(dtype.torch_dtype)
        tensors[f"{site}.lora_b"] = padded_b.to(dtype.torch_dtype)
    return tensors


def adapter_ptd_bytes(adapter, slots: ProgramSlots, dtype: AdapterDtype = AdapterDtype.FP32) -> bytes:
    """Serialize one adapter; the same adapter, program and dtype always give the same bytes."""
    entries = padded_adapter_tensors(adapter, slots, dtype)
    entries[FORMAT_VERSION_KEY] = _text_tensor(ADAPTER_FORMAT_VERSION)
    entries[FINGERPRINT_KEY] = _text_tensor(slots.foundation_fingerprint)
    entries[SCALING_KEY] = torch.tensor([adapter.scaling], dtype=torch.float32)
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


@dataclass(frozen=True)
class AdapterFileContents:
    """What an adapter .ptd holds, read back for inspection and checks."""

    format_version: str
    foundation_fingerprint: str
    scaling: float
    tensors: dict[str, np.ndarray]


def read_adapter_ptd(path: Path) -> AdapterFileContents:
    """Parse an adapter file, naming the file and the key on any problem."""
    from executorch.exir.scalar_type import ScalarType

    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise BundleError(f"{path}: adapter file not readable ({error.strerror})") from None
    if len(raw) < 8 or raw[4:8] != b"FT01":
        raise BundleError(f"{path}: expected an ExecuTorch FlatTensor file (magic FT01), received other bytes")
    try:
        payload = FlatTensorSerializer().deserialize(raw)
    except Exception as error:  # truncated or corrupt flatbuffer
        raise BundleError(f"{path}: corrupt or truncated .ptd ({error})") from None
    dtypes = {ScalarType.FLOAT: np.float32, ScalarType.HALF: np.float16, ScalarType.BYTE: np.uint8}
    arrays: dict[str, np.ndarray] = {}
    for key, entry in payload.named_data.items():
        layout = entry.tensor_layout
        if layout is None or ScalarType(layout.scalar_type) not in dtypes:
            raise BundleError(f"{path}: entry {key} is not a float32, float16 or uint8 tensor")
        buffer = payload.buffers[entry.buffer_index]
        dtype = dtypes[ScalarType(layout.scalar_type)]
        count = int(np.prod(layout.sizes)) if layout.sizes else 1
        if len(buffer) < count * np.dtype(dtype).itemsize:
            raise BundleError(f"{path}: entry {key} is truncated")
        arrays[key] = np.frombuffer(bytes(buffer), dtype=dtype, count=count).reshape(layout.sizes)
    for key in (FORMAT_VERSION_KEY, FINGERPRINT_KEY, SCALING_KEY):
        if key not in arrays:
            raise BundleError(f"{path}: expected metadata entry {key}, not found (hint: not an etlora adapter file?)")
    version = arrays.pop(FORMAT_VERSION_KEY).tobytes().decode()
    if version != ADAPTER_FORMAT_VERSION:
        raise BundleError(
            f"{path}: adapter format version {version!r}, this etlora reads {ADAPTER_FORMAT_VERSION!r}"
        )
    return AdapterFileContents(
        format_version=version,
        foundation_fingerprint=arrays.pop(FINGERPRINT_KEY).tobytes().decode(),
        scaling=float(arrays.pop(SCALING_KEY)[0]),
        tensors=arrays,
    )
