"""A time-boxed fuzz campaign over every reader of untrusted bytes, under ASan and UBSan.

Builds tests/fuzz (libFuzzer targets, clang, -DETLORA_FUZZ=ON) into build-fuzz/, then runs each
target for --seconds starting from the committed corpus (tests/fuzz/corpus/<reader>/) plus what
earlier campaigns found (build-fuzz/corpus/<reader>/). Any crash, leak or sanitizer report stops
that target, leaves its input in build-fuzz/artifacts/ and makes the command exit 1.

    python scripts/fuzz.py --seconds 60 --json docs/results/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build-fuzz"
READERS = ("adapter_file", "tokenizer_file", "packed_cache_file")


def build() -> None:
    clang = shutil.which("clang++")
    if clang is None:
        sys.exit("fuzz: clang++ not found (apt-get install clang); libFuzzer needs clang")
    configure = [
        "cmake", "-S", str(REPO), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        f"-DCMAKE_CXX_COMPILER={clang}", "-DETLORA_FUZZ=ON", "-DETLORA_BUILD_PYTHON=OFF",
        "-DETLORA_BUILD_TESTS=OFF", f"-DPython_EXECUTABLE={sys.executable}",
    ]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"] if not (BUILD / "CMakeCache.txt").exists() else []
    for command in (configure, ["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2)]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"fuzz: {' '.join(command[:2])} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def campaign(reader: str, seconds: int) -> dict:
    binary = BUILD / "tests" / "fuzz" / f"fuzz_{reader}"
    corpus = BUILD / "corpus" / reader
    artifacts = BUILD / "artifacts" / reader
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = REPO / "tests" / "fuzz" / "corpus" / reader
    started = time.monotonic()
    result = subprocess.run(
        [str(binary), str(corpus), str(seeds), f"-max_total_time={seconds}", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/", "-timeout=10", "-rss_limit_mb=4096"],
        capture_output=True, text=True,
    )
    output = result.stdout + result.stderr
    runs = re.search(r"stat::number_of_executed_units:\s+(\d+)", output)
    sanitizer = re.findall(r"(ERROR: \w+Sanitizer[^\n]*|runtime error:[^\n]*|deadly signal|ERROR: libFuzzer[^\n]*)", output)
    return {
        "reader": reader,
        "seconds": round(time.monotonic() - started, 1),
        "executions": int(runs.group(1)) if runs else 0,
        "exit_code": result.returncode,
        "findings": sanitizer[:5],
        "artifacts": sorted(p.name for p in artifacts.iterdir()),
        "corpus_files": sum(1 for _ in corpus.iterdir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="per reader (default 60)")
    parser.add_argument("--reader", action="append", choices=READERS, help="default: all")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    build()
    rows = [campaign(reader, args.seconds) for reader in (args.reader or READERS)]
    print(f"{'reader':<20} {'executions':>11} {'seconds':>8} {'exit':>5}  findings")
    for row in rows:
        print(f"{row['reader']:<20} {row['executions']:>11} {row['seconds']:>8} {row['exit_code']:>5}  "
              f"{'; '.join(row['findings']) or 'none'}")
    if args.json:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "unknown")
        args.json.write_text(json.dumps({"cpu": cpu, "sanitizers": "address,undefined (etlora code only)",
                                         "rows": rows}, indent=2) + "\n")
    if any(row["exit_code"] != 0 or row["findings"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
