"""A short fuzz campaign on every push: each reader of untrusted bytes under ASan + UBSan.

scripts/fuzz.py builds the libFuzzer targets with clang and runs each one for a few seconds from
the committed corpus (tests/fuzz/corpus/); any crash, leak or sanitizer report fails the test.
Longer campaigns: python scripts/fuzz.py --seconds 600.
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


@pytest.mark.skipif(shutil.which("clang++") is None, reason="clang++ is missing (apt-get install clang); libFuzzer needs it")
def test_short_fuzz_campaign_finds_nothing(tmp_path):
    summary = tmp_path / "fuzz.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fuzz.py"), "--seconds", str(SECONDS), "--json", str(summary)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(summary.read_text())["rows"]
    assert {row["reader"] for row in rows} == {"adapter_file", "tokenizer_file", "packed_cache_file"}
    for row in rows:
        assert row["findings"] == [] and row["artifacts"] == [], row
        assert row["executions"] > 1000, row  # the target really ran
