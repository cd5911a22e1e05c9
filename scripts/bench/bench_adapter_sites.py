"""Where an adapter's decode cost goes: programs that differ only in their LoRA sites, side by side.

Give bundles of one foundation exported with different --target-modules (for example none, the
attention projections, all). Every bundle/adapter pair decodes the same prompt in turn, several
rounds, so machine noise hits them alike; the table gives ms per token and the speed ratio against
the first bundle with no adapter (the foundation-only program).

    python scripts/bench/bench_adapter_sites.py --case base=B0 --case attention=B1:shout --case all=B2:shout,zorbish \
        --json docs/results/adapter_sites.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import etlora
from etlora.format.manifest import read_manifest
from etlora.kernel_path import cpu_model, kernel_path

PROMPT = "Write a short story about a robot who learns to paint."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", required=True, metavar="LABEL=BUNDLE[:ADAPTER,...]",
                        help="a bundle, measured with no adapter and with each listed adapter")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    runs = []  # (label, bundle, adapter or None)
    for case in args.case:
        label, _, rest = case.partition("=")
        bundle, _, names = rest.partition(":")
        runs.append((label, Path(bundle), None))
        runs.extend((label, Path(bundle), name) for name in names.split(",") if name)
    sessions = {bundle: etlora.load(bundle) for _, bundle, _ in runs}
    timings: dict[tuple[str, str | None], list[float]] = {(label, name): [] for label, _, name in runs}
    for _ in range(args.rounds):
        for label, bundle, name in runs:
            session = sessions[bundle]
            session.set_adapters({name: 1.0} if name else {})
            prompt = session.tokenizer.encode(PROMPT)
            session.logits(prompt)  # prefill outside the timing
            started = time.perf_counter()
            position, token = len(prompt), int(session.forward(prompt[-1:], len(prompt) - 1).argmax())
            for _ in range(args.new_tokens):
                token = int(session.forward([token], position).argmax())
                position += 1
            timings[(label, name)].append((time.perf_counter() - started) / args.new_tokens * 1e3)

    baseline = statistics.median(timings[(runs[0][0], None)])
    rows = []
    print(f"{'program':<12} {'sites':>5} {'adapter':<10} {'ms/token (median)':>18} {'vs foundation-only':>19}")
    for label, bundle, name in runs:
        median = statistics.median(timings[(label, name)])
        sites = len(read_manifest(bundle).program.sites)
        rows.append({"program": label, "bundle": str(bundle), "sites": sites, "adapter": name,
                     "ms_per_token": timings[(label, name)], "median_ms_per_token": median,
                     "speed_vs_foundation_only": baseline / median})
        print(f"{label:<12} {sites:>5} {name or '-':<10} {median:>18.3f} {baseline / median:>19.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpu": cpu_model(), "kernel_path": kernel_path(), "python": platform.python_version()},
            "prompt": PROMPT, "new_tokens": args.new_tokens, "rounds": args.rounds, "rows": rows,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
