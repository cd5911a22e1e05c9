"""manifest.json: the typed view of a bundle, read and written in one place (docs/bundle-format.md)."""

from __future__ import annotations

import json
import os
import stat
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .adapter_format import ALORA_TOKEN_LIMIT, MAX_ALORA_TOKENS, ProgramSlots
from .errors import BundleError
from .files import sha256_file, write_atomically
from .quantization import QuantScheme

FORMAT_NAME = "etlora-bundle"
# 2: foundation.quantization and foundation.weights_id; 3: adapters[].dtype; 4: htp_program;
# 5: adapters[].alora_invocation_tokens; 6: model families (foundation.config.family and its
# features; program format 3); 7: the tokenizer is the model's tokenizer.json (tokenizer.runtime_file)
# with etlora_chat.json beside it, instead of the line format etlora_tokenizer.txt
FORMAT_VERSION = 7
# version 1 is an fp32 foundation; versions 1-2 have fp32 adapters; versions 1-3 no HTP program;
# versions 1-4 no activated LoRA (every adapter applies to every token); versions 1-6 carry the
# retired tokenizer line format, which the runtime refuses by name (token ids still work)
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
MANIFEST_NAME = "manifest.json"
PROGRAM_FILE = "model.pte"
HTP_PROGRAM_FILE = "model_htp.pte"
FOUNDATION_FILE = "foundation.ptd"
ADAPTER_DIR = "adapters"


@dataclass(frozen=True)
class FileRecord:
    size: int
    sha256: str

    @staticmethod
    def of(path: Path) -> "FileRecord":
        return FileRecord(size=path.stat().st_size, sha256=sha256_file(path))


@dataclass(frozen=True)
class ProgramRecord:
    file: str
    backend: str
    max_rank: int
    adapter_slots: int
    max_seq_len: int
    sites: list[str]
    site_dims: list[list[int]]
    target_modules: list[str]


@dataclass(frozen=True)
class QuantizationRecord:
    """How foundation.ptd stores the foundation; adapters are float whatever this says."""

    scheme: str = QuantScheme.FP32.value  # "fp32", "8da4w", "8da8w"
    group_size: int | None = None  # weights per scale; None: per output channel (or fp32)
    embedding_bits: int | None = None  # 4 or 8 when the token embedding is stored as integers
    embedding_group_size: int | None = None  # embedding values per scale; None: per row
    head_bits: int | None = None  # lm_head's integer width (8: per row), None for fp32
    quantized_modules: list[str] = field(default_factory=list)  # e.g. "model.layers.*.mlp.up_proj", "lm_head"
    float_weights: dict[str, int] = field(default_factory=dict)  # weights left in float32 -> bytes

    def describe(self) -> str:
        """One line for people: 'fp32', or e.g. '8da4w (groups of 32, output head 8-bit, embedding
        4-bit in groups of 32)'."""
        if self.scheme == QuantScheme.FP32.value:
            return self.scheme
        parts = [f"groups of {self.group_size}" if self.group_size else "per channel",
                 f"output head {self.head_bits}-bit"]
        if self.embedding_bits:
            group = f"groups of {self.embedding_group_size}" if self.embedding_group_size else "per row"
            parts.append(f"embedding {self.embedding_bits}-bit in {group}")
        return f"{self.scheme} ({', '.join(parts)})"


@dataclass(frozen=True)
class FoundationRecord:
    file: str
    fingerprint: str  # of the float checkpoint: adapters are checked against it
    source: str
    config: dict
    weights_id: str = ""  # the foundation as stored (names the packed cache file); "" in version 1
    quantization: QuantizationRecord = field(default_factory=QuantizationRecord)


@dataclass(frozen=True)
class AdapterRecord:
    file: str
    rank: int
    alpha: float
    scaling: float
    use_rslora: bool
    target_modules: list[str]
    base_model: str
    source: str
    dtype: str = "fp32"  # how the file stores lora_a/lora_b: "fp32" or "fp16" (AdapterDtype)
    # Activated LoRA: the adapter file's etlora.alora_invocation_tokens; None (JSON null, or absent
    # before version 5): an ordinary adapter. The file is what the runtime acts on; this is for tools.
    alora_invocation_tokens: list[int] | None = None


