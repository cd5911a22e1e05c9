"""Writing bundles: `export_bundle` (foundation + adapters -> a new bundle) and `add_adapter`.

Every input is validated before the slow work starts, and a bundle appears under its final name
only when complete.
"""

from __future__ import annotations

import secrets
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager

from etlora.format.adapter_format import AdapterDtype
from etlora.format.backends import DEFAULT_SOC, Backend, BackendRequest, Soc
from etlora.format.errors import AdapterError, BundleError, EtloraError
from etlora.format.files import bundle_lock, staged_directory
from etlora.format.manifest import (
    ADAPTER_DIR,
    FOUNDATION_FILE,
    HTP_PROGRAM_FILE,
    PROGRAM_FILE,
    AdapterRecord,
    FileRecord,
    HtpProgramRecord,
    QuantizationRecord,
    FoundationRecord,
    Manifest,
    ProgramRecord,
    TokenizerRecord,
    read_manifest,
)

from .adapter_file import padded_adapter_tensors, write_adapter_ptd
from .adapters import LoraAdapter, check_adapter_name, load_adapter, program_sites, resolve_target_modules
from .foundation import config_summary, load_foundation
from .model import ROPE_BUFFERS
from .program import ProgramSpec, lower_program
from .program_plan import ProgramPlan, plan_programs
from .quantization import FoundationQuantization, module_patterns, sizes_by_pattern
from .tokenizer_file import check_tokenizer

Step = Callable[[str], ContextManager]
Log = Callable[[str], None]


def _no_progress(_: str) -> ContextManager:
    return nullcontext()


def _no_log(_: str) -> None:
    pass


@dataclass(frozen=True)
class ExportOptions:
    max_rank: int | None = None
    target_modules: str | None = None  # "q_proj,v_proj" or "all-linear"; None = union of adapters
    adapter_slots: int = 1
    max_seq_len: int = 512
    # model.pte (XNNPACK) always; an HTP program beside it for htp, and for auto when a usable
    # QNN SDK is found (program_plan.py).
    backend: BackendRequest = BackendRequest.AUTO
    soc: Soc = DEFAULT_SOC  # what the HTP program is compiled for
    quantization: FoundationQuantization = FoundationQuantization()  # adapters stay float
    adapter_dtype: AdapterDtype = AdapterDtype.FP32  # of the adapter files; the math is float32
    tokenizer: bool = True  # False: leave the checkpoint's tokenizer out (token ids only)


def adapter_record(adapter: LoraAdapter, file: str, dtype: AdapterDtype) -> AdapterRecord:
    return AdapterRecord(
        file=file,
        rank=adapter.rank,
        alpha=adapter.alpha,
        scaling=adapter.scaling,
        use_rslora=adapter.use_rslora,
        target_modules=adapter.target_modules,
        base_model=adapter.base_model,
        source=adapter.source,
        dtype=dtype.value,
        alora_invocation_tokens=(list(adapter.alora_invocation_tokens)
                                 if adapter.alora_invocation_tokens is not None else None),
    )


def _program_spec(shape, adapters: list[LoraAdapter], options: ExportOptions) -> ProgramSpec:
    options.quantization.check(shape)
    largest = max((adapter.rank for adapter in adapters), default=0)
    max_rank = options.max_rank if options.max_rank is not None else largest
    target_modules = resolve_target_modules(options.target_modules, adapters)
    if not target_modules:  # foundation only: the baseline that adapter costs are measured against
        max_rank = 0
    elif max_rank < 1:
        raise AdapterError("--max-rank: expected a rank >= 1 (or at least one adapter to take it from)")
    if options.adapter_slots < 1:
        raise AdapterError(f"--adapter-slots: expected >= 1, received {options.adapter_slots}")
    if options.max_seq_len < 2:
        raise AdapterError(f"--max-seq-len: expected >= 2, received {options.max_seq_len}")
    return ProgramSpec(
        sites=tuple(program_sites(shape, target_modules)),
        target_modules=tuple(target_modules),
        max_rank=max_rank,
        adapter_slots=options.adapter_slots,
        max_seq_len=options.max_seq_len,
        backend=Backend.XNNPACK,  # model.pte; the HTP program is built from the same spec
        quantization=options.quantization,
    )


