"""Regenerate tests/fixtures/malformed/: damaged files kept as fixtures, like safetensors' attack cases.

Each file is small and fails in one specific way; tests feed them to the exporter, inspect and the
C++ runtime and assert the error names the file and what was expected. Run from the repository root:
    python scripts/make_malformed_fixtures.py
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

from etlora.export.adapter_file import ProgramSlots, adapter_ptd_bytes
from etlora.export.adapters import load_adapter
from etlora.export.model import LlamaShape
from etlora.testing import make_lora_adapter, make_tiny_llama, tiny_llama_config

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "malformed"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = make_tiny_llama(scratch / "model")
        adapter_dir = make_lora_adapter(model, scratch / "adapter", rank=2, target_modules=["q_proj"], layers_to_transform=[0])
        shape = LlamaShape.from_hf_config(tiny_llama_config())
        adapter = load_adapter("fixture", adapter_dir, shape)
        site = "model.layers.0.self_attn.q_proj"
        slots = ProgramSlots((site,), ((64, 64),), 2, "0" * 64)
        good_ptd = adapter_ptd_bytes(adapter, slots)
        safetensors_bytes = (adapter_dir / "adapter_model.safetensors").read_bytes()

    files = {
        # A real adapter .ptd cut in the middle of its tensor data.
        "adapter_truncated.ptd": good_ptd[: len(good_ptd) // 2],
        # Right size, wrong magic: not a FlatTensor file at all.
        "adapter_bad_magic.ptd": b"\0\0\0\0NOPE" + good_ptd[8:],
        # FlatTensor magic followed by garbage where the header and flatbuffer should be.
        "adapter_garbage_header.ptd": good_ptd[:8] + bytes(range(256)) * 4,
        # safetensors whose header length points far past the end of the file.
        "adapter_model_bad_header.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
        # safetensors cut short inside its tensor data.
        "adapter_model_truncated.safetensors": safetensors_bytes[: len(safetensors_bytes) - 100],
        # A manifest from a future etlora.
        "manifest_future_version.json": json.dumps({"format": "etlora-bundle", "format_version": 99}).encode(),
    }
    files.update(packed_weight_files())
    for name, data in files.items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


def packed_weight_file(data_bytes: int, entries: list[tuple[bytes, int, int]], footer_count: int) -> bytes:
    """An XNNPACK packed weight file (executorch 1.5.1 layout): data, index, 20-byte footer."""
    index = b"".join(struct.pack("<I", len(name)) + name + struct.pack("<QQI", offset, size, 0)
                     for name, offset, size in entries)
    footer = struct.pack("<QIII", data_bytes, footer_count, 0x58505743, 2)
    return bytes(data_bytes) + index + footer


def packed_weight_files() -> dict[str, bytes]:
    return {
        # The footer promises 3 index entries, the index holds 1: a file cut while its index was written.
        "packed_index_truncated.bin": packed_weight_file(4096, [(b"w0", 0, 4096)], footer_count=3),
        # An entry whose packed bytes would lie past the data region.
        "packed_entry_out_of_bounds.bin": packed_weight_file(4096, [(b"w0", 0, 1 << 20)], footer_count=1),
    }


if __name__ == "__main__":
    main()