@dataclass(frozen=True)
class HtpProgramRecord:
    """The HTP program beside model.pte (docs/bundle-format.md, "htp_program"): same sites, rank
    and adapter files; fixed chunk and cache lengths; the KV cache owned by the host."""

    file: str  # "model_htp.pte", listed in files
    soc: str  # the Snapdragon SoC it was compiled for, e.g. "SM8650"
    qnn_sdk_version: str  # the QNN SDK that compiled it, e.g. "2.37.0.250724"
    chunk_len: int  # tokens per call (T)
    cache_len: int  # KV cache rows (C)
    foundation_in_context_bytes: int  # foundation data carried inside the program; 0: shared with foundation.ptd


HTP_STRING_MEMBERS = ("file", "soc", "qnn_sdk_version")
HTP_INTEGER_MEMBERS = (("chunk_len", 1), ("cache_len", 1), ("foundation_in_context_bytes", 0))  # (name, minimum)
JSON_INTEGER_LIMIT = 2**53  # the C++ reader keeps numbers as double


@dataclass(frozen=True)
class TokenizerRecord:
    """The checkpoint's tokenizer: the Hugging Face files in `directory`; `runtime_file` is the one the
    C++ runtime reads (tokenizer.json from version 7, with etlora_chat.json beside it; the retired
    etlora_tokenizer.txt before)."""

    directory: str
    runtime_file: str


@dataclass(frozen=True)
class Manifest:
    program: ProgramRecord
    foundation: FoundationRecord
    files: dict[str, FileRecord]
    adapters: dict[str, AdapterRecord] = field(default_factory=dict)
    tokenizer: TokenizerRecord | None = None
    htp_program: HtpProgramRecord | None = None  # absent or null: the bundle has no HTP program
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        # Written in this etlora's schema, so labelled with its version whatever was read.
        current = replace(self, format_version=FORMAT_VERSION)
        return json.dumps(asdict(current), indent=2, sort_keys=True) + "\n"

    def write(self, bundle_dir: Path) -> None:
        write_atomically(Path(bundle_dir) / MANIFEST_NAME, self.to_json().encode())

    def program_slots(self) -> ProgramSlots:
        """What the bundle's program accepts from an adapter file (check_adapter_for_program)."""
        return ProgramSlots(
            sites=tuple(self.program.sites),
            site_dims=tuple(tuple(dims) for dims in self.program.site_dims),
            max_rank=self.program.max_rank,
            foundation_fingerprint=self.foundation.fingerprint,
        )


def _parse(data: dict, path: Path) -> Manifest:
    if data.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: expected format {FORMAT_NAME!r}, received {data.get('format')!r}")
    version = data.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"{path}: bundle format version {version}, this etlora reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (hint: re-export the bundle with this etlora, or upgrade etlora)"
        )
    try:
        return Manifest(
            program=ProgramRecord(**data["program"]),
            foundation=_parse_foundation(data["foundation"], path),
            files={name: FileRecord(**record) for name, record in data["files"].items()},
            adapters={name: _parse_adapter(name, record, path) for name, record in data["adapters"].items()},
            tokenizer=TokenizerRecord(**data["tokenizer"]) if data.get("tokenizer") else None,
            htp_program=_parse_htp_program(data.get("htp_program"), path),
            format=data["format"],
            format_version=version,
        )
    except (KeyError, TypeError) as error:
        raise BundleError(f"{path}: manifest is missing or has unexpected fields ({error})") from None


