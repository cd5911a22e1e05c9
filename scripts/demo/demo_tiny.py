"""The tiny end-to-end demo: make a random Llama and two PEFT adapters, export, add one, run.

    python scripts/demo/demo_tiny.py [--workdir demo_tiny]

Shows the whole slice without downloads: `etlora export`, `etlora add-adapter`, `etlora inspect`,
then the C++ runtime through `etlora.load`, with each adapter's logits checked against PEFT.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import etlora
from etlora.cli import run_shown as run_cli
from etlora.testing.fixtures import make_lora_adapter, make_tiny_llama, peft_logits

TOKENS = [1, 17, 42, 99, 3, 250, 7, 64]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo_tiny", help="where fixtures and the bundle go")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)

    print("making a tiny random Llama (2 layers, hidden 64, GQA) and three PEFT adapters...")
    model = make_tiny_llama(work / "model")
    adapters = {
        "support": make_lora_adapter(model, work / "peft_support", rank=4, target_modules=["q_proj", "v_proj"], seed=1),
        "legal": make_lora_adapter(model, work / "peft_legal", rank=8, target_modules=["q_proj", "o_proj"], seed=2),
        "sql": make_lora_adapter(model, work / "peft_sql", rank=8, target_modules=["v_proj"], seed=3),
    }
    bundle = work / "bundle"
    run_cli(
        "export", "--model", str(model),
        "--adapter", f"support={adapters['support']}", "--adapter", f"legal={adapters['legal']}",
        "--target-modules", "q_proj,v_proj,o_proj", "--max-seq-len", "64", "--out", str(bundle),
    )
    run_cli("add-adapter", str(bundle), "--adapter", f"sql={adapters['sql']}")
    run_cli("inspect", str(bundle))

    print("\nrunning in the C++ runtime (etlora.load) vs transformers + PEFT:")
    started = time.perf_counter()
    session = etlora.load(bundle)
    print(f"loaded program + foundation in {1e3 * (time.perf_counter() - started):.1f} ms")
    worst = 0.0
    for name in [None, "support", "legal", "sql"]:
        started = time.perf_counter()
        session.set_adapters({name: 1.0} if name else {})
        switch_ms = 1e3 * (time.perf_counter() - started)
        ours = session.logits(TOKENS)
        reference = peft_logits(model, adapters[name] if name else None, TOKENS)
        error = float(np.max(np.abs(ours - reference)))
        worst = max(worst, error)
        print(
            f"  {name or '(foundation)':>13}: next token {int(ours.argmax()):>3}, "
            f"max |ours - PEFT| = {error:.1e}, switch {switch_ms:.2f} ms"
        )
    if worst > 1e-4:
        sys.exit(f"parity failed: max abs error {worst:.3g} > 1e-4")
    print("\nall logits match PEFT within 1e-4")


if __name__ == "__main__":
    main()
