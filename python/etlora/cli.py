"""The `etlora` command: export, add-adapter, remove-adapter, run, inspect.

Errors print as one line (`etlora: error: ...`) with exit code 2; --verbose adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from etlora.format.errors import EtloraError
from etlora.thread_pool import DEFAULT_WORKER_SPIN_US

console = Console(stderr=True)
stdout = Console()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.2f} MB" if size >= 1e5 else f"{size / 1e3:,.1f} kB"


def _parse_adapter(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=ADAPTER_DIR, received {text!r}")
    return name, path


@contextmanager
def _step(name: str):
    """One long step with a spinner, then its time."""
    started = time.perf_counter()
    with console.status(f"{name}..."):
        yield
    console.print(f"[green]✓[/] {name} ({time.perf_counter() - started:.1f} s)")


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


def _count_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, received {text!r}")
    return value


def _size_argument(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024, as llama.cpp's and dd's)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(number)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a size in bytes >= 0 (suffix K, M or G allowed), received {text!r}")
    return value * scale


def _parse_strength(text: str) -> tuple[str, float]:
    name, sep, strength = text.partition("=")
    try:
        return name, float(strength) if sep else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=STRENGTH, received {text!r}") from None


def _adapter_choices(pairs: list[tuple[str, float]], where: str) -> dict[str, float]:
    names = [name for name, _ in pairs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # a dict would keep the last strength without a word
        raise EtloraError(f"{where}: expected each adapter once, received {', '.join(map(repr, twice))} more than once "
                          f"(hint: {'one --adapter ' if where == '--adapter' else ''}{twice[0]}=STRENGTH"
                          f"{'' if where == '--adapter' else ' once'})")
    return dict(pairs)


def _resident_line(session) -> str:
    names = session.resident_adapters
    return (f"resident: {len(names)} adapter file(s), {session.resident_adapter_bytes / 1e6:.2f} MB"
            + (f" ({', '.join(names)})" if names else ""))


def _chat(session, args, lines) -> int:
    """--chat: each line a prompt answered with the adapters active then, or a command:
    `/adapters a=1,b=0.5` switches (alone: none), `/quit` ends. The KV cache's exact prefix is kept
    from one prompt to the next. A refused command leaves the session as it was and the loop goes
    on; the exit status is 1 if anything failed (etlora_runner --chat reads the same lines)."""
    status = 0
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            break
        try:
            if text == "/adapters" or text.startswith("/adapters "):
                items = [item.strip() for item in text[len("/adapters"):].split(",") if item.strip()]
                pairs = []
                for item in items:
                    try:
                        pairs.append(_parse_strength(item))
                    except argparse.ArgumentTypeError as error:
                        raise EtloraError(f"/adapters: {error}") from None
                chosen = _adapter_choices(pairs, "/adapters")
                session.set_adapters(chosen)
                console.print(f"adapters: {len(chosen)} active | {_resident_line(session)}", highlight=False,
                              soft_wrap=True)
            elif text.startswith("/"):
                raise EtloraError(f"unknown command {text} (expected /adapters NAME[=STRENGTH],... or /quit)")
            else:
                _generate(session, args, text, keep_prefix=True)
        except EtloraError as error:
            console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
            status = 1
    return status


def _generate(session, args, prompt: str, keep_prefix: bool) -> None:
    result = session.generate(
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat=not args.no_chat_template,
        on_text=lambda text: print(text, end="", flush=True),
        keep_prefix=keep_prefix,
    )
    print(flush=True)
    kept = f", {result.reused_tokens} kept from the cache" if keep_prefix else ""
    console.print(
        f"prefill: {result.prompt_tokens} tokens, {result.prefill_tokens_per_second:.1f} tok/s{kept} | "
        f"decode: {len(result.token_ids)} tokens, {result.decode_tokens_per_second:.1f} tok/s "
        f"(stopped: {result.stop_reason})"
    )


def cmd_run(args) -> int:
    import etlora

    adapters = _adapter_choices(args.adapter or [], "--adapter")
    if args.run_verbose or args.verbose:  # ExecuTorch's own info lines; by default only its errors
        from etlora import _runtime

        _runtime.set_runtime_log_verbose(True)
    etlora.configure_thread_pool(args.pool_spin_us)
    if args.kernel_path:
        etlora.select_kernel_path(args.kernel_path)
    with _step("loading bundle"):
        session = etlora.load(args.bundle, adapters=adapters, packed_cache=not args.no_packed_cache,
                              cache_dir=args.packed_cache,
                              packed_cache_residency="map" if args.map_packed_cache else "copy",
                              max_resident_adapters=args.max_resident_adapters,
                              max_resident_adapter_bytes=args.max_resident_adapter_bytes,
                              backend=args.run_backend)
    console.print(f"backend: {session.backend} ({escape(session.backend_reason)})", highlight=False, soft_wrap=True)
    active = ", ".join(f"{name}={strength:g}" for name, strength in adapters.items()) or "none"
    console.print(f"adapters: {active}")
    if args.run_verbose or args.verbose:
        console.print(_runtime_line(), highlight=False, soft_wrap=True)
    if args.chat:
        return _chat(session, args, sys.stdin)
    _generate(session, args, args.prompt, keep_prefix=False)
    return 0


def _runtime_line() -> str:
    """CPU, kernel path and thread pool: what a speed figure depends on besides the bundle."""
    import etlora
    from etlora.kernel_path import cpu_model

    runnable = ", ".join(path.name for path in etlora.kernel_paths() if path.runnable)
    pool = etlora.thread_pool_state()
    return (f"cpu: {cpu_model()} | kernel path: {etlora.kernel_path()} (runnable here: {runnable}) | "
            f"thread pool: {pool.worker_threads + 1} threads, workers spin {pool.worker_spin_us:g} us")


def _parse_load_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, received {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_report(args) -> int:
    from etlora.report import build_report, write_report

    adapters = [name for name in (args.adapters or "").split(",") if name]
    report = build_report(args.bundle, args.out, adapters, naive=args.naive,
                          log=lambda text: console.print(f"  {text}"), load_options=dict(args.load_option or []))
    paths = write_report(report, args.out)
    stdout.print(f"wrote {', '.join(str(path) for path in paths.values())}")
    for target in report.targets:
        verdict = "not measured" if target.passed is None else "PASS" if target.passed else "FAIL"
        stdout.print(f"  {verdict}: {target.name}: {target.measured} (limit {target.limit})", highlight=False)
    if report.naive_note:
        console.print(f"note: {escape(report.naive_note)}", highlight=False, soft_wrap=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from etlora.format.backends import DEFAULT_SOC, BackendRequest, Soc

    parser = argparse.ArgumentParser(
        prog="etlora",
        description="Ship one language model with many LoRA adapters on ExecuTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  etlora export --model smollm2/ --adapter support=adapters/support --out bundle/",
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

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

    run = commands.add_parser(
        "run",
        help="generate text with the C++ runtime, streaming tokens, then prefill/decode tokens/s",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='example:\n  etlora run bundle/ --adapter support=0.8 --prompt "How do I reset my password?"',
    )
    run.add_argument("bundle", help="bundle directory")
    run.add_argument("--adapter", action="append", type=_parse_strength, metavar="NAME[=STRENGTH]",
                     help="adapter to activate, strength 1 by default; repeat up to the program's slots")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="user message (the chat template is applied)")
    source.add_argument("--chat", action="store_true",
                        help="prompts from stdin, one per line; '/adapters a=1,b=0.5' switches adapters "
                             "('/adapters' alone: none), '/quit' ends; the KV cache's exact prefix is kept")
    run.add_argument("--max-resident-adapters", type=_count_argument, default=0, metavar="N",
                     help="adapter files kept open for a fast switch back, least recently used closed "
                          "first (default 0: no limit)")
    run.add_argument("--max-resident-adapter-bytes", type=_size_argument, default=0, metavar="SIZE",
                     help="the same budget in bytes of adapter files, e.g. 64M (default 0: no limit); the "
                          "active adapters always stay open")
    run.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many tokens (default 128)")
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    run.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold when sampling")
    run.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    run.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    run.add_argument("--packed-cache", metavar="DIR", default=None,
                     help="folder for the packed foundation file (default BUNDLE/.etlora-cache)")
    run.add_argument("--no-packed-cache", action="store_true",
                     help="pack the foundation weights at load without keeping them in a file")
    run.add_argument("--map-packed-cache", action="store_true",
                     help="keep the packed file mapped instead of copying its weights into memory")
    run.add_argument("--pool-spin-us", type=float, default=DEFAULT_WORKER_SPIN_US, metavar="N",
                     help="idle thread-pool workers spin N microseconds before sleeping "
                          "(default 1000; 0 saves power, decodes slower)")
    run.add_argument("--kernel-path", metavar="NAME", default=None,
                     help="vector path of etlora's kernels: auto (default: ETLORA_KERNEL_PATH, else "
                          "the best this CPU runs), avx512, avx2, portable")
    run.add_argument("--backend", dest="run_backend", choices=[request.value for request in BackendRequest],
                     default="auto",
                     help="program to run, decided before loading: auto (default: the bundle's HTP program "
                          "when this device can run it, else XNNPACK; the choice and its reason are printed), "
                          "xnnpack, htp (an error when it cannot run)")
    run.add_argument("--verbose", dest="run_verbose", action="store_true",
                     help="also print the CPU, the kernel path and the thread pool in use")
    run.set_defaults(run=cmd_run)

    inspect = commands.add_parser(
        "inspect",
        help="files, sizes, adapters, ranks, targets; verifies sizes and sha256 (exit 1 if damaged)",
        epilog="example: etlora inspect bundle/ --json",
    )
    inspect.add_argument("bundle", help="bundle directory")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.set_defaults(run=cmd_inspect)

    report = commands.add_parser(
        "report",
        help="memory and disk: the bundle's sessions vs one merged full model per adapter (child processes)",
        epilog="example: etlora report bundle/ --adapters support,legal --out report/",
    )
    report.add_argument("bundle", help="bundle directory")
    report.add_argument("--adapters", help="comma list of adapters to measure (default: all in the bundle)")
    report.add_argument("--out", default="report", help="folder for report.json/.md/.png (default report/)")
    report.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                        help="also merge, export and measure one full model per adapter (default on; cached "
                        "under OUT/naive_cache/)")
    report.add_argument("--load-option", action="append", type=_parse_load_option, metavar="KEY=VALUE",
                        help="passed to every etlora.load of the bundle, e.g. cache_dir=/tmp/packed "
                        "(VALUE read as JSON when it parses, else as text)")
    report.set_defaults(run=cmd_report)
    return parser


def run_shown(*argv: str) -> None:
    """Echo and run one etlora command the way a user would type it (demo scripts); exit on failure."""
    print(f"\n$ etlora {' '.join(argv)}", flush=True)
    code = main(list(argv))
    if code != 0:
        sys.exit(f"etlora {argv[0]} failed with exit code {code}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.verbose or getattr(args, "run_verbose", False)):
        # torch, torchao, transformers and ExecuTorch warn about their own deprecations on every
        # export; etlora's lines are its own output and its logging, so --verbose brings these back.
        warnings.filterwarnings("ignore")
    try:
        return args.run(args)
    except EtloraError as error:
        if args.verbose:
            console.print_exception()
        console.print(f"[red]etlora: error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("etlora: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
