"""The adapter .ptd format: keys, metadata, dtypes, and a torch-free reader.

One adapter per file: `<site>.lora_a` / `<site>.lora_b` tensors (float32 or float16) plus the
metadata entries below. The C++ reader (runtime_cpp/src/format/adapter_file.cpp) applies the same rules in
the same order; docs/bundle-format.md states them. The writer is adapter_file.py (needs torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from .errors import AdapterError, BundleError
from .ptd_reader import PtdError, read_ptd

ADAPTER_FORMAT_VERSION = "1"
FORMAT_VERSION_KEY = "etlora.format_version"
FINGERPRINT_KEY = "etlora.foundation_fingerprint"
SCALING_KEY = "etlora.scaling"
METADATA_KEYS = (FORMAT_VERSION_KEY, FINGERPRINT_KEY, SCALING_KEY)  # required in every adapter file
# Optional, only in activated-LoRA (aLoRA) files: PEFT's alora_invocation_tokens, int64 [n]. The
# adapter applies from the start of the last occurrence of this sequence on, nowhere if it is absent.
# A reader that predates it refuses the key as unknown, so an old runtime never applies an aLoRA to
# every token (the format version stays "1").
ALORA_TOKENS_KEY = "etlora.alora_invocation_tokens"
MAX_ALORA_TOKENS = 64
ALORA_TOKEN_LIMIT = 2**31  # token ids are below it (the runtime keeps them as int32 where it likes)
TENSOR_SUFFIXES = (".lora_a", ".lora_b")
# Every tensor starts on its own page (the segment too, so file offsets are page-aligned): the
# runtime maps the file once and hands out pointers into it, so an adapter's RSS is the pages of
# the tensors a forward reads, and a tensor never shares a page with the header or another tensor
# (which also keeps every tensor aligned for the kernels' vector loads).
PAGE_ALIGNMENT = 4096
TENSOR_ALIGNMENT = PAGE_ALIGNMENT


class AdapterDtype(Enum):
    """How an adapter file stores its tensors. The program always computes LoRA in float32: the
    runtime widens float16 files once at load (exact), so fp16 halves the file, not the memory."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self is AdapterDtype.FP32 else np.float16)

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


@dataclass(frozen=True)
class AdapterFileContents:
    """What an adapter .ptd holds, read back for inspection and checks."""

    format_version: str
    foundation_fingerprint: str
    scaling: float
    tensors: dict[str, np.ndarray]
    alora_invocation_tokens: tuple[int, ...] | None = None  # None: an ordinary adapter


