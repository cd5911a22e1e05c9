"""`etlora run`: generate with the C++ runtime, one prompt or a --chat session from stdin.

What a user types (NAME[=STRENGTH] lists, chat lines, K/M/G sizes) is parsed by the runtime's own
parser (runtime_cpp/include/etlora/chat_commands.h), the one etlora_runner uses, so both tools accept
and refuse the same text with the same words.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

from rich.markup import escape

from etlora.cli.output import console, step
from etlora.format.backends import BackendRequest
from etlora.format.errors import EtloraError
from etlora.thread_pool import DEFAULT_WORKER_SPIN_US


def _runtime():
    from etlora import _runtime

    return _runtime


def count_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, received {text!r}")
    return value


def byte_size_argument(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024, as llama.cpp's and dd's)."""
    try:
        return _runtime().parse_byte_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def strength_argument(text: str) -> tuple[str, float]:
    try:
        return _runtime().parse_named_adapter(text, "")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _each_once(pairs: list[tuple[str, float]], where: str) -> dict[str, float]:
    try:
        _runtime().check_each_adapter_once(pairs, where)
    except ValueError as error:
        raise EtloraError(str(error)) from None
    return dict(pairs)


def _resident_line(session) -> str:
    return _runtime().resident_line(session.resident_adapters, session.resident_adapter_bytes)


def _chat(session, args, lines: Iterable[str]) -> int:
    """--chat: each line a prompt answered with the adapters active then, or a command:
    `/adapters a=1,b=0.5` switches (alone: none), `/quit` ends. The KV cache's exact prefix is kept
    from one prompt to the next. A refused command leaves the session as it was and the loop goes
    on; the exit status is 1 if anything failed (etlora_runner --chat reads the same lines)."""
    status = 0
    for line in lines:
        try:
            try:
                kind, prompt, adapters = _runtime().parse_chat_line(line)
            except ValueError as error:
                raise EtloraError(str(error)) from None
            if kind == "quit":
                break
            if kind == "adapters":
                session.set_adapters(dict(adapters))
                console.print(f"adapters: {len(adapters)} active | {_resident_line(session)}", highlight=False,
                              soft_wrap=True)
            elif kind == "prompt":
                _generate(session, args, prompt, keep_prefix=True)
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


def _runtime_line() -> str:
    """CPU, kernel path and thread pool: what a speed figure depends on besides the bundle."""
    import etlora
    from etlora.kernel_path import cpu_model

    runnable = ", ".join(path.name for path in etlora.kernel_paths() if path.runnable)
    pool = etlora.thread_pool_state()
    return (f"cpu: {cpu_model()} | kernel path: {etlora.kernel_path()} (runnable here: {runnable}) | "
            f"thread pool: {pool.worker_threads + 1} threads, workers spin {pool.worker_spin_us:g} us")


def cmd_run(args) -> int:
    import etlora

    adapters = _each_once(args.adapter or [], "--adapter")
    if args.run_verbose or args.verbose:  # ExecuTorch's own info lines; by default only its errors
        _runtime().set_runtime_log_verbose(True)
    etlora.configure_thread_pool(args.pool_spin_us)
    if args.kernel_path:
        etlora.select_kernel_path(args.kernel_path)
    with step("loading bundle"):
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


def add_parser(commands) -> None:
    run = commands.add_parser(
        "run",
        help="generate text with the C++ runtime, streaming tokens, then prefill/decode tokens/s",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='example:\n  etlora run bundle/ --adapter support=0.8 --prompt "How do I reset my password?"',
    )
    run.add_argument("bundle", help="bundle directory")
    run.add_argument("--adapter", action="append", type=strength_argument, metavar="NAME[=STRENGTH]",
                     help="adapter to activate, strength 1 by default; repeat up to the program's slots")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="user message (the chat template is applied)")
    source.add_argument("--chat", action="store_true",
                        help="prompts from stdin, one per line; '/adapters a=1,b=0.5' switches adapters "
                             "('/adapters' alone: none), '/quit' ends; the KV cache's exact prefix is kept")
    run.add_argument("--max-resident-adapters", type=count_argument, default=0, metavar="N",
                     help="adapter files kept open for a fast switch back, least recently used closed "
                          "first (default 0: no limit)")
    run.add_argument("--max-resident-adapter-bytes", type=byte_size_argument, default=0, metavar="SIZE",
                     help="the same budget in bytes of adapter files, e.g. 64M (default 0: no limit); the "
                          "active adapters always stay open")
    run.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many tokens (default 128)")
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    run.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold when sampling")
    run.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    run.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    run.add_argument("--packed-cache", metavar="DIR", default=None,
                     help="folder for the packed cache file (default BUNDLE/.etlora-cache)")
    run.add_argument("--no-packed-cache", action="store_true",
                     help="pack the foundation weights at load without keeping them in a file")
    run.add_argument("--map-packed-cache", action="store_true",
                     help="keep the packed cache file mapped instead of copying its weights into memory")
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
