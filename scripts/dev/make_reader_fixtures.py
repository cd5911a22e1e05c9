"""Regenerate tests/fixtures/bundles/: tiny bundles for the C++ reader tests (tests/cpp/*_reader_test.cpp).

The readers check manifests, paths and adapter files, not model contents, so model.pte, foundation.ptd
and model_htp.pte are short placeholders; everything else is written by etlora's own writers (the
manifest records, the adapter .ptd writer, the tokenizer writer) from tiny PEFT adapters made by
etlora.testing.fixtures, so the fixtures are what the exporter writes. Deterministic: run it again
and `git status` shows nothing (tests/test_reader_fixtures.py checks it). The C++ tests assert the values chosen here (names, ranks, scalings,
tokens, fingerprints): change both together. Run from the repository root:
    python scripts/dev/make_reader_fixtures.py [--out DIR]

valid/      one bundle per readable format version: v1 (no weights_id, no quantization, no dtype),
            v2_8da8w (quantized foundation), v3_fp16 (an fp16 adapter), v4_htp (an htp_program
            record), v5_alora (fp32, fp16 and activated-LoRA adapters, a tokenizer of the retired line
            format, 8da4w), v7_tokenizer (the current version: tokenizer.json and etlora_chat.json)
refused/    one manifest.json per way a manifest is refused (plus a symlink leading out)
damaged_adapters/
            a manifest the reader accepts whose adapter files are each wrong in one way
v7_tokenizer_encodings.txt
            Hugging Face's token ids for a few texts, for the C++ tokenizer on valid/v7_tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from unittest import mock

from etlora.export import adapter_file as adapter_writer
from etlora.export.adapter_file import adapter_ptd_bytes
from etlora.format.adapter_format import AdapterDtype, ProgramSlots
from etlora.export.adapters import load_adapter, program_sites
from etlora.export.bundle import adapter_record
from etlora.format.errors import BundleError
from etlora.format.files import write_atomically
from etlora.format.manifest import (
    AdapterRecord, FileRecord, FoundationRecord, HtpProgramRecord, Manifest, ProgramRecord, QuantizationRecord,
    TokenizerRecord, read_manifest, verify_files,
)
from etlora.export.families import DecoderShape
from etlora.export.quantization import FoundationQuantization
from etlora.export.tokenizer_file import CHAT_FILE, TOKENIZER_DIR, TOKENIZER_JSON, write_tokenizer_files
from etlora.testing.fixtures import (
    TINY_TOKENIZER_TEXT, make_lora_adapter, make_tiny_llama, make_tiny_tokenizer, tiny_llama_config,
)

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "bundles"
FINGERPRINT = "0123456789abcdef" * 4  # the foundation every fixture adapter is made for
OTHER_FINGERPRINT = "f" * 64
PLACEHOLDER = b"placeholder: the reader fixtures carry no program or weights (the readers do not open them)\n"
TARGETS = ["q_proj", "v_proj"]
MAX_RANK = 4
ALORA_TOKENS = [17, 42, 99]
HTP = HtpProgramRecord(file="model_htp.pte", soc="SM8650", qnn_sdk_version="2.37.0.250724", chunk_len=32,
                       cache_len=128, foundation_in_context_bytes=123456)
LAYER0 = "model.layers.0.self_attn"
RETIRED_TOKENIZER_FILE = "etlora_tokenizer.txt"
# The head of the retired line format (bundles <= 6); the runtime refuses it by name.
RETIRED_TOKENIZER_TEXT = b"etlora-tokenizer 1\nmodel byte_level_bpe gpt2\nbos 1 0\neos 2 0\nspecial 0 1 2\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    out = parser.parse_args().out
    write_fixtures(out)
    for path in sorted(out.rglob("*")):
        if path.is_file() and not path.is_symlink():
            print(f"{path.relative_to(out)}: {path.stat().st_size} bytes")


def write_fixtures(out: Path) -> None:
    """Every fixture, into a fresh `out`."""
    if out.exists():
        shutil.rmtree(out)
    shape = DecoderShape.from_hf_config(tiny_llama_config())
    sites = program_sites(shape, TARGETS)
    program = ProgramRecord(file="model.pte", backend="xnnpack", max_rank=MAX_RANK, adapter_slots=2, max_seq_len=64,
                            sites=sites, site_dims=[list(shape.linear_dims(site.rsplit(".", 1)[1])) for site in sites],
                            target_modules=TARGETS)
    slots = ProgramSlots(tuple(sites), tuple(tuple(dims) for dims in program.site_dims), MAX_RANK, FINGERPRINT)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = make_tiny_llama(scratch / "model")
        adapters = {
            "plain": _adapter("plain", make_lora_adapter(model, scratch / "plain", rank=2, target_modules=TARGETS,
                                                         alpha=4, layers_to_transform=[0]), shape),
            "invoked": _adapter("invoked", make_lora_adapter(model, scratch / "invoked", rank=1, alpha=3, seed=2,
                                                             target_modules=["q_proj"], layers_to_transform=[0],
                                                             alora_invocation_tokens=ALORA_TOKENS), shape),
        }
        tokenizer = make_tiny_tokenizer(scratch / "tokenizer")
        write_valid_bundles(out, program, slots, adapters, tokenizer, shape)
    write_refused_manifests(out)
    write_damaged_adapters(out, program, slots, adapters["plain"], shape)


def _adapter(name: str, directory: Path, shape: DecoderShape):
    """The adapter as load_adapter reads it, with scratch paths replaced so that reruns give the same bytes."""
    return replace(load_adapter(name, directory, shape), source=f"tiny PEFT adapter '{name}'", base_model="tiny-llama")


def _record(adapter, dtype: AdapterDtype) -> AdapterRecord:
    return adapter_record(adapter, f"adapters/{adapter.name}.ptd", dtype)


def _foundation(shape: DecoderShape, quantization: FoundationQuantization) -> FoundationRecord:
    record = QuantizationRecord()
    if quantization.quantized:
        record = QuantizationRecord(
            scheme=quantization.scheme.value, group_size=quantization.group_size,
            embedding_bits=quantization.embedding_bits, embedding_group_size=quantization.embedding_group_size,
            head_bits=quantization.head_bits, quantized_modules=["lm_head", "model.layers.*.self_attn.q_proj"],
            float_weights={"model.norm.weight": 256})
    return FoundationRecord(file="foundation.ptd", fingerprint=FINGERPRINT, source="tiny-llama",
                            config=shape.summary(),
                            weights_id=quantization.weights_id(FINGERPRINT), quantization=record)


def _write_bundle(directory: Path, manifest: Manifest, contents: dict[str, bytes], version: int | None = None) -> None:
    """Writes the files, records their sizes and sha256, then the manifest (as an older etlora wrote it
    when `version` is older than this one's)."""
    for name, data in contents.items():
        write_atomically(directory / name, data)
    manifest = replace(manifest, files={name: FileRecord.of(directory / name) for name in sorted(contents)})
    if version is None:
        manifest.write(directory)
        return
    data = json.loads(manifest.to_json())
    data["format_version"] = version
    for record in data["adapters"].values():
        if version < 5:
            del record["alora_invocation_tokens"]
        if version < 3:
            del record["dtype"]
    if version < 4:
        del data["htp_program"]
    if version < 2:
        del data["foundation"]["weights_id"], data["foundation"]["quantization"]
    if version < 6:  # a Llama's config as etlora wrote it before model families
        config = data["foundation"]["config"]
        data["foundation"]["config"] = {
            **{key: config[key] for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                                            "num_heads", "num_kv_heads", "head_dim", "rms_norm_eps",
                                            "tie_word_embeddings", "mlp_bias")},
            "attention_bias": config["qkv_bias"],
        }
    _write_json(directory, data)


