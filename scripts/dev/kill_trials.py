"""kill -9 at random moments of the commands that write a bundle: the bundle must stay old or new.

For each operation, each trial copies a fresh tiny bundle, starts the command, sends SIGKILL after a
random delay (half uniform over the command's whole run, half within its last 40%, where it writes),
and then checks what is on disk:
- add-adapter / replace / remove-adapter: `inspect` finds no problem and the adapters are exactly the
  old set or the new set, and every listed adapter loads;
- export (with --force over an existing bundle): the output is the old bundle or the new one, valid
  by `inspect`, never missing or mixed;
- packed cache file write (first load of a bundle): the next load gives logits bit-identical to a
  load without the packed cache file.

    python scripts/dev/kill_trials.py --trials 50 --json docs/results/kill_trials.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OPERATIONS = ("add", "replace", "remove", "export", "packed")
TOKENS = [1, 2, 3, 4, 5]


@dataclass
class Outcome:
    operation: str
    trials: int = 0
    old: int = 0
    new: int = 0
    failures: list[str] = field(default_factory=list)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "etlora.cli", *args]


def _packed_child(bundle: Path, cache: Path) -> list[str]:
    code = f"import etlora; etlora.load({str(bundle)!r}, cache_dir={str(cache)!r}).logits({TOKENS})"
    return [sys.executable, "-c", code]


class Fixture:
    """A tiny model, two PEFT adapters and a bundle of the first, made once."""

    def __init__(self, root: Path):
        from etlora.export import ExportOptions, export_bundle
        from etlora.testing.fixtures import make_lora_adapter, make_tiny_llama

        self.root = root
        self.model = make_tiny_llama(root / "model")
        self.first = make_lora_adapter(self.model, root / "first", rank=4, target_modules=["q_proj", "v_proj"], seed=1)
        self.second = make_lora_adapter(self.model, root / "second", rank=4, target_modules=["q_proj", "v_proj"], seed=2)
        self.bundle = root / "bundle"
        export_bundle(self.model, {"first": self.first}, self.bundle, ExportOptions(max_seq_len=64))

    def command(self, operation: str, target: Path) -> tuple[list[str], set[str], set[str]]:
        """(command, adapters before, adapters after) for one trial on `target`."""
        if operation == "add":
            return _cli("add-adapter", str(target), "--adapter", f"second={self.second}"), {"first"}, {"first", "second"}
        if operation == "replace":
            return (_cli("add-adapter", str(target), "--adapter", f"first={self.second}", "--replace"),
                    {"first"}, {"first"})
        if operation == "remove":
            return _cli("remove-adapter", str(target), "first"), {"first"}, set()
        if operation == "export":
            return (_cli("export", "--model", str(self.model), "--adapter", f"second={self.second}", "--max-seq-len", "64",
                         "--out", str(target), "--force"), {"first"}, {"second"})
        return _packed_child(target, target.parent / "cache"), {"first"}, {"first"}


def check(operation: str, target: Path, before: set[str], after: set[str], reference: dict) -> str | None:
    """None when the bundle is whole (old or new); else what is wrong. Records which in reference."""
    import etlora
    from etlora.format.errors import EtloraError
    from etlora.inspect_bundle import inspect_bundle

    try:
        report = inspect_bundle(target)
    except EtloraError as error:
        return f"inspect failed: {error}"
    if report.problems:
        return f"inspect found: {report.problems[0]}"
    names = {row.name for row in report.adapters}
    if names not in (before, after):
        return f"adapters {sorted(names)}, expected {sorted(before)} or {sorted(after)}"
    session = etlora.load(target, cache_dir=target.parent / "cache")
    for name in names:
        session.set_adapters({name: 1.0})
        session.logits(TOKENS)
    if operation == "packed":
        session.set_adapters({"first": 1.0})
        if not np.array_equal(session.logits(TOKENS), reference["packed"]):
            return "logits after a killed packed cache file write differ from a load without the file"
    reference["state"] = "new" if names == after and names != before else "old"
    if operation == "replace":  # same names either way: tell old from new by the weights
        session.set_adapters({"first": 1.0})
        logits = session.logits(TOKENS)
        if np.array_equal(logits, reference["replaced"]):
            reference["state"] = "new"
        elif not np.array_equal(logits, reference["original"]):
            return "adapter 'first' is neither the old nor the new weights"
    return None


def measure_duration(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - started


def run(operations: list[str], trials: int, seed: int, root: Path) -> list[Outcome]:
    import etlora
    from etlora.export import add_adapter

    fixture = Fixture(root / "fixture")
    rng = random.Random(seed)
    reference = {"packed": etlora.load(fixture.bundle, adapters={"first": 1.0}, packed_cache=False).logits(TOKENS),
                 "original": etlora.load(fixture.bundle, adapters={"first": 1.0}, packed_cache=False).logits(TOKENS)}
    replaced = root / "replaced"
    shutil.copytree(fixture.bundle, replaced)
    add_adapter(replaced, "first", fixture.second, replace_existing=True)
    reference["replaced"] = etlora.load(replaced, adapters={"first": 1.0}, packed_cache=False).logits(TOKENS)
    outcomes = []
    for operation in operations:
        outcome = Outcome(operation)
        scratch = root / operation
        shutil.copytree(fixture.bundle, scratch / "bundle")
        duration = measure_duration(fixture.command(operation, scratch / "bundle")[0])
        shutil.rmtree(scratch)
        for trial in range(trials):
            trial_dir = root / f"{operation}-{trial}"
            target = trial_dir / "bundle"
            shutil.copytree(fixture.bundle, target)
            command, before, after = fixture.command(operation, target)
            delay = rng.uniform(0, duration) if trial % 2 else rng.uniform(0.6 * duration, 1.05 * duration)
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            child.wait()
            problem = check(operation, target, before, after, reference)
            outcome.trials += 1
            if problem:
                outcome.failures.append(f"trial {trial} (killed after {delay:.2f} s): {problem}")
            elif reference["state"] == "new":
                outcome.new += 1
            else:
                outcome.old += 1
            shutil.rmtree(trial_dir, ignore_errors=True)
        outcomes.append(outcome)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50, help="per operation (default 50)")
    parser.add_argument("--operation", action="append", choices=OPERATIONS, help="default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        outcomes = run(args.operation or list(OPERATIONS), args.trials, args.seed, Path(scratch))
    print(f"{'operation':<10} {'trials':>6} {'old':>5} {'new':>5} {'broken':>6}")
    for o in outcomes:
        print(f"{o.operation:<10} {o.trials:>6} {o.old:>5} {o.new:>5} {len(o.failures):>6}")
        for failure in o.failures[:5]:
            print(f"  {failure}")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2) + "\n")
    if any(o.failures for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