def export_bundle(
    model_path: str | Path,
    adapter_dirs: dict[str, str | Path],
    out_dir: str | Path,
    options: ExportOptions = ExportOptions(),
    step: Step = _no_progress,
    log: Log = _no_log,
) -> Manifest:
    """`log` receives one line saying which programs are built and why (e.g. 'backend auto:
    xnnpack (no QNN SDK: QNN_SDK_ROOT not set)'); `--backend htp` without a usable SDK raises here,
    before anything is loaded."""
    out_dir = Path(out_dir)
    plan = plan_programs(options.backend, options.soc)
    log(plan.line)
    with step("loading foundation"):
        foundation = load_foundation(model_path, options.max_seq_len)
        if not options.tokenizer:
            foundation = replace(foundation, tokenizer=None)
        elif foundation.tokenizer is not None:  # refused now, not after minutes of lowering
            check_tokenizer(foundation.tokenizer)
    with step("loading adapters"):
        adapters = [load_adapter(name, path, foundation.shape) for name, path in adapter_dirs.items()]
        spec = _program_spec(foundation.shape, adapters, options)
        slots = spec.slots(foundation)
        for adapter in adapters:  # raises on rank or target problems before the slow lowering
            padded_adapter_tensors(adapter, slots)
    with step("lowering program"):
        lowered = lower_program(foundation, spec)
    htp = None
    if plan.htp:
        with step(f"lowering HTP program for {plan.soc.value}"):
            htp = _lower_htp_program(foundation, spec, plan)
    with step("writing bundle"), staged_directory(out_dir) as staging:
        (staging / PROGRAM_FILE).write_bytes(lowered.program_bytes)
        (staging / FOUNDATION_FILE).write_bytes(lowered.foundation_bytes)
        htp_files, htp_record = [], None
        if htp is not None:
            (staging / HTP_PROGRAM_FILE).write_bytes(htp.lowered.program_bytes)
            htp_files = [HTP_PROGRAM_FILE]
            htp_record = HtpProgramRecord(
                file=HTP_PROGRAM_FILE,
                soc=plan.soc.value,
                qnn_sdk_version=plan.sdk.version_found,
                chunk_len=htp.chunk_len,
                cache_len=htp.cache_len,
                foundation_in_context_bytes=htp.foundation_in_program_bytes,
            )
        records = {}
        for adapter in adapters:
            relative = f"{ADAPTER_DIR}/{adapter.name}.ptd"
            write_adapter_ptd(adapter, slots, staging / relative, options.adapter_dtype)
            records[adapter.name] = adapter_record(adapter, relative, options.adapter_dtype)
        tokenizer_files, tokenizer = _write_tokenizer(foundation, staging)
        files = [PROGRAM_FILE, *htp_files, FOUNDATION_FILE, *tokenizer_files,
                 *(record.file for record in records.values())]
        manifest = Manifest(
            program=ProgramRecord(
                file=PROGRAM_FILE,
                backend=spec.backend.value,
                max_rank=spec.max_rank,
                adapter_slots=spec.adapter_slots,
                max_seq_len=spec.max_seq_len,
                sites=list(spec.sites),
                site_dims=[list(dims) for dims in slots.site_dims],
                target_modules=list(spec.target_modules),
            ),
            foundation=FoundationRecord(
                file=FOUNDATION_FILE,
                fingerprint=foundation.fingerprint,
                source=foundation.source,
                config=config_summary(foundation),
                weights_id=spec.quantization.weights_id(foundation.fingerprint),
                quantization=_quantization_record(foundation, spec, lowered.quantized_modules),
            ),
            files={name: FileRecord.of(staging / name) for name in files},
            adapters=records,
            tokenizer=tokenizer,
            htp_program=htp_record,
        )
        manifest.write(staging)
    return manifest


def _lower_htp_program(foundation, spec: ProgramSpec, plan: ProgramPlan):
    """The HTP program for plan.soc from the float checkpoint (fp16 on the HTP, whatever
    --quantize says of model.pte), with model.pte's sites, rank and slots: one adapter file
    serves both."""
    from .htp_program import DEFAULT_CHUNK_LEN, HtpShape, lower_htp_shaped
    from .qnn_lowering import qnn_htp_lowering

    htp_spec = replace(spec, backend=Backend.HTP, quantization=FoundationQuantization())
    shape = HtpShape(chunk_len=min(DEFAULT_CHUNK_LEN, spec.max_seq_len), cache_len=spec.max_seq_len)
    return lower_htp_shaped(foundation, htp_spec, shape, qnn_htp_lowering(plan.soc, plan.sdk))


