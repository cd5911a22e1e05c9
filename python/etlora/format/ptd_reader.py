"""A torch-free reader of ExecuTorch FlatTensor (.ptd) files, bounds before trust.

The same checks as runtime_cpp/src/format/flat_tensor_check.cpp, in the same order: the header regions,
then every table, vector and string of the flatbuffer against the bytes that hold it, then each
entry's segment and byte count. `etlora inspect` and the report read adapter files with it, so
they need neither torch nor ExecuTorch's exir (whose serializer trusts the file's offsets).
Schema: executorch/extension/flat_tensor/serialize/flat_tensor.fbs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

HEADER_OFFSET = 8
HEADER_MIN_LENGTH = 40
MAX_DIMS = 16
MAX_ENTRIES = 1 << 20

# executorch_flatbuffer.ScalarType -> numpy dtype, for the types a .ptd etlora reads may hold.
SCALAR_TYPES = {
    0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
    7: np.float64, 11: np.bool_,
}


class PtdError(ValueError):
    """A .ptd file that is not well formed; the message says which part and the sizes."""


@dataclass(frozen=True)
class PtdEntry:
    key: str
    dtype: np.dtype
    sizes: tuple[int, ...]
    offset: int  # of its first byte in the file
    nbytes: int

    def array(self, data: bytes | memoryview) -> np.ndarray:
        count = int(np.prod(self.sizes)) if self.sizes else 1
        return np.frombuffer(data, dtype=self.dtype, count=count, offset=self.offset).reshape(self.sizes)


class _Walker:
    def __init__(self, data: bytes, size: int):
        self.data, self.size = data, size

    def fits(self, at: int, length: int) -> bool:
        return 0 <= at and 0 <= length and at + length <= self.size

    def unpack(self, fmt: str, at: int, what: str):
        if not self.fits(at, struct.calcsize(fmt)):
            raise PtdError(f"{what}: read at {at} is outside the flatbuffer")
        return struct.unpack_from(fmt, self.data, at)[0]

    def table(self, at: int, what: str) -> "_Table":
        vtable = at - self.unpack("<i", at, what)
        vtable_size = self.unpack("<H", vtable, f"{what} vtable")
        table_size = self.unpack("<H", vtable + 2, f"{what} vtable")
        if vtable_size < 4 or vtable_size % 2 or not self.fits(vtable, vtable_size) or table_size < 4 \
                or not self.fits(at, table_size):
            raise PtdError(f"{what}: vtable or table size out of bounds")
        # Every declared field inside its table, read or not (ExecuTorch reads FlatTensor.version).
        for slot in range(4, vtable_size - 1, 2):
            offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
            if offset != 0 and (offset < 4 or offset >= table_size):
                raise PtdError(f"{what}: field {(slot - 4) // 2} at offset {offset} lies outside its "
                               f"table of {table_size} bytes")
        return _Table(self, at, vtable, vtable_size, table_size, what)

    def follow(self, at: int, what: str) -> int:
        target = at + self.unpack("<I", at, what)
        if not self.fits(target, 4):
            raise PtdError(f"{what}: points outside the flatbuffer")
        return target

    def vector(self, at: int, element: int, max_count: int, what: str) -> tuple[int, int]:
        start = self.follow(at, what)
        count = self.unpack("<I", start, what)
        if count > max_count:
            raise PtdError(f"{what}: {count} entries, more than {max_count}")
        if not self.fits(start + 4, count * element):
            raise PtdError(f"{what}: {count} entries run past the flatbuffer")
        return start + 4, count

    def string(self, at: int, what: str) -> str:
        first, length = self.vector(at, 1, 1 << 16, what)
        if not self.fits(first, length + 1) or self.data[first + length] != 0:
            raise PtdError(f"{what}: string of {length} bytes is not NUL-terminated in bounds")
        raw = bytes(self.data[first:first + length])
        if not all(0x20 <= byte < 0x7F for byte in raw):
            raise PtdError(f"{what}: key {raw!r} is not printable ASCII")
        return raw.decode("ascii")


class _Table:
    def __init__(self, walker: _Walker, at: int, vtable: int, vtable_size: int, table_size: int, what: str):
        self.walker, self.at, self.vtable = walker, at, vtable
        self.vtable_size, self.table_size, self.what = vtable_size, table_size, what

    def field(self, index: int, width: int) -> int:
        """Offset of field `index` in the file, 0 when absent."""
        slot = 4 + 2 * index
        if slot + 2 > self.vtable_size:
            return 0
        offset = struct.unpack_from("<H", self.walker.data, self.vtable + slot)[0]
        if offset == 0:
            return 0
        if offset + width > self.table_size:
            raise PtdError(f"{self.what}: field {index} runs past its table")
        return self.at + offset


def read_ptd(data: bytes | memoryview, name: str = ".ptd") -> dict[str, PtdEntry]:
    """The file's entries by key, after checking every offset; PtdError names `name` and the part."""
    size = len(data)

    def refuse(why: str) -> PtdError:
        return PtdError(f"{name}: not a valid FlatTensor (.ptd) file: {why} (file of {size} bytes); "
                        "hint: truncated or damaged, re-export it")

    if size < HEADER_OFFSET + HEADER_MIN_LENGTH or bytes(data[4:8]) != b"FT01":
        raise refuse("expected the identifier FT01 at byte 4 and a 40-byte header")
    if bytes(data[8:12]) != b"FH01":
        raise refuse("expected the header magic FH01 at byte 8")
    length, fb_offset, fb_size, segment_base, segment_bytes = struct.unpack_from("<IQQQQ", data, 12)
    if length < HEADER_MIN_LENGTH or fb_offset > size or fb_size > size - fb_offset or segment_base > size \
            or segment_bytes > size - segment_base:
        raise refuse(f"header regions (flatbuffer {fb_offset}+{fb_size}, segments {segment_base}+{segment_bytes}) "
                     "do not fit the file")
    walker = _Walker(data, fb_offset + fb_size)
    try:
        root = walker.table(walker.follow(0, "root"), "FlatTensor")
        root.field(0, 4)  # version: ExecuTorch reads it, so it must fit its table
        if not root.field(1, 4) or not root.field(2, 4):  # ExecuTorch's reader needs both
            raise PtdError("FlatTensor has no segments or no named_data")
        segments = []
        if at := root.field(1, 4):
            first, count = walker.vector(at, 4, MAX_ENTRIES, "segments")
            for i in range(count):
                what = f"segments[{i}]"
                table = walker.table(walker.follow(first + 4 * i, what), what)
                offset_at, size_at = table.field(0, 8), table.field(1, 8)
                offset = walker.unpack("<Q", offset_at, what) if offset_at else 0
                length = walker.unpack("<Q", size_at, what) if size_at else 0
                if offset > segment_bytes or length > segment_bytes - offset:
                    raise PtdError(f"{what} ({offset}+{length}) lies outside the {segment_bytes} bytes of segment data")
                segments.append((offset, length))
        entries: dict[str, PtdEntry] = {}
        if at := root.field(2, 4):
            first, count = walker.vector(at, 4, MAX_ENTRIES, "named_data")
            for i in range(count):
                what = f"named_data[{i}]"
                table = walker.table(walker.follow(first + 4 * i, what), what)
                key_at, index_at, layout_at = table.field(0, 4), table.field(1, 4), table.field(2, 4)
                if not key_at or not layout_at:
                    raise PtdError(f"{what}: key or tensor layout missing")
                segment_index = walker.unpack("<I", index_at, what) if index_at else 0
                key = walker.string(key_at, f"{what}.key")
                what = f"entry {key!r}"
                if segment_index >= len(segments):
                    raise PtdError(f"{what}: segment {segment_index} of {len(segments)}")
                layout = walker.table(walker.follow(layout_at, what), what)
                type_at, sizes_at, order_at = layout.field(0, 1), layout.field(1, 4), layout.field(2, 4)
                if not sizes_at or not order_at:
                    raise PtdError(f"{what}: tensor layout without sizes or dim_order")
                scalar_type = walker.unpack("<b", type_at, what) if type_at else 0
                if scalar_type not in SCALAR_TYPES:
                    raise PtdError(f"{what}: scalar type {scalar_type} is not one etlora reads")
                sizes: list[int] = []
                if sizes_at:
                    sizes_first, dims = walker.vector(sizes_at, 4, MAX_DIMS, f"{what} sizes")
                    sizes = list(struct.unpack_from(f"<{dims}i", data, sizes_first))
                    if any(extent < 0 for extent in sizes):
                        raise PtdError(f"{what}: negative size in {sizes}")
                if order_at:
                    order_first, order_count = walker.vector(order_at, 1, MAX_DIMS, f"{what} dim_order")
                    if order_count != len(sizes) or any(data[order_first + d] >= len(sizes) for d in range(order_count)):
                        raise PtdError(f"{what}: dim_order does not match its {len(sizes)} sizes")
                dtype = np.dtype(SCALAR_TYPES[scalar_type])
                needed = int(np.prod(sizes, dtype=object)) * dtype.itemsize if sizes else dtype.itemsize
                segment_offset, segment_length = segments[segment_index]
                if needed > segment_length:
                    raise PtdError(f"{what}: needs {needed} bytes, its segment holds {segment_length}")
                entries[key] = PtdEntry(key, dtype, tuple(sizes), segment_base + segment_offset, needed)
        return entries
    except PtdError as error:
        raise refuse(str(error)) from None
