"""Regenerate tests/fixtures/malformed/: damaged files kept as fixtures, like safetensors' attack cases.

Each file is small and fails in one specific way; tests feed them to the exporter, inspect and the
C++ runtime and assert the error names the file and what was expected. Run from the repository root:
    python scripts/dev/make_malformed_fixtures.py
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

from etlora.export.adapter_file import adapter_ptd_bytes
from etlora.export.adapters import load_adapter
from etlora.export.families import DecoderShape
from etlora.format.adapter_format import ProgramSlots
from etlora.testing.fixtures import make_lora_adapter, make_tiny_llama, tiny_llama_config

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "malformed"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = make_tiny_llama(scratch / "model")
        adapter_dir = make_lora_adapter(model, scratch / "adapter", rank=2, target_modules=["q_proj"], layers_to_transform=[0])
        shape = DecoderShape.from_hf_config(tiny_llama_config())
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
    files.update(ptd_attack_files(good_ptd))
    files.update(tokenizer_attack_files())
    files.update(packed_weight_files())
    for name, data in files.items():
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


def _root_table(data: bytes) -> tuple[int, int]:
    """(table, vtable) offsets of a FlatTensor's root table."""
    table = struct.unpack_from("<I", data, 0)[0]
    return table, table - struct.unpack_from("<i", data, table)[0]


def _field_slot(data: bytes, table: int, vtable: int, index: int) -> int:
    return table + struct.unpack_from("<H", data, vtable + 4 + 2 * index)[0]


def _first_entry(data: bytes) -> tuple[int, int]:
    """(table, vtable) of named_data[0]."""
    table, vtable = _root_table(data)
    slot = _field_slot(data, table, vtable, 2)
    vector = slot + struct.unpack_from("<I", data, slot)[0]
    element = vector + 4
    entry = element + struct.unpack_from("<I", data, element)[0]
    return entry, entry - struct.unpack_from("<i", data, entry)[0]


def _patched(data: bytes, at: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def ptd_attack_files(good: bytes) -> dict[str, bytes]:
    """Valid headers with one offset or count in the flatbuffer turned hostile (each crashed
    ExecuTorch's unverified reader, or would have, before flat_tensor_check)."""
    table, vtable = _root_table(good)
    named_slot = _field_slot(good, table, vtable, 2)
    entry, entry_vtable = _first_entry(good)
    key_slot = _field_slot(good, entry, entry_vtable, 0)
    key = key_slot + struct.unpack_from("<I", good, key_slot)[0]
    layout_slot = _field_slot(good, entry, entry_vtable, 2)
    layout = layout_slot + struct.unpack_from("<I", good, layout_slot)[0]
    layout_vtable = layout - struct.unpack_from("<i", good, layout)[0]
    sizes_slot = _field_slot(good, layout, layout_vtable, 1)
    sizes = sizes_slot + struct.unpack_from("<I", good, sizes_slot)[0]
    return {
        # The named_data vector's offset points 2 GiB past the file.
        "adapter_named_data_outside.ptd": _patched(good, named_slot, "<I", 0x7FFFFFFF),
        # The first key's string claims 65,535 bytes: a reader using strlen/length runs off the file.
        "adapter_key_length_huge.ptd": _patched(good, key, "<I", 0xFFFF),
        # The first tensor's first dimension multiplied: its bytes no longer fit its segment.
        "adapter_entry_exceeds_segment.ptd": _patched(good, sizes + 4, "<i", 1 << 20),
        # A negative dimension.
        "adapter_negative_size.ptd": _patched(good, sizes + 4, "<i", -1),
    }


# A small tokenizer.json (byte-level BPE, one merge, one special token) that the damaged ones start from.
TOKENIZER_JSON = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True}],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}, "merges": [["a", "b"]]},
}


def _tokenizer_json(**edits) -> bytes:
    """TOKENIZER_JSON with top-level members replaced; model.* keys edit the model."""
    data = json.loads(json.dumps(TOKENIZER_JSON))
    for key, value in edits.items():
        if key.startswith("model_"):
            data["model"][key[len("model_"):]] = value
        else:
            data[key] = value
    return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode()


def tokenizer_attack_files() -> dict[str, bytes]:
    """Damaged tokenizer.json files (tests/test_tokenizer.py and tests/cpp/tokenizer_reader_test.cpp assert
    each error), and a tokenizer of the retired line format (bundles <= 6)."""
    whole = _tokenizer_json()
    template = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [70000], "tokens": ["<s>"]}}}
    return {
        # Cut inside the vocab: not JSON any more.
        "tokenizer_truncated.json": whole[: whole.index(b'"ab"') + 2],
        # An id that would size a 10-billion-entry id -> token table.
        "tokenizer_huge_id.json": _tokenizer_json(model_vocab={"a": 9999999999}, model_merges=[]),
        # A merge whose parts are not in the vocab.
        "tokenizer_merge_outside_vocab.json": _tokenizer_json(model_merges=["a z"]),
        # A pre-tokenizer the runtime does not run.
        "tokenizer_unsupported_pre_tokenizer.json": _tokenizer_json(pre_tokenizer={"type": "Whitespace"}),
        # A split regex PCRE2 cannot compile.
        "tokenizer_bad_regex.json": _tokenizer_json(pre_tokenizer={
            "type": "Split", "pattern": {"Regex": "(\\p{L}+"}, "behavior": "Isolated", "invert": False}),
        # The post-processor's bos id is outside the vocabulary.
        "tokenizer_bos_outside_vocab.json": _tokenizer_json(post_processor=template),
        # What tokenizer/etlora_tokenizer.txt began with in bundles of format <= 6.
        "tokenizer_retired_line_format.txt": b"etlora-tokenizer 1\nmodel byte_level_bpe gpt2\nbos none\neos 0\n",
        # A chat file from a future etlora beside a good tokenizer.json.
        "chat_future_version/tokenizer.json": whole,
        "chat_future_version/etlora_chat.json": json.dumps(
            {"format": "etlora-chat", "format_version": 2, "stop_token_ids": [0], "single_user_turn": None}).encode(),
        # A stop id no token has.
        "chat_stop_outside_vocab/tokenizer.json": whole,
        "chat_stop_outside_vocab/etlora_chat.json": json.dumps(
            {"format": "etlora-chat", "format_version": 1, "stop_token_ids": [0, 4], "single_user_turn": None}).encode(),
    }


def packed_weight_file(data_bytes: int, entries: list[tuple[bytes, int, int]], footer_count: int) -> bytes:
    """A packed cache file (XNNPACK's packed weights, executorch 1.5.1 layout): data, index, 20-byte footer."""
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