def _parse_adapter(name: str, data: dict, path: Path) -> AdapterRecord:
    """One adapters[] entry; alora_invocation_tokens, when not null, is 1 to MAX_ALORA_TOKENS token ids
    (whole numbers in 0 .. 2^31-1), checked in the C++ reader's words."""
    record = AdapterRecord(**data)
    rank = _json_integer(record.rank)
    if rank is None or rank < 0:
        got = rank if rank is not None else (
            "a number that is not a whole number within 2^53" if _json_kind(record.rank) == "a number"
            else _json_kind(record.rank))
        raise BundleError(f"{path}: adapters['{name}'].rank: expected an integer >= 0, got {got}")
    tokens = record.alora_invocation_tokens
    if tokens is None:
        return record
    where = f"adapters['{name}'].alora_invocation_tokens"
    if not isinstance(tokens, list) or not 1 <= len(tokens) <= MAX_ALORA_TOKENS:
        got = f"{len(tokens)} entries" if isinstance(tokens, list) else _json_kind(tokens)
        raise BundleError(f"{path}: {where}: expected null or an array of 1 to {MAX_ALORA_TOKENS} token ids, got {got}")
    checked = []
    for index, token in enumerate(tokens):
        number = _json_integer(token)
        if number is None or not 0 <= number < ALORA_TOKEN_LIMIT:
            got = number if number is not None else (
                "a number that is not a whole number within 2^53" if _json_kind(token) == "a number"
                else _json_kind(token))
            raise BundleError(f"{path}: {where}[{index}]: expected an integer >= 0 and < 2^31, got {got}")
        checked.append(number)
    return replace(record, alora_invocation_tokens=checked)


def _parse_foundation(data: dict, path: Path) -> FoundationRecord:
    fields = dict(data)
    quantization = QuantizationRecord(**fields.pop("quantization", {}))
    known = [scheme.value for scheme in QuantScheme]
    if quantization.scheme not in known:
        raise BundleError(
            f"{path}: foundation quantization scheme {quantization.scheme!r} is unknown to this etlora "
            f"(reads {', '.join(known)}; hint: upgrade etlora)"
        )
    record = FoundationRecord(**fields, quantization=quantization)
    return record if record.weights_id else replace(record, weights_id=record.fingerprint)


def _json_kind(value) -> str:
    """A JSON value's kind in the C++ reader's words (JsonValue::kind_name)."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array")):
        if isinstance(value, kind):
            return name
    return "an object"


def _json_integer(value) -> int | None:
    """A JSON number that is a whole number within +-2^53 (what both readers accept), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if abs(value) <= JSON_INTEGER_LIMIT else None


def _parse_htp_program(value, path: Path) -> HtpProgramRecord | None:
    """The htp_program entry, checked member by member in the C++ reader's order and words."""
    if value is None:
        return None
    where = "htp_program"
    if not isinstance(value, dict):
        raise BundleError(f"{path}: manifest is missing or has unexpected fields ({where}: expected an object)")
    members = set(HTP_STRING_MEMBERS) | {name for name, _ in HTP_INTEGER_MEMBERS}
    for key in sorted(members):
        if key not in value:
            raise BundleError(f"{path}: manifest is missing or has unexpected fields ({where} has no '{key}')")
    for key in sorted(value):
        if key not in members:
            raise BundleError(f"{path}: manifest is missing or has unexpected fields ({where} has an unexpected '{key}')")
    for key in HTP_STRING_MEMBERS:
        if not isinstance(value[key], str):
            raise BundleError(f"{path}: {where}.{key}: expected a string, got {_json_kind(value[key])}")
    integers = {}
    for key, minimum in HTP_INTEGER_MEMBERS:
        number = _json_integer(value[key])
        if number is None or number < minimum:
            got = number if number is not None else (
                "a number that is not a whole number within 2^53" if _json_kind(value[key]) == "a number"
                else _json_kind(value[key]))
            raise BundleError(f"{path}: {where}.{key}: expected an integer >= {minimum}, got {got}")
        integers[key] = number
    if integers["chunk_len"] > integers["cache_len"]:
        raise BundleError(
            f"{path}: {where}.chunk_len: expected at most cache_len ({integers['cache_len']}), got {integers['chunk_len']}"
        )
    return HtpProgramRecord(**{key: value[key] for key in HTP_STRING_MEMBERS}, **integers)


