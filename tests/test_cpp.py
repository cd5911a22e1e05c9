"""Runs the C++ side against a generated bundle: ctest (upstream Module parity, errors, two
sessions) and the installed etlora_runner, compared with the Python session's logits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import etlora

from conftest import TOKENS

REPO = Path(__file__).resolve().parent.parent


def build_dir() -> Path | None:
    candidates = sorted((REPO / "build").glob("*/CTestTestfile.cmake"))
    return candidates[0].parent if candidates else None


def test_ctest_suite_passes_on_a_real_bundle(bundle, tiny_tokenizer_file):
    where = build_dir()
    if where is None:
        pytest.skip("no CMake build tree (install with pip install -e .)")
    ctest = shutil.which("ctest") or str(Path(sysconfig.get_path("scripts")) / "ctest")
    result = subprocess.run(
        [ctest, "--test-dir", str(where), "--output-on-failure"],
        env={**os.environ, "ETLORA_TEST_BUNDLE": str(bundle), "ETLORA_TEST_TOKENIZER": str(tiny_tokenizer_file)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed" in result.stdout and "Skipped" not in result.stdout, result.stdout


def test_reader_ctests_pass_on_the_committed_fixtures_without_a_bundle():
    """The readers' ctests (label readers) read tests/fixtures only."""
    where = build_dir()
    if where is None:
        pytest.skip("no CMake build tree (install with pip install -e .)")
    ctest = shutil.which("ctest") or str(Path(sysconfig.get_path("scripts")) / "ctest")
    environment = {k: v for k, v in os.environ.items() if k not in ("ETLORA_TEST_BUNDLE", "ETLORA_TEST_TOKENIZER")}
    result = subprocess.run([ctest, "--test-dir", str(where), "-L", "readers", "--output-on-failure"],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("bundle_reader_test", "adapter_reader_test", "tokenizer_reader_test", "tokenizer_roundtrip_test"):
        assert re.search(rf"Test +#\d+: {name} \.+ +Passed", result.stdout), result.stdout


def runner_path() -> str:
    found = shutil.which("etlora_runner") or str(Path(sysconfig.get_path("scripts")) / "etlora_runner")
    if not Path(found).exists():
        pytest.skip("etlora_runner is not installed")
    return found


def test_runner_predicts_the_same_token_as_python(bundle):
    expected = etlora.load(bundle, adapters={"legal": 0.5}).logits(TOKENS)
    result = subprocess.run(
        [
            runner_path(),
            "--model", str(bundle / "model.pte"),
            "--data", str(bundle / "foundation.ptd"),
            "--adapter", f"{bundle / 'adapters' / 'legal.ptd'}=0.5",
            "--tokens", ",".join(map(str, TOKENS)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert int(lines["argmax"]) == int(np.argmax(expected)), result.stdout
    printed = np.array([float(value) for value in lines["logits[:8]"].split()])
    np.testing.assert_allclose(printed, expected[:8], atol=1e-5)


def test_runner_reports_missing_adapter_file(bundle):
    result = subprocess.run(
        [runner_path(), "--model", str(bundle / "model.pte"), "--data", str(bundle / "foundation.ptd"),
         "--adapter", str(bundle / "adapters" / "nope.ptd"), "--tokens", "1,2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "nope.ptd" in result.stderr and "not found" in result.stderr


def test_runner_help_exits_zero_and_bad_arguments_exit_two():
    runner = runner_path()
    shown = subprocess.run([runner, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "usage: etlora_runner" in shown.stdout
    wrong = subprocess.run([runner, "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "usage: etlora_runner" in wrong.stderr
