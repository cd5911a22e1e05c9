"""`etlora inspect`: what a bundle holds, verified against its manifest and the adapter files."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from etlora.format.adapter_format import AdapterDtype, check_adapter_for_program, read_adapter_ptd
from etlora.format.errors import AdapterError, BundleError
from etlora.format.manifest import HtpProgramRecord, QuantizationRecord, read_manifest, verify_files


@dataclass(frozen=True)
class FileRow:
    name: str
    role: str  # program | htp program | foundation | adapter | tokenizer
    size: int
    status: str  # ok | problem text


@dataclass(frozen=True)
class AdapterRow:
    name: str
    rank: int
    alpha: float
    scaling: float
    target_modules: list[str]
    size: int
    dtype: str  # how the file stores its tensors (fp32 / fp16); the runtime computes in float32
    alora_invocation_tokens: list[int] | None = None  # activated LoRA (manifest version 5); None: ordinary

    def describe_alora(self) -> str | None:
        """'aLoRA: invocation tokens [5, 6]' for an activated LoRA, None for an ordinary adapter."""
        if self.alora_invocation_tokens is None:
            return None
        return f"aLoRA: invocation tokens {list(self.alora_invocation_tokens)}"


@dataclass(frozen=True)
class BundleReport:
    bundle: str
    format_version: int
    backend: str
    max_rank: int
    adapter_slots: int
    max_seq_len: int
    target_modules: list[str]
    foundation_fingerprint: str
    quantization: QuantizationRecord  # manifest foundation.quantization
    htp_program: HtpProgramRecord | None  # manifest htp_program: None when the bundle has none
    files: list[FileRow]
    adapters: list[AdapterRow]
    problems: list[str]

    @property
    def total_size(self) -> int:
        return sum(row.size for row in self.files)

    @property
    def naive_disk_bytes(self) -> int:
        """Shipping one merged full model (foundation.ptd + model.pte) per adapter instead."""
        full_model = sum(row.size for row in self.files if row.role in ("program", "foundation"))
        return full_model * len(self.adapters)

    @property
    def disk_saving_bytes(self) -> int:
        return self.naive_disk_bytes - self.total_size

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "total_size": self.total_size,
            "naive_disk_bytes": self.naive_disk_bytes,
            "disk_saving_bytes": self.disk_saving_bytes,
            "ok": not self.problems,
        }


def _alora_words(tokens) -> str:
    return "an ordinary adapter" if tokens is None else f"aLoRA invocation tokens {list(tokens)}"


def inspect_bundle(bundle_dir: str | Path) -> BundleReport:
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    problems = verify_files(bundle_dir, manifest)
    slots = manifest.program_slots()
    for name, record in sorted(manifest.adapters.items()):
        path = bundle_dir / record.file
        if not path.is_file():
            continue  # already reported by verify_files
        try:
            contents = read_adapter_ptd(path)
        except BundleError as error:
            problems.append(str(error))
            continue
        stored = {str(t.dtype) for t in contents.tensors.values()}
        known = {dtype.value: str(dtype.numpy_dtype) for dtype in AdapterDtype}
        if stored and stored != {known.get(record.dtype, record.dtype)}:
            problems.append(f"{path}: manifest says {record.dtype}, the file stores {sorted(stored)}")
        in_manifest = None if record.alora_invocation_tokens is None else tuple(record.alora_invocation_tokens)
        if in_manifest != contents.alora_invocation_tokens:
            problems.append(f"{path}: manifest says {_alora_words(in_manifest)}, the file holds "
                            f"{_alora_words(contents.alora_invocation_tokens)} (the runtime follows the file)")
        try:
            check_adapter_for_program(contents, slots, path, str(bundle_dir / manifest.program.file))
        except AdapterError as error:
            problems.append(str(error))
    roles = {manifest.program.file: "program", manifest.foundation.file: "foundation"}
    if manifest.htp_program:
        roles[manifest.htp_program.file] = "htp program"
    roles.update({record.file: "adapter" for record in manifest.adapters.values()})
    files = []
    for name, record in sorted(manifest.files.items()):
        bad = [p for p in problems if p.startswith(str(bundle_dir / name))]
        files.append(FileRow(name, roles.get(name, "tokenizer"), record.size, bad[0] if bad else "ok"))
    adapters = [
        AdapterRow(name, r.rank, r.alpha, r.scaling, r.target_modules, manifest.files[r.file].size, r.dtype,
                   r.alora_invocation_tokens)
        for name, r in sorted(manifest.adapters.items())
    ]
    return BundleReport(
        bundle=str(bundle_dir),
        format_version=manifest.format_version,
        backend=manifest.program.backend,
        max_rank=manifest.program.max_rank,
        adapter_slots=manifest.program.adapter_slots,
        max_seq_len=manifest.program.max_seq_len,
        target_modules=manifest.program.target_modules,
        foundation_fingerprint=manifest.foundation.fingerprint,
        quantization=manifest.foundation.quantization,
        htp_program=manifest.htp_program,
        files=files,
        adapters=adapters,
        problems=problems,
    )