def _check_htp_program_listed(manifest: Manifest, path: Path) -> None:
    """The HTP program file is one of `files`, so its size and sha256 are checked like model.pte's."""
    record = manifest.htp_program
    if record is not None and record.file not in manifest.files:
        raise BundleError(
            f"{path}: htp_program.file '{record.file}' is not listed in files (expected every program "
            "file listed with its size and sha256); hint: the manifest was edited or is hostile"
        )


def _listed_paths(manifest: Manifest) -> list[tuple[str, str]]:
    """(where in the manifest, path) for every path a reader opens."""
    paths = [("program.file", manifest.program.file), ("foundation.file", manifest.foundation.file)]
    paths += [(f"files[{name!r}]", name) for name in manifest.files]
    paths += [(f"adapters[{name!r}].file", record.file) for name, record in manifest.adapters.items()]
    if manifest.tokenizer:
        paths += [("tokenizer.directory", manifest.tokenizer.directory),
                  ("tokenizer.runtime_file", manifest.tokenizer.runtime_file)]
    if manifest.htp_program:
        paths += [("htp_program.file", manifest.htp_program.file)]
    return paths


def check_paths_inside(bundle_dir: Path, manifest: Manifest, path: Path) -> None:
    """Every listed path stays inside the bundle: relative, no '..', no symlink leading out.

    Plain string paths and one lstat per file (each folder resolved once): a bundle of a hundred
    adapters must open as fast as a bundle of one.
    """
    root = os.path.realpath(bundle_dir)
    parents: dict[str, str] = {}  # resolved once per folder: 100 adapters share adapters/
    seen: set[str] = set()  # files keys and adapters[].file name the same paths
    for where, text in _listed_paths(manifest):
        if isinstance(text, str) and text in seen:
            continue
        parts = text.split("/") if isinstance(text, str) else None
        if parts is None or not text or "\\" in text or "\0" in text or text.startswith("/") or ".." in parts:
            raise BundleError(
                f"{path}: {where} is {text!r}, expected a relative path inside the bundle "
                "(no '..', not absolute); hint: the manifest was edited or is hostile"
            )
        seen.add(text)
        parent, _, name = text.rpartition("/")
        if parent not in parents:
            parents[parent] = os.path.realpath(os.path.join(root, parent)) if parent else root
        target = os.path.join(parents[parent], name)
        try:
            is_link = stat.S_ISLNK(os.lstat(target).st_mode)
        except OSError:
            continue  # absent: reported by whoever opens it
        resolved = os.path.realpath(target) if is_link else target
        if resolved != root and not resolved.startswith(root + os.sep):
            if not os.path.exists(resolved):
                continue  # a dangling link: reported as missing by whoever opens it
            raise BundleError(
                f"{path}: {where} {text!r} resolves to {resolved}, outside the bundle "
                f"{root} (a symlink leading out); hint: copy the file into the bundle"
            )


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not an etlora bundle ({MANIFEST_NAME} not found)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    manifest = _parse(data, path)
    check_paths_inside(Path(bundle_dir), manifest, path)
    _check_htp_program_listed(manifest, path)
    return manifest


def verify_files(bundle_dir: Path, manifest: Manifest) -> list[str]:
    """Problems with listed files (missing, wrong size, wrong sha256); empty when all is well."""
    problems = []
    for name, record in sorted(manifest.files.items()):
        path = Path(bundle_dir) / name
        if not path.is_file():
            problems.append(f"{path}: missing (manifest lists {record.size} bytes)")
            continue
        size = path.stat().st_size
        if size != record.size:
            problems.append(f"{path}: size {size} bytes, manifest says {record.size} (damaged or replaced)")
        elif sha256_file(path) != record.sha256:
            problems.append(f"{path}: sha256 differs from the manifest (damaged or replaced)")
    return problems
