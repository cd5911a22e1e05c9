#!/usr/bin/env python3
"""Adapter switching as a user feels it: etlora and llama.cpp side by side, in one run.

For a bundle with at least two adapters (SmolLM2 demo bundle: json, shout, zorbish), medians of:
  - rebind_open_us: `session.set_adapters({b: 1})` when b's file is already open (Python call,
    and the raw binding call underneath)
  - first_open_ms: the first `set_adapters` naming an adapter whose file is not open (opened,
    checked against the program, bound; page cache warm)
  - after a switch, the user's next steps: the prompt's prefill with the new adapter (an ordinary
    adapter's switch starts the KV cache again) and the first decode step, each against the same
    step with no switch before it ("steady"); for a switch to an open adapter and to one opened
    by that switch (its pages not yet touched in this process)
llama.cpp (llama-cpp-python, when importable; `bench` extra): one context, every GGUF LoRA
loaded once (llama_adapter_lora_init); a switch is llama_set_adapters_lora plus a cleared KV cache,
then the same prefill and first decode step against steady ones.
When the bundle has an activated LoRA (the demo's shout_alora): time to first token after switching
to it with a ~500-token system prompt before the question, the prefix kept in the KV cache vs
recomputed, and the answer checked equal both ways.

    python scripts/bench/bench_switch.py --bundle B --llama-model smollm2-f32.gguf \
        --llama-lora json=lora-json.gguf --llama-lora shout=lora-shout.gguf --json-out out.json

Writes JSON (machine, settings, figures, targets). A benchmark: run by hand, not as a timed test.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "bench"))

THREADS = 2
TARGETS = {"rebind_open_us": 50.0, "first_open_ms": 1.0, "first_decode_after_switch_ratio": 1.1,
           "open_time_ratio_many": 1.05, "open_rss_ratio_many": 1.05}


def median(values: list[float]) -> float:
    return statistics.median(values)


def prompt_ids(session, length: int) -> list[int]:
    text = "Write a short JSON object that describes a cat, a dog and a bird, with their names. " * 8
    ids = session.tokenizer.encode_prompt(text, True)
    return list(ids[:length])


def etlora_figures(bundle: Path, rounds: int, prompt_len: int) -> dict:
    import etlora

    session = etlora.load(bundle)
    names = sorted(session.manifest.adapters)
    if len(names) < 2:
        sys.exit(f"bench_switch: {bundle} has {len(names)} adapter(s), expected at least 2")
    a, b = names[0], names[1]
    for name in names:
        session.set_adapters({name: 1.0})

    def timed(call) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    rebind = [timed(lambda i=i: session.set_adapters({(a, b)[i % 2]: 1.0})) for i in range(2000)]
    runtime = session._runtime
    choices = [[(n, 1.0)] for n in (a, b)]  # etlora._runtime.LoadedBundle takes names
    rebind_raw = [timed(lambda i=i: runtime.set_adapters(choices[i % 2])) for i in range(2000)]

    # A session that keeps one adapter open: every switch to another opens its file again.
    single = etlora.load(bundle, max_resident_adapters=1)
    single.set_adapters({a: 1.0})
    first_open = [timed(lambda i=i: single.set_adapters({names[(i + 1) % len(names)]: 1.0}))
                  for i in range(60)]

    ids = prompt_ids(session, prompt_len)
    decode_token = ids[-1]

    def prefill_and_step(s) -> tuple[float, float]:
        prefill = timed(lambda: s.forward(ids, 0))
        step = timed(lambda: s.forward([decode_token], len(ids)))
        return prefill, step

    steady_prefill, steady_step, warm_prefill, warm_step, cold_prefill, cold_step = ([] for _ in range(6))
    for i in range(rounds):
        target = (a, b)[i % 2]
        other = (b, a)[i % 2]
        session.set_adapters({other: 1.0})
        prefill_and_step(session)
        p, s = prefill_and_step(session)  # no switch before it
        steady_prefill.append(p)
        steady_step.append(s)
        session.set_adapters({target: 1.0})  # open already: a re-bind
        p, s = prefill_and_step(session)
        warm_prefill.append(p)
        warm_step.append(s)
        # Cold: the file opened by this switch (single keeps one adapter open).
        single.set_adapters({other: 1.0})
        prefill_and_step(single)
        single.set_adapters({target: 1.0})
        p, s = prefill_and_step(single)
        cold_prefill.append(p)
        cold_step.append(s)
    figures = {
        "adapters": [a, b],
        "rebind_open_us": median(rebind) * 1e6,
        "rebind_open_raw_us": median(rebind_raw) * 1e6,
        "first_open_ms": median(first_open) * 1e3,
        "steady_prefill_ms": median(steady_prefill) * 1e3,
        "steady_decode_ms": median(steady_step) * 1e3,
        "prefill_after_switch_open_ms": median(warm_prefill) * 1e3,
        "decode_after_switch_open_ms": median(warm_step) * 1e3,
        "prefill_after_switch_new_ms": median(cold_prefill) * 1e3,
        "decode_after_switch_new_ms": median(cold_step) * 1e3,
    }
    figures["first_decode_after_switch_ratio"] = figures["decode_after_switch_open_ms"] / figures["steady_decode_ms"]
    figures["first_decode_after_new_ratio"] = figures["decode_after_switch_new_ms"] / figures["steady_decode_ms"]
    figures["prefill_after_switch_ratio"] = figures["prefill_after_switch_open_ms"] / figures["steady_prefill_ms"]
    figures["prefill_after_new_ratio"] = figures["prefill_after_switch_new_ms"] / figures["steady_prefill_ms"]
    return figures


def many_adapters_figures(bundle: Path, count: int, rounds: int) -> dict:
    """etlora.load of the bundle vs a copy holding `count` more adapters (hard links of one file,
    each under its own name in the manifest): time and RSS growth of the load, medians of fresh
    processes."""
    import dataclasses
    import shutil
    import subprocess
    import tempfile

    from etlora.format.manifest import read_manifest

    work = Path(tempfile.mkdtemp(prefix="etlora-many-"))
    many = work / "bundle"
    shutil.copytree(bundle, many, ignore=shutil.ignore_patterns(".etlora-cache"))
    manifest = read_manifest(many)
    source_name = sorted(manifest.adapters)[0]
    source = manifest.adapters[source_name]
    files, records = dict(manifest.files), dict(manifest.adapters)
    for index in range(count):
        relative = f"adapters/many{index:03d}.ptd"
        os.link(many / source.file, many / relative)
        files[relative] = manifest.files[source.file]
        records[f"many{index:03d}"] = dataclasses.replace(source, file=relative)
    dataclasses.replace(manifest, files=files, adapters=records).write(many)
    child = ("import sys, time, resource\n"
             "import etlora, etlora._runtime\n"
             "def rss():\n"
             "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) * 1024\n"
             "before = rss(); start = time.perf_counter()\n"
             "session = etlora.load(sys.argv[1], cache_dir=sys.argv[2])  # alive when measured\n"
             "print(time.perf_counter() - start, rss() - before)\n")
    cache = work / "cache"

    def load(path: Path) -> tuple[float, int]:
        out = subprocess.run([sys.executable, "-c", child, str(path), str(cache)], capture_output=True,
                             text=True, check=True).stdout.split()
        return float(out[-2]), int(out[-1])

    load(bundle)  # writes the packed cache file both use
    pairs = [(load(bundle), load(many)) for _ in range(rounds)]
    shutil.rmtree(work)
    one_time, one_rss = median([p[0][0] for p in pairs]), median([p[0][1] for p in pairs])
    many_time, many_rss = median([p[1][0] for p in pairs]), median([p[1][1] for p in pairs])
    return {"adapters": count + len(manifest.adapters), "load_s_one": one_time, "load_s_many": many_time,
            "load_rss_one": one_rss, "load_rss_many": many_rss,
            "open_time_ratio_many": many_time / one_time, "open_rss_ratio_many": many_rss / one_rss}


SYSTEM_PROMPT = ("You are the assistant of a shop that sells tea, cups and kettles. Answer in one short sentence, "
                 "be friendly, and never invent prices. ")


def alora_prefix_figures(bundle: Path, prefix_tokens: int, rounds: int) -> dict:
    """Time to first token after switching to the bundle's activated LoRA (the demo's shout_alora,
    invoked by the assistant header) with a long system prompt: the user asked with no adapter,
    then asks again with the aLoRA. The system prompt and the question precede the invocation, so
    their KV cache is the foundation's and is kept; against the same prefill recomputed. The kept
    and recomputed answers must be the same 16 tokens (exactness, checked here)."""
    import etlora
    from transformers import AutoTokenizer

    session = etlora.load(bundle)
    activated = [name for name, record in session.manifest.adapters.items() if record.alora_invocation_tokens]
    if not activated:
        return {"alora_note": f"no activated LoRA in {bundle} (the demo bundle has shout_alora)"}
    name = activated[0]
    tokenizer = AutoTokenizer.from_pretrained(bundle / session.manifest.tokenizer.directory)
    words = (SYSTEM_PROMPT * 200).split()
    system = " ".join(words[:len(words) * prefix_tokens // len(tokenizer.encode(" ".join(words)))])

    def chat_ids(question: str) -> list[int]:
        text = tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids = chat_ids("Which tea is mild?")
    invocation = session.manifest.adapters[name].alora_invocation_tokens
    assert ids[-len(invocation):] == invocation, "the chat prompt does not end with the aLoRA's invocation"
    kept, recomputed, reused, answers = [], [], [], {}
    for _ in range(rounds):
        for keep in (True, False):
            session.set_adapters({})
            session._runtime.generate(ids, 1, reuse_prefix=False)  # the question answered by the foundation
            session.set_adapters({name: 1.0})
            _, stats = session._runtime.generate(ids, 1, reuse_prefix=keep)
            (kept if keep else recomputed).append(stats["prefill_seconds"])
            if keep:
                reused.append(stats["reused_tokens"])
    for keep in (True, False):  # exactness: the same answer either way, 16 tokens of it
        session.set_adapters({})
        session._runtime.generate(ids, 1, reuse_prefix=False)
        session.set_adapters({name: 1.0})
        answers[keep], _ = session._runtime.generate(ids, 16, reuse_prefix=keep)
    if answers[True] != answers[False]:
        sys.exit(f"bench_switch: {name}'s answer differs with the prefix kept ({answers[True]}) and "
                 f"recomputed ({answers[False]})")
    return {"alora_adapter": name, "alora_prompt_tokens": len(ids), "alora_prefix_tokens": len(ids) - len(invocation),
            "alora_reused_tokens": median(reused),
            "alora_ttft_kept_ms": median(kept) * 1e3, "alora_ttft_recomputed_ms": median(recomputed) * 1e3,
            "alora_ttft_speedup": median(recomputed) / median(kept)}


def llama_cpp_figures(model: Path, loras: dict[str, Path], ids: list[int], rounds: int) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=max(512, len(ids) + 8), n_threads=THREADS, n_threads_batch=THREADS,
                verbose=False)
    adapters = {}
    for name, path in loras.items():
        handle = llama_cpp.llama_adapter_lora_init(llm.model, str(path).encode())
        if not handle:
            raise RuntimeError(f"llama.cpp could not load LoRA {path}")
        adapters[name] = handle
    names = sorted(adapters)[:2]
    memory = llama_cpp.llama_get_memory(llm.ctx)

    def switch(name: str) -> float:
        array = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapters[name])
        scales = (ctypes.c_float * 1)(1.0)
        start = time.perf_counter()
        llama_cpp.llama_set_adapters_lora(llm.ctx, array, 1, scales)
        llama_cpp.llama_memory_clear(memory, True)
        return time.perf_counter() - start

    def prefill_and_step() -> tuple[float, float]:
        llama_cpp.llama_memory_clear(memory, True)
        llm.n_tokens = 0
        start = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        llm.eval([ids[-1]])
        return prefill, time.perf_counter() - start

    switch_times, steady_prefill, steady_step, after_prefill, after_step = ([] for _ in range(5))
    for i in range(rounds):
        target, other = names[i % 2], names[(i + 1) % 2]
        switch(other)
        prefill_and_step()
        p, s = prefill_and_step()
        steady_prefill.append(p)
        steady_step.append(s)
        switch_times.append(switch(target))
        llm.n_tokens = 0
        p, s = prefill_and_step()
        after_prefill.append(p)
        after_step.append(s)
    return {
        "adapters": names,
        "switch_us": median(switch_times) * 1e6,
        "steady_prefill_ms": median(steady_prefill) * 1e3,
        "steady_decode_ms": median(steady_step) * 1e3,
        "prefill_after_switch_ms": median(after_prefill) * 1e3,
        "decode_after_switch_ms": median(after_step) * 1e3,
        "first_decode_after_switch_ratio": median(after_step) / median(steady_step),
        "prefill_after_switch_ratio": median(after_prefill) / median(steady_prefill),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--llama-model", type=Path, help="f32 GGUF of the same foundation")
    parser.add_argument("--llama-lora", action="append", default=[], help="NAME=PATH.gguf (repeatable)")
    parser.add_argument("--many", type=int, default=100, help="adapters added for the open-cost figure")
    parser.add_argument("--prefix-tokens", type=int, default=480,
                        help="system prompt tokens before the question and the aLoRA's invocation (about)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    from bench_generate import foundation_weights, machine_info

    import etlora

    ours = etlora_figures(args.bundle, args.rounds, args.prompt_tokens)
    ours.update(many_adapters_figures(args.bundle, args.many, max(5, args.rounds // 3)))
    ours.update(alora_prefix_figures(args.bundle, args.prefix_tokens, max(3, args.rounds // 3)))
    theirs, note = None, None
    loras = dict(item.split("=", 1) for item in args.llama_lora)
    if args.llama_model and len(loras) >= 2:
        try:
            ids = prompt_ids(etlora.load(args.bundle), args.prompt_tokens)
            theirs = llama_cpp_figures(args.llama_model, {k: Path(v) for k, v in loras.items()}, ids, args.rounds)
        except ImportError as error:
            note = f"llama.cpp skipped: {error} (pip install -e '.[bench]')"
    else:
        note = "llama.cpp skipped: pass --llama-model and two --llama-lora"
    targets = [{"name": name, "measured": ours[name], "limit": limit, "passed": ours[name] <= limit}
               for name, limit in TARGETS.items()]
    report = {"machine": machine_info(), "bundle": str(args.bundle),
              "foundation": foundation_weights(args.bundle), "threads": THREADS,
              "rounds": args.rounds, "prompt_tokens": args.prompt_tokens,
              "etlora": ours, "llama_cpp": theirs, "note": note, "targets": targets}
    print(f"{'figure':42s} {'etlora':>10s} {'llama.cpp':>10s}")
    rows = [("re-bind an open adapter (us)", ours["rebind_open_us"], theirs and theirs["switch_us"]),
            ("open + bind a new adapter (ms)", ours["first_open_ms"], None),
            ("steady decode step (ms)", ours["steady_decode_ms"], theirs and theirs["steady_decode_ms"]),
            ("first decode step after switch / steady", ours["first_decode_after_switch_ratio"],
             theirs and theirs["first_decode_after_switch_ratio"]),
            ("  ... after a switch that opened the file", ours["first_decode_after_new_ratio"], None),
            ("prefill after switch / steady", ours["prefill_after_switch_ratio"],
             theirs and theirs["prefill_after_switch_ratio"]),
            ("  ... after a switch that opened the file", ours["prefill_after_new_ratio"], None),
            (f"load time, {ours['adapters']} adapters / bundle", ours["open_time_ratio_many"], None),
            (f"load RSS, {ours['adapters']} adapters / bundle", ours["open_rss_ratio_many"], None)]
    if "alora_ttft_kept_ms" in ours:
        rows += [(f"aLoRA TTFT, {ours['alora_prefix_tokens']}-token prefix kept (ms)", ours["alora_ttft_kept_ms"], None),
                 ("aLoRA TTFT, prefix recomputed (ms)", ours["alora_ttft_recomputed_ms"], None),
                 ("  recomputed / kept", ours["alora_ttft_speedup"], None)]
    for label, mine, other in rows:
        theirs_text = "-" if other is None else f"{other:.3f}"
        print(f"{label:42s} {mine:10.3f} {theirs_text:>10s}")
    for target in targets:
        print(f"target {target['name']} <= {target['limit']}: {target['measured']:.3f} "
              f"{'pass' if target['passed'] else 'FAIL'}")
    if note:
        print(note)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
