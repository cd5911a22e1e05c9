"""`etlora export`, `add-adapter`, `remove-adapter` and `inspect`: making and checking bundles."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from etlora.cli.output import console, megabytes as _megabytes, step as _step, stdout
from etlora.format.errors import EtloraError


def _parse_adapter(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=ADAPTER_DIR, received {text!r}")
    return name, path


def _print_summary(bundle_dir: Path, seconds: float) -> None:
    from etlora.inspect_bundle import inspect_bundle

    report = inspect_bundle(bundle_dir)
    files = ", ".join(f"{row.name} {_megabytes(row.size)}" for row in report.files)
    stdout.print(f"{bundle_dir}: {files}; total {_megabytes(report.total_size)} in {seconds:.1f} s")


def cmd_export(args) -> int:
    from etlora.export import ExportOptions, export_bundle
    from etlora.export.quantization import FoundationQuantization
    from etlora.format.adapter_format import AdapterDtype
    from etlora.format.backends import BackendRequest, Soc

    adapters = dict(args.adapter or [])
    if len(adapters) != len(args.adapter or []):
        raise EtloraError("--adapter: the same adapter name is given twice")
    quantization = FoundationQuantization.from_options(args.quantize, args.group_size, args.quantize_embedding,
                                                       args.embedding_group_size, args.head_bits)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise EtloraError(f"{out}: exists and is not empty (hint: pass --force to replace it)")
    started = time.perf_counter()
    options = ExportOptions(
        max_rank=args.max_rank,
        target_modules=args.target_modules,
        adapter_slots=args.adapter_slots,
        max_seq_len=args.max_seq_len,
        backend=BackendRequest(args.backend),
        soc=Soc(args.soc),
        quantization=quantization,
        adapter_dtype=AdapterDtype.parse(args.adapter_dtype),
        tokenizer=not args.no_tokenizer,
    )
    export_bundle(args.model, adapters, out, options, step=_step,
                  log=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    _print_summary(out, time.perf_counter() - started)
    return 0


def cmd_add_adapter(args) -> int:
    from etlora.export import add_adapter
    from etlora.format.adapter_format import AdapterDtype

    dtype = AdapterDtype.parse(args.adapter_dtype)
    started = time.perf_counter()
    for name, path in args.adapter:
        with _step(f"adding adapter {name}"):
            add_adapter(args.bundle, name, path, replace_existing=args.replace, dtype=dtype)
    _print_summary(Path(args.bundle), time.perf_counter() - started)
    return 0


def cmd_remove_adapter(args) -> int:
    from etlora.export import remove_adapter

    remove_adapter(args.bundle, args.name)
    stdout.print(f"removed adapter {args.name} from {args.bundle}")
    return 0


def cmd_inspect(args) -> int:
    from etlora.inspect_bundle import inspect_bundle

    report = inspect_bundle(args.bundle)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 1 if report.problems else 0
    stdout.print(
        f"[bold]{report.bundle}[/]  format v{report.format_version}, backend {report.backend}, "
        f"max rank {report.max_rank}, {report.adapter_slots} slot(s), max seq {report.max_seq_len}, "
        f"targets {','.join(report.target_modules)}, foundation {report.foundation_fingerprint[:12]}"
    )
    quantization = report.quantization
    line = f"foundation weights: {quantization.describe()}"
    if quantization.quantized_modules:
        left = ", ".join(f"{name} {_megabytes(size)}" for name, size in quantization.float_weights.items())
        line += f" in {', '.join(quantization.quantized_modules)}; left in float32: {left}"
    stdout.print(line, soft_wrap=True)
    stdout.print(_htp_line(report.htp_program), soft_wrap=True, highlight=False)
    files = Table("file", "role", "size", "check")
    for row in report.files:
        files.add_row(row.name, row.role, _megabytes(row.size), "ok" if row.status == "ok" else "[red]BAD[/]")
    files.add_row("total", "", _megabytes(report.total_size), "")
    stdout.print(files)
    adapters = Table("adapter", "rank", "alpha", "scaling", "targets", "dtype", "size")
    for row in report.adapters:
        adapters.add_row(
            row.name, str(row.rank), f"{row.alpha:g}", f"{row.scaling:g}", ",".join(row.target_modules), row.dtype,
            _megabytes(row.size),
        )
    stdout.print(adapters)
    for row in report.adapters:
        if row.describe_alora():
            stdout.print(f"{row.name}: {row.describe_alora()}", soft_wrap=True, highlight=False)
    if report.adapters:
        stdout.print(
            f"disk: bundle {_megabytes(report.total_size)} vs {len(report.adapters)} full models "
            f"{_megabytes(report.naive_disk_bytes)} (saves {_megabytes(report.disk_saving_bytes)})"
        )
    for problem in report.problems:
        console.print(f"[red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    return 1 if report.problems else 0


def _htp_line(htp) -> str:
    """The HTP program and how much of the foundation it stores a second time."""
    if htp is None:
        return "htp program: none (XNNPACK only)"
    duplicated = (
        f"{_megabytes(htp.foundation_in_context_bytes)} of foundation data duplicated inside it (QNN context binary)"
        if htp.foundation_in_context_bytes else "foundation shared with foundation.ptd (0 bytes duplicated)"
    )
    return (f"htp program: {htp.file} for {htp.soc} (QNN SDK {htp.qnn_sdk_version}), chunk {htp.chunk_len} "
            f"tokens, cache {htp.cache_len} rows; {duplicated}")


def add_parsers(commands) -> None:
    from etlora.format.backends import DEFAULT_SOC, BackendRequest, Soc

    export = commands.add_parser(
        "export",
        help="foundation + PEFT adapters -> bundle (model.pte, foundation.ptd, adapters/*.ptd)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  etlora export --model llama/ --adapter support=out/support "
        "--adapter legal=out/legal --max-rank 16 --target-modules all-linear --out bundle/",
    )
    export.add_argument("--model", required=True, help="Hugging Face Llama checkpoint directory, or a .gguf file")
    export.add_argument(
        "--adapter", action="append", type=_parse_adapter, metavar="NAME=DIR",
        help="a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors); repeatable",
    )
    export.add_argument("--out", required=True, help="bundle directory to create")
    export.add_argument(
        "--max-rank", type=int, help="LoRA rank the program is built for (default: largest adapter rank)"
    )
    export.add_argument(
        "--target-modules",
        help="modules that get adapter slots: comma list (q_proj,v_proj,...), all-linear, or none "
        "for a foundation-only program (default: union of the adapters' targets)",
    )
    export.add_argument("--adapter-slots", type=int, default=1, help="adapters active at once (default 1)")
    export.add_argument("--max-seq-len", type=int, default=512, help="KV cache length (default 512)")
    export.add_argument("--backend", choices=[request.value for request in BackendRequest], default="auto",
                        help="programs in the bundle: xnnpack (model.pte, any CPU), htp (model.pte plus an HTP "
                             "program for --soc; needs a QNN SDK 2.37, fails at once without one), auto (default: "
                             "htp when a usable QNN SDK is found, else xnnpack; the choice is printed)")
    export.add_argument("--soc", choices=[soc.value for soc in Soc], default=DEFAULT_SOC.value,
                        help=f"Snapdragon SoC the HTP program is compiled for (default {DEFAULT_SOC.value})")
    export.add_argument("--quantize", default="fp32", metavar="SCHEME",
                        help="foundation weights: fp32 (default), 8da4w (8-bit dynamic activations, 4-bit "
                             "grouped weights) or 8da8w (8-bit per-channel weights); adapters stay float")
    export.add_argument("--group-size", type=int, default=None, metavar="N",
                        help="weights per scale for --quantize (default 32 for 8da4w, per channel for 8da8w)")
    export.add_argument("--head-bits", type=int, default=None, metavar="BITS",
                        help="the output head's weights with --quantize: 8 per row (default, as llama.cpp's Q4 "
                             "files keep it) or 4 like the other linears (8da4w only)")
    export.add_argument("--quantize-embedding", type=int, default=None, metavar="BITS",
                        help="also store the token embedding as 4- or 8-bit integers (ExecuTorch's quantized "
                             "embedding kernels); needs --quantize")
    export.add_argument("--embedding-group-size", type=int, default=None, metavar="N",
                        help="embedding values per scale (default 32 for 4 bits, per row for 8)")
    export.add_argument("--adapter-dtype", default="fp32", metavar="DTYPE",
                        help="how adapter files store LoRA weights: fp32 (default) or fp16, half the size; "
                             "the runtime computes LoRA in float32 either way")
    export.add_argument("--no-tokenizer", action="store_true",
                        help="leave the checkpoint's tokenizer out: the bundle then takes token ids only "
                             "(for tokenizers the C++ runtime does not read yet)")
    export.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    export.set_defaults(run=cmd_export)

    add = commands.add_parser(
        "add-adapter",
        help="add PEFT adapters to a bundle without re-exporting the program",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  etlora add-adapter bundle/ --adapter sql=out/sql",
    )
    add.add_argument("bundle", help="bundle directory")
    add.add_argument("--adapter", action="append", type=_parse_adapter, required=True, metavar="NAME=DIR",
                     help="a PEFT LoRA adapter directory; repeatable")
    add.add_argument("--replace", action="store_true", help="overwrite an adapter of the same name")
    add.add_argument("--adapter-dtype", default="fp32", metavar="DTYPE",
                     help="how adapter files store LoRA weights: fp32 (default) or fp16, half the size; "
                             "the runtime computes LoRA in float32 either way")
    add.set_defaults(run=cmd_add_adapter)

    remove = commands.add_parser("remove-adapter", help="delete an adapter from a bundle",
                                 epilog="example: etlora remove-adapter bundle/ sql")
    remove.add_argument("bundle", help="bundle directory")
    remove.add_argument("name", help="adapter name")
    remove.set_defaults(run=cmd_remove_adapter)

    inspect = commands.add_parser(
        "inspect",
        help="files, sizes, adapters, ranks, targets; verifies sizes and sha256 (exit 1 if damaged)",
        epilog="example: etlora inspect bundle/ --json",
    )
    inspect.add_argument("bundle", help="bundle directory")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.set_defaults(run=cmd_inspect)