def _write_json(directory: Path, data: dict) -> None:
    write_atomically(directory / "manifest.json", (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_valid_bundles(out: Path, program, slots, adapters, tokenizer, shape) -> None:
    plain, invoked = adapters["plain"], adapters["invoked"]
    fp32 = adapter_ptd_bytes(plain, slots, AdapterDtype.FP32)
    fp16 = adapter_ptd_bytes(plain, slots, AdapterDtype.FP16)
    programs = {"model.pte": PLACEHOLDER, "foundation.ptd": PLACEHOLDER}
    fp32_foundation = _foundation(shape, FoundationQuantization())

    def one_adapter(record: AdapterRecord, data: bytes, **fields) -> tuple[Manifest, dict[str, bytes]]:
        manifest = Manifest(program=program, foundation=fields.pop("foundation", fp32_foundation), files={},
                            adapters={"plain": record}, **fields)
        return manifest, {**programs, record.file: data}

    valid = out / "valid"
    _write_bundle(valid / "v1", *one_adapter(_record(plain, AdapterDtype.FP32), fp32), version=1)
    quantized = _foundation(shape, FoundationQuantization.from_options("8da8w", None, embedding_bits=8))
    _write_bundle(valid / "v2_8da8w", *one_adapter(_record(plain, AdapterDtype.FP32), fp32, foundation=quantized),
                  version=2)
    _write_bundle(valid / "v3_fp16", *one_adapter(_record(plain, AdapterDtype.FP16), fp16), version=3)
    manifest, contents = one_adapter(_record(plain, AdapterDtype.FP32), fp32, htp_program=HTP)
    _write_bundle(valid / "v4_htp", manifest, {**contents, HTP.file: PLACEHOLDER}, version=4)

    # As `etlora export --quantize 8da4w --quantize-embedding 4` wrote it at version 5 (the last
    # version before model families; every bundle the tests export is of the current version).
    half = replace(plain, name="half", source="tiny PEFT adapter 'plain', stored as fp16")
    bundle = valid / "v5_alora"
    tokenizer_files = [name for name in write_tokenizer_files(tokenizer, bundle / TOKENIZER_DIR)
                       if not name.endswith(CHAT_FILE)]
    (bundle / TOKENIZER_DIR / CHAT_FILE).unlink()
    write_atomically(bundle / TOKENIZER_DIR / RETIRED_TOKENIZER_FILE, RETIRED_TOKENIZER_TEXT)
    tokenizer_files.append(f"{TOKENIZER_DIR}/{RETIRED_TOKENIZER_FILE}")
    manifest = Manifest(
        program=program,
        foundation=_foundation(shape, FoundationQuantization.from_options("8da4w", None, embedding_bits=4)),
        files={},
        adapters={"plain": _record(plain, AdapterDtype.FP32), "half": _record(half, AdapterDtype.FP16),
                  "invoked": _record(invoked, AdapterDtype.FP32)},
        tokenizer=TokenizerRecord(TOKENIZER_DIR, f"{TOKENIZER_DIR}/{RETIRED_TOKENIZER_FILE}"),
    )
    contents = {**programs, "adapters/plain.ptd": fp32, "adapters/half.ptd": fp16,
                "adapters/invoked.ptd": adapter_ptd_bytes(invoked, slots, AdapterDtype.FP32)}
    contents.update({name: (bundle / name).read_bytes() for name in tokenizer_files})
    _write_bundle(bundle, manifest, contents, version=5)

    # The current version: the model's tokenizer.json with etlora_chat.json beside it.
    bundle = valid / "v7_tokenizer"
    tokenizer_files = write_tokenizer_files(tokenizer, bundle / TOKENIZER_DIR)
    manifest, contents = one_adapter(_record(plain, AdapterDtype.FP32), fp32,
                                     tokenizer=TokenizerRecord(TOKENIZER_DIR, f"{TOKENIZER_DIR}/{TOKENIZER_JSON}"))
    contents.update({name: (bundle / name).read_bytes() for name in tokenizer_files})
    _write_bundle(bundle, manifest, contents)
    write_tokenizer_encodings(out, tokenizer)

    for directory in sorted(valid.iterdir()):
        problems = verify_files(directory, read_manifest(directory))
        assert not problems, problems


def write_tokenizer_encodings(out: Path, tokenizer) -> None:
    """One line per text: its UTF-8 bytes in hex, then Hugging Face's ids (no special tokens added)."""
    texts = [*TINY_TOKENIZER_TEXT, "Hello, world!", "<|im_start|>user\nhi<|im_end|>", "  two  spaces  ", "\n"]
    lines = [" ".join([text.encode().hex(), *map(str, tokenizer.encode(text, add_special_tokens=False))])
             for text in texts]
    (out / "v7_tokenizer_encodings.txt").write_text("\n".join(lines) + "\n")


def _edited(out: Path, edit) -> dict:
    data = json.loads((out / "valid" / "v5_alora" / "manifest.json").read_text())
    edit(data)
    return data


def _set(*path_and_value):
    *path, key, value = path_and_value

    def edit(data):
        node = data
        for part in path:
            node = node[part]
        node[key] = value
    return edit


# name -> an edit of valid/v5_alora's manifest that a reader refuses (tests/cpp/bundle_reader_test.cpp
# asserts each message)
REFUSED = {
    "wrong_format": _set("format", "other-bundle"),
    "missing_member": lambda data: data["program"].pop("max_rank"),
    "unexpected_member": _set("adapters", "plain", "speed", 1),
    "unknown_scheme": _set("foundation", "quantization", "scheme", "2da1w"),
    "negative_rank": _set("adapters", "plain", "rank", -1),
    "float_rank": _set("adapters", "plain", "rank", 2.5),
    "alora_negative_token": _set("adapters", "invoked", "alora_invocation_tokens", [17, -1, 99]),
    "alora_no_tokens": _set("adapters", "invoked", "alora_invocation_tokens", []),
    "path_parent": _set("adapters", "plain", "file", "../../valid/v5_alora/adapters/plain.ptd"),
    "path_absolute": _set("foundation", "file", "/etc/passwd"),
    "path_backslash": _set("tokenizer", "runtime_file", "tokenizer\\etlora_tokenizer.txt"),
    "htp_not_listed": _set("htp_program", asdict(HTP)),
    "htp_chunk_over_cache": lambda data: (data.update(htp_program={**asdict(HTP), "chunk_len": 256}),
                                          data["files"].update({HTP.file: data["files"]["model.pte"]})),
}


def write_refused_manifests(out: Path) -> None:
    refused = out / "refused"
    for name, edit in REFUSED.items():
        _write_json(refused / name, _edited(out, edit))
    # Cut inside a string: not JSON at all.
    text = (out / "valid" / "v5_alora" / "manifest.json").read_text()
    write_atomically(refused / "not_json" / "manifest.json", text[: text.index('"fingerprint"') + 5].encode())
    # The manifest is fine; its adapter file is a symlink to a file outside the bundle.
    bundle = refused / "symlink_out"
    _write_json(bundle, _edited(out, lambda data: None))
    (bundle / "adapters").mkdir()
    os.symlink("../../../valid/v5_alora/adapters/plain.ptd", bundle / "adapters" / "plain.ptd")
    for directory in sorted(refused.iterdir()):
        try:
            read_manifest(directory)
        except BundleError:
            continue
        raise AssertionError(f"{directory}: the Python reader accepts it, expected a refusal")


def _without(key: str):
    """padded_adapter_tensors with `key` dropped: a writer that lost one tensor."""
    original = adapter_writer.padded_adapter_tensors

    def tensors(*args, **kwargs):
        entries = original(*args, **kwargs)
        del entries[key]
        return entries
    return mock.patch.object(adapter_writer, "padded_adapter_tensors", tensors)


def _narrowed(key: str):
    """padded_adapter_tensors with `key`'s last dimension halved: the file opens, the program refuses it."""
    original = adapter_writer.padded_adapter_tensors

    def tensors(*args, **kwargs):
        entries = original(*args, **kwargs)
        entries[key] = entries[key][..., : entries[key].shape[-1] // 2].contiguous()
        return entries
    return mock.patch.object(adapter_writer, "padded_adapter_tensors", tensors)


def write_damaged_adapters(out: Path, program, slots, plain, shape) -> None:
    """A bundle the manifest reader accepts; each adapter file is wrong in one way (the file readers
    and AdapterFile::check_for_program catch it)."""
    good = adapter_ptd_bytes(plain, slots)
    with _without(f"{LAYER0}.v_proj.lora_b"):
        no_lora_b = adapter_ptd_bytes(plain, slots)
    with _narrowed(f"{LAYER0}.q_proj.lora_b"):
        wrong_lora_b = adapter_ptd_bytes(plain, slots)
    with mock.patch.object(adapter_writer, "FORMAT_VERSION_KEY", adapter_writer.SCALING_KEY):
        # The version entry goes under the scaling key, which the scaling then overwrites: a .ptd
        # without etlora.format_version, as a foundation.ptd or another tool's file is.
        no_version = adapter_ptd_bytes(plain, slots)
    with mock.patch.object(adapter_writer, "ADAPTER_FORMAT_VERSION", "2"):
        future_format = adapter_ptd_bytes(plain, slots)
    files = {
        "truncated": good[: len(good) // 2],  # cut in its tensor data
        "no_lora_b": no_lora_b,
        "wrong_lora_b": wrong_lora_b,
        "other_foundation": adapter_ptd_bytes(plain, replace(slots, foundation_fingerprint=OTHER_FINGERPRINT)),
        "future_format": future_format,
        "no_version": no_version,
        "token_too_big": adapter_ptd_bytes(replace(plain, alora_invocation_tokens=(5, 2**31)), slots),
    }
    bundle = out / "damaged_adapters"
    records = {name: replace(_record(plain, AdapterDtype.FP32), file=f"adapters/{name}.ptd") for name in files}
    records["missing"] = replace(records["truncated"], file="adapters/missing.ptd")
    manifest = Manifest(program=program, foundation=_foundation(shape, FoundationQuantization()), files={},
                        adapters=records)
    contents = {"model.pte": PLACEHOLDER, "foundation.ptd": PLACEHOLDER,
                **{f"adapters/{name}.ptd": data for name, data in files.items()}}
    contents["adapters/missing.ptd"] = good
    _write_bundle(bundle, manifest, contents)
    (bundle / "adapters" / "missing.ptd").unlink()  # deleted after the manifest was written
    read_manifest(bundle)


if __name__ == "__main__":
    main()
