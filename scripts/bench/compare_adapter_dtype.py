"""What --adapter-dtype fp16 does to the logits, against the same adapters stored as fp32.

For each bundle and adapter: the adapter's effect on the last position's logits (fp32 adapter vs
none), the change from storing it as fp16, and a control that moves the fp32 adapter's strength by
2^-11 (the relative rounding of float16). Where the fp16 change is no larger than the control, the
difference comes from how sensitive the foundation is to any tiny change (8-bit dynamic activation
quantization rounds differently), not from the adapter's storage.

    python scripts/bench/compare_adapter_dtype.py --bundle B [--bundle B2] --adapter shout=assets/adapters/shout \
        --json docs/results/adapter_dtype.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

import etlora
from etlora.export import add_adapter
from etlora.format.adapter_format import AdapterDtype
from etlora.format.manifest import read_manifest
from etlora.kernel_path import cpu_model

PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is",
    "Write a short note to a friend about the weather today.",
    "Bees make honey from the nectar of",
)


def measure(bundle: Path, adapters: dict[str, str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "bundle"
        shutil.copytree(bundle, copy)
        for name, source in adapters.items():
            add_adapter(copy, f"{name}-fp32", source, dtype=AdapterDtype.FP32)
            add_adapter(copy, f"{name}-fp16", source, dtype=AdapterDtype.FP16)
        manifest = read_manifest(copy)
        session = etlora.load(copy)
        rows = []
        for name in adapters:
            effect, fp16_change, control_change, same_argmax = [], [], [], 0
            for prompt in PROMPTS:
                tokens = session.tokenizer.encode(prompt)
                session.set_adapters({})
                none = session.logits(tokens)
                session.set_adapters({f"{name}-fp32": 1.0})
                full = session.logits(tokens)
                session.set_adapters({f"{name}-fp16": 1.0})
                half = session.logits(tokens)
                session.set_adapters({f"{name}-fp32": 1.0 + 2.0**-11})
                nudged = session.logits(tokens)
                effect.append(float(np.abs(full - none).max()))
                fp16_change.append(float(np.abs(half - full).max()))
                control_change.append(float(np.abs(nudged - full).max()))
                same_argmax += int(half.argmax() == full.argmax())
            rows.append({
                "bundle": str(bundle),
                "foundation": manifest.foundation.quantization.describe(),
                "adapter": name,
                "file_bytes_fp32": (copy / manifest.adapters[f"{name}-fp32"].file).stat().st_size,
                "file_bytes_fp16": (copy / manifest.adapters[f"{name}-fp16"].file).stat().st_size,
                "max_effect": max(effect),
                "max_fp16_change": max(fp16_change),
                "max_control_change": max(control_change),
                "fp16_change_over_effect": max(fp16_change) / max(effect),
                "same_argmax": f"{same_argmax}/{len(PROMPTS)}",
            })
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, type=Path)
    parser.add_argument("--adapter", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    adapters = dict(item.split("=", 1) for item in args.adapter)
    rows = [row for bundle in args.bundle for row in measure(bundle, adapters)]
    header = ("foundation", "adapter", "fp32 B", "fp16 B", "effect", "fp16 change", "control", "ratio", "argmax")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(x) for x in (
            r["foundation"], r["adapter"], r["file_bytes_fp32"], r["file_bytes_fp16"], f"{r['max_effect']:.3f}",
            f"{r['max_fp16_change']:.5f}", f"{r['max_control_change']:.5f}", f"{r['fp16_change_over_effect']:.5f}",
            r["same_argmax"])))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpu": cpu_model(), "python": platform.python_version()},
            "prompts": list(PROMPTS),
            "rows": rows,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
