"""The measuring process of `etlora report`: loads bundles step by step, prints the figures as JSON.

Run by `etlora.report` in a fresh interpreter, so that nothing the parent loaded is counted:

    python -m etlora.report_child etlora BUNDLE --adapters a,b,c [--generate]
    python -m etlora.report_child naive BUNDLE_1 BUNDLE_2 ... [--generate]

After each step it reads /proc/self/smaps_rollup; the last stdout line is
{"steps": [{"name": ..., "rss": bytes, "pss": ..., "private": ..., "shared": ...}, ...], "notes": [...]}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SMAPS_ROLLUP = Path("/proc/self/smaps_rollup")
PROMPT = "Write one sentence about the sea."
GENERATE_TOKENS = 16


def read_smaps_rollup(path: Path = SMAPS_ROLLUP) -> dict[str, int]:
    """RSS, PSS, private and shared (clean + dirty) bytes of this process."""
    fields = {}
    for line in path.read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key.strip()] = int(parts[0]) * 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "private": fields["Private_Clean"] + fields["Private_Dirty"],
        "shared": fields["Shared_Clean"] + fields["Shared_Dirty"],
    }


class Recorder:
    def __init__(self):
        self.steps: list[dict] = []
        self.notes: list[str] = []

    def __call__(self, name: str) -> None:
        self.steps.append({"name": name, **read_smaps_rollup()})


def _generate(session, record: Recorder) -> None:
    from etlora.export.errors import EtloraError

    try:
        session.generate(PROMPT, max_new_tokens=GENERATE_TOKENS)
    except (EtloraError, ValueError, RuntimeError) as error:  # e.g. a tokenizer that does not fit
        record.notes.append(f"generation skipped: {error}")
        return
    record(f"generated {GENERATE_TOKENS} tokens")


def measure_etlora(bundle: str, adapters: list[str], generate: bool) -> Recorder:
    record = Recorder()
    import etlora._runtime  # noqa: F401

    record("runtime started")
    import etlora

    # Packed file off on both sides: the report compares what loads cost in memory, the same way
    # for etlora and for the merged models (runtime_cpp/README.md covers the packed file).
    first = etlora.load(bundle, packed_cache=False)
    first.logits([1, 2, 3])  # one forward in every step: lazily mapped pages count too
    record("program + foundation loaded")
    sessions = [first]
    for name in adapters:
        sessions.append(etlora.load(bundle, adapters={name: 1.0}, packed_cache=False))
        sessions[-1].logits([1, 2, 3])
        record(f"+ session {name}")
    for name in adapters:
        first.set_adapters({name: 1.0})
        first.logits([1, 2, 3])
    record(f"switched through {len(adapters)} adapters")
    if generate:
        _generate(first, record)
    return record


def measure_naive(bundles: list[str], generate: bool) -> Recorder:
    record = Recorder()
    import etlora._runtime  # noqa: F401

    record("runtime started")
    import etlora

    sessions = []
    for bundle in bundles:
        sessions.append(etlora.load(bundle, packed_cache=False))
        sessions[-1].logits([1, 2, 3])
        record(f"+ merged model {Path(bundle).parent.name}")
    if generate and sessions:
        _generate(sessions[0], record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etlora.report_child")
    parser.add_argument("mode", choices=["etlora", "naive"])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--adapters", default="")
    parser.add_argument("--generate", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "etlora":
        adapters = [name for name in args.adapters.split(",") if name]
        record = measure_etlora(args.bundles[0], adapters, args.generate)
    else:
        record = measure_naive(args.bundles, args.generate)
    sys.stdout.write("\n" + json.dumps({"steps": record.steps, "notes": record.notes}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
