"""etlora's C++ under sanitizers on every push (clang; skipped with the reason without it).

A short fuzz campaign: each reader of untrusted bytes under ASan + UBSan.

scripts/dev/sanitize.py fuzz builds the libFuzzer targets with clang and runs each one for a few seconds from
the committed corpus (tests/fuzz/corpus/); any crash, leak or sanitizer report fails the test.
Longer campaigns: python scripts/dev/sanitize.py fuzz --seconds 600.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECONDS = 15
needs_clang = pytest.mark.skipif(
    shutil.which("clang++") is None, reason="clang++ is missing (apt-get install clang); the sanitizers need it"
)


@needs_clang
def test_short_fuzz_campaign_finds_nothing(tmp_path):
    summary = tmp_path / "fuzz.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "dev" / "sanitize.py"), "fuzz", "--seconds", str(SECONDS), "--json", str(summary)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(summary.read_text())["rows"]
    assert {row["reader"] for row in rows} == {"adapter_file", "foundation_file", "tokenizer_file", "packed_cache_file",
                                               "manifest"}
    for row in rows:
        assert row["findings"] == [] and row["artifacts"] == [], row
        assert row["executions"] > 1000, row  # the target really ran


@needs_clang
def test_ctest_suite_clean_under_asan_ubsan_and_tsan(bundle, tiny_tokenizer_file):
    """Every ctest program (concurrent sessions and adapter switches over the spinning pool among
    them) under AddressSanitizer + UBSan, then ThreadSanitizer: no report, nothing skipped."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "dev" / "sanitize.py"), "ctest", "--bundle", str(bundle),
         "--tokenizer", str(tiny_tokenizer_file)],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count("100% tests passed") == 2, result.stdout
    assert "findings: none" in result.stdout