def read_adapter_ptd(path: Path) -> AdapterFileContents:
    """Parse and check an adapter file, naming the file and the key on any problem."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise BundleError(f"{path}: adapter file not readable ({error.strerror})") from None
    try:
        entries = read_ptd(raw, str(path))
    except PtdError as error:
        raise BundleError(str(error)) from None
    if FORMAT_VERSION_KEY not in entries:
        raise BundleError(
            f"{path}: expected an etlora adapter (entry {FORMAT_VERSION_KEY}), the .ptd has none; "
            "hint: a foundation.ptd or another tool's .ptd is not an adapter"
        )
    arrays: dict[str, np.ndarray] = {}
    for key, entry in entries.items():
        if key in (FORMAT_VERSION_KEY, FINGERPRINT_KEY):
            expected = (np.dtype(np.uint8),)
        elif key == SCALING_KEY:
            expected = (np.dtype(np.float32),)
            if entry.sizes != (1,):
                raise BundleError(f"{path}: {key} is expected to be float32 [1], got {list(entry.sizes)}")
        elif key == ALORA_TOKENS_KEY:
            expected = (np.dtype(np.int64),)
            if entry.dtype not in expected or len(entry.sizes) != 1 or not 1 <= entry.sizes[0] <= MAX_ALORA_TOKENS:
                raise BundleError(
                    f"{path}: {key} is expected to be int64 [n], 1 <= n <= {MAX_ALORA_TOKENS}, got {entry.dtype} "
                    f"{list(entry.sizes)}; hint: the file is damaged, re-export it"
                )
            for index, token in enumerate(entry.array(raw).tolist()):
                if not 0 <= token < ALORA_TOKEN_LIMIT:
                    raise BundleError(
                        f"{path}: {key}[{index}] is expected to be a token id >= 0 and < 2^31, got {token}; "
                        "hint: the file is damaged, re-export it"
                    )
        elif key.endswith(TENSOR_SUFFIXES):
            expected = (np.dtype(np.float32), np.dtype(np.float16))
        else:
            raise BundleError(
                f"{path}: unexpected key {key} (expected <site>.lora_a, <site>.lora_b or etlora.* metadata)"
            )
        if entry.dtype not in expected:
            raise BundleError(
                f"{path}: {key} is expected to be {' or '.join(str(d) for d in expected)}, got {entry.dtype}"
            )
        if key.endswith(TENSOR_SUFFIXES) and entry.offset % entry.dtype.itemsize:
            # The runtime reads these as float arrays; etlora writes every tensor 4096-aligned.
            raise BundleError(f"{path}: {key} starts at a misaligned offset for {entry.dtype}; "
                              "hint: the file is damaged or not written by etlora")
        arrays[key] = entry.array(raw)
    missing = [key for key in METADATA_KEYS if key not in arrays]
    if missing:
        raise BundleError(f"{path}: expected metadata entry {missing[0]}, not found (hint: not an etlora adapter file?)")
    version = arrays.pop(FORMAT_VERSION_KEY).tobytes().decode("ascii", errors="backslashreplace")
    if version != ADAPTER_FORMAT_VERSION:
        raise BundleError(
            f"{path}: adapter format version {version!r}, this etlora reads {ADAPTER_FORMAT_VERSION!r} "
            "(hint: re-export the adapter with this etlora version)"
        )
    for key in arrays:
        partner = key[: -len("lora_a")] + ("lora_b" if key.endswith(".lora_a") else "lora_a")
        if key.endswith(TENSOR_SUFFIXES) and partner not in arrays:
            raise BundleError(f"{path}: has {key} but no {partner}; hint: the file is incomplete, re-export it")
    alora_tokens = arrays.pop(ALORA_TOKENS_KEY, None)
    return AdapterFileContents(
        format_version=version,
        foundation_fingerprint=arrays.pop(FINGERPRINT_KEY).tobytes().decode("ascii", errors="backslashreplace"),
        scaling=float(arrays.pop(SCALING_KEY)[0]),
        tensors=arrays,
        alora_invocation_tokens=None if alora_tokens is None else tuple(alora_tokens.tolist()),
    )


def check_adapter_for_program(contents: AdapterFileContents, slots: ProgramSlots, path: Path,
                              program: str) -> None:
    """The one check of an adapter file against a program, in the C++ runtime's order and words
    (AdapterFile::check_for_program): same foundation, every site a slot, shapes at the rank."""
    if contents.foundation_fingerprint != slots.foundation_fingerprint:
        raise AdapterError(
            f"adapter file {path} is for foundation {contents.foundation_fingerprint}, program "
            f"{program} has foundation {slots.foundation_fingerprint}; hint: adapter made for "
            "another foundation"
        )
    site_index = {site: i for i, site in enumerate(slots.sites)}
    for key in sorted(contents.tensors):
        site, is_a = key[: -len(".lora_a")], key.endswith(".lora_a")
        if site not in site_index:
            raise AdapterError(
                f"adapter file {path} targets {site}, program {program} has no slot for it; hint: "
                "export the program with target modules that include this layer"
            )
        in_features, out_features = slots.site_dims[site_index[site]]
        rank = slots.max_rank
        expected = (1, in_features, rank) if is_a else (1, rank, out_features)
        received = tuple(contents.tensors[key].shape)
        if received != expected:
            raise AdapterError(
                f"adapter file {path}: key {key} expected shape {list(expected)}, got {list(received)}; "
                f"hint: the adapter rank must be padded to the program's max rank {rank} "
                "(re-export the adapter for this program)"
            )