def _quantization_record(foundation, spec: ProgramSpec, quantized_modules: tuple[str, ...]) -> QuantizationRecord:
    """What foundation.ptd holds as integers, and the float32 tensors left beside them, with sizes."""
    quantization = spec.quantization
    if not quantization.quantized:
        return QuantizationRecord()
    integer_weights = {f"{path}.weight" for path in quantized_modules}
    float_weights = {name: tensor.numel() * 4 for name, tensor in foundation.state_dict.items()
                     if name not in integer_weights}
    for table, rotary_dim in foundation.shape.rope_table_dims.items():  # each [max_seq_len, rotary_dim]
        float_weights.update({name: spec.max_seq_len * rotary_dim * 4 for name in ROPE_BUFFERS[table]})
    return QuantizationRecord(
        scheme=quantization.scheme.value,
        group_size=quantization.group_size,
        embedding_bits=quantization.embedding_bits,
        embedding_group_size=quantization.embedding_group_size,
        head_bits=quantization.head_bits,
        quantized_modules=module_patterns(list(quantized_modules)),
        float_weights=sizes_by_pattern(float_weights),
    )


def _write_tokenizer(foundation, staging: Path) -> tuple[list[str], TokenizerRecord | None]:
    from .tokenizer_file import TOKENIZER_DIR, TOKENIZER_JSON, write_tokenizer_files

    if foundation.tokenizer is None:
        return [], None
    if len(foundation.tokenizer) > foundation.shape.vocab_size:
        raise EtloraError(
            f"{foundation.source}: tokenizer has {len(foundation.tokenizer)} tokens, the model's "
            f"vocabulary {foundation.shape.vocab_size} (hint: tokenizer from another model?)"
        )
    written = write_tokenizer_files(foundation.tokenizer, staging / TOKENIZER_DIR)
    return written, TokenizerRecord(TOKENIZER_DIR, f"{TOKENIZER_DIR}/{TOKENIZER_JSON}")


def add_adapter(
    bundle_dir: str | Path,
    name: str,
    adapter_dir: str | Path,
    replace_existing: bool = False,
    dtype: AdapterDtype = AdapterDtype.FP32,
) -> Manifest:
    """Add one adapter to an existing bundle without touching its program or foundation."""
    bundle_dir = Path(bundle_dir)
    read_manifest(bundle_dir)  # a clear error for a directory that is no bundle, before locking it
    with bundle_lock(bundle_dir):
        return _add_adapter_locked(bundle_dir, name, adapter_dir, replace_existing, dtype)


def _add_adapter_locked(
    bundle_dir: Path, name: str, adapter_dir: str | Path, replace_existing: bool, dtype: AdapterDtype
) -> Manifest:
    from .families import DecoderShape

    manifest = read_manifest(bundle_dir)
    check_adapter_name(name)
    if name in manifest.adapters and not replace_existing:
        raise AdapterError(
            f"{bundle_dir}: adapter {name!r} already exists (hint: choose another name or pass --replace)"
        )
    shape = DecoderShape.from_summary(manifest.foundation.config)
    adapter = load_adapter(name, adapter_dir, shape)
    relative = _unreferenced_adapter_path(manifest, name)
    write_adapter_ptd(adapter, manifest.program_slots(), bundle_dir / relative, dtype)
    replaced = manifest.adapters.get(name)
    files = {k: v for k, v in manifest.files.items() if not replaced or k != replaced.file}
    updated = replace(
        manifest,
        files={**files, relative: FileRecord.of(bundle_dir / relative)},
        adapters={**manifest.adapters, name: adapter_record(adapter, relative, dtype)},
    )
    updated.write(bundle_dir)  # the commit point: before it the old bundle stands, after it the new
    if replaced and replaced.file != relative:
        (bundle_dir / replaced.file).unlink(missing_ok=True)
    return updated


def _unreferenced_adapter_path(manifest: Manifest, name: str) -> str:
    """adapters/<name>.ptd, or adapters/<name>-<hex>.ptd while the manifest still lists that name:
    a file the manifest references is never overwritten, so a kill mid-replace leaves a valid bundle."""
    relative = f"{ADAPTER_DIR}/{name}.ptd"
    while relative in manifest.files:
        relative = f"{ADAPTER_DIR}/{name}-{secrets.token_hex(4)}.ptd"
    return relative


def remove_adapter(bundle_dir: str | Path, name: str) -> Manifest:
    bundle_dir = Path(bundle_dir)
    read_manifest(bundle_dir)
    with bundle_lock(bundle_dir):
        return _remove_adapter_locked(bundle_dir, name)


def _remove_adapter_locked(bundle_dir: Path, name: str) -> Manifest:
    manifest = read_manifest(bundle_dir)
    if name not in manifest.adapters:
        raise BundleError(f"{bundle_dir}: no adapter named {name!r} (has: {sorted(manifest.adapters)})")
    record = manifest.adapters[name]
    updated = replace(
        manifest,
        files={k: v for k, v in manifest.files.items() if k != record.file},
        adapters={k: v for k, v in manifest.adapters.items() if k != name},
    )
    updated.write(bundle_dir)
    (bundle_dir / record.file).unlink(missing_ok=True)
    return updated
