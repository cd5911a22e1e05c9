"""etlora's C++ under sanitizers (clang): fuzz campaigns and the ctest suite.

    python scripts/dev/sanitize.py fuzz --seconds 60 --json docs/results/fuzz.json
    python scripts/dev/sanitize.py ctest --bundle B --tokenizer B/tokenizer/tokenizer.json

fuzz: builds tests/fuzz (libFuzzer targets, -DETLORA_FUZZ=ON, ASan + UBSan) into build-fuzz/, then
runs each target for --seconds from the committed corpus (tests/fuzz/corpus/<reader>/) plus what
earlier campaigns found (build-fuzz/corpus/<reader>/). Any crash, leak or sanitizer report stops
that target, leaves its input in build-fuzz/artifacts/ and makes the command exit 1.

ctest: builds the ctest programs with ASan + UBSan (build-asan/) and with ThreadSanitizer
(build-tsan/) and runs them on a bundle; concurrent_sessions_test is the TSan run of sessions on
several threads switching adapters over the spinning thread pool. Only etlora's code is
instrumented: the wheel's ExecuTorch and XNNPACK libraries are not, so TSan sees our side of every
hand-off (the executor, the adapter cache, sessions) but not races inside ExecuTorch itself, and
its thread-leak report for ExecuTorch's process-lifetime pool is turned off (tests/tsan.supp).
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

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build-fuzz"
READERS = ("adapter_file", "foundation_file", "tokenizer_file", "packed_cache_file", "manifest")
SANITIZER_OPTIONS = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    # tests/tsan.supp says what is suppressed and why (the wheel's uninstrumented thread pool).
    "TSAN_OPTIONS": f"halt_on_error=1:report_thread_leaks=0:exitcode=66:suppressions={REPO / 'tests' / 'tsan.supp'}",
}


def build(directory: Path, options: list[str]) -> None:
    """Configure (once) and build etlora with clang and the given -D options."""
    clang = shutil.which("clang++")
    if clang is None:
        sys.exit("sanitize: clang++ not found (apt-get install clang); the sanitizers and libFuzzer need clang")
    # The cmake of this Python's environment first (the dev extra installs >= 3.28; a system one may be older).
    beside_python = Path(sys.executable).parent / "cmake"
    cmake = str(beside_python) if beside_python.exists() else (shutil.which("cmake") or "cmake")
    configure = [
        cmake, "-S", str(REPO), "-B", str(directory), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        f"-DCMAKE_CXX_COMPILER={clang}", "-DETLORA_BUILD_PYTHON=OFF", f"-DPython_EXECUTABLE={sys.executable}",
        *options,
    ]
    if shutil.which("ninja") and not (directory / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    for command in (configure, [cmake, "--build", str(directory), "-j", str(os.cpu_count() or 2)]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"sanitize: {' '.join(command[:2])} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def campaign(reader: str, seconds: int) -> dict:
    binary = BUILD / "tests" / "fuzz" / f"fuzz_{reader}"
    corpus = BUILD / "corpus" / reader
    artifacts = BUILD / "artifacts" / reader
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = REPO / "tests" / "fuzz" / "corpus" / reader
    started, started_wall = time.monotonic(), time.time()
    result = subprocess.run(
        [str(binary), str(corpus), str(seeds), f"-max_total_time={seconds}", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/", "-timeout=10", "-rss_limit_mb=4096"],
        capture_output=True, text=True, env={**os.environ, **SANITIZER_OPTIONS},
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
        # this campaign's findings only: inputs of earlier campaigns stay in the folder for study
        "artifacts": sorted(p.name for p in artifacts.iterdir() if p.stat().st_mtime >= started_wall),
        "corpus_files": sum(1 for _ in corpus.iterdir()),
    }


def run_fuzz(args) -> int:
    build(BUILD, ["-DETLORA_FUZZ=ON", "-DETLORA_BUILD_TESTS=OFF"])
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
    return 1 if any(row["exit_code"] != 0 or row["findings"] for row in rows) else 0


def run_ctest(args) -> int:
    environment = {**os.environ, **SANITIZER_OPTIONS, "ETLORA_TEST_BUNDLE": str(args.bundle.resolve()),
                   "ETLORA_TEST_TOKENIZER": str(args.tokenizer.resolve())}
    failed = 0
    for name, directory, option in (("address,undefined", REPO / "build-asan", "-DETLORA_SANITIZE=ON"),
                                    ("thread", REPO / "build-tsan", "-DETLORA_TSAN=ON")):
        build(directory, [option])
        beside_python = Path(sys.executable).parent / "ctest"
        ctest = str(beside_python) if beside_python.exists() else "ctest"
        result = subprocess.run([ctest, "--test-dir", str(directory), "--output-on-failure"],
                                capture_output=True, text=True, env=environment)
        findings = re.findall(r"(ERROR: \w+Sanitizer[^\n]*|WARNING: ThreadSanitizer[^\n]*|runtime error:[^\n]*)",
                              result.stdout + result.stderr)
        summary = re.search(r"\d+% tests passed[^\n]*", result.stdout)
        print(f"{name:<18} {summary.group(0) if summary else 'no summary'}; findings: {'; '.join(findings[:3]) or 'none'}")
        if result.returncode != 0 or findings or "Skipped" in result.stdout:
            print(result.stdout[-4000:] + result.stderr[-2000:])
            failed = 1
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fuzz = commands.add_parser("fuzz", help="time-boxed libFuzzer campaign per reader")
    fuzz.add_argument("--seconds", type=int, default=60, help="per reader (default 60)")
    fuzz.add_argument("--reader", action="append", choices=READERS, help="default: all")
    fuzz.add_argument("--json", type=Path)
    fuzz.set_defaults(run=run_fuzz)
    ctest = commands.add_parser("ctest", help="the ctest programs under ASan+UBSan and under TSan")
    ctest.add_argument("--bundle", type=Path, required=True, help="a bundle with at least two adapters")
    ctest.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer.json (etlora_chat.json beside it is read too)")
    ctest.set_defaults(run=run_ctest)
    args = parser.parse_args()
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
