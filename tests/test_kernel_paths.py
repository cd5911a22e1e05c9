"""Every vector path of etlora's kernels, on every machine: each path this CPU can run is tested by
name (the kernel against its double-precision reference, and whole sessions against PEFT); a path
it cannot run is skipped with the reason. Where qemu-x86_64 is installed, the kernel and the runner
also run on an emulated CPU without AVX-512, so auto-selection off AVX-512 is tested on any host."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

import etlora
from etlora.testing.fixtures import peft_logits

from conftest import TOKENS
from test_cpp import build_dir, runner_path

PATHS = etlora.kernel_paths()


def runnable_or_skip(path: etlora.KernelPath) -> None:
    if not path.runnable:
        pytest.skip(f"this CPU lacks {path.needs}, which kernel path {path.name} needs")


def kernel_test_binary():
    where = build_dir()
    binary = where / "tests" / "cpp" / "cached_attention_test" if where else None
    if binary is None or not binary.exists():
        pytest.skip("no CMake build tree with cached_attention_test (install with pip install -e .)")
    return binary


@pytest.fixture
def restore_kernel_path():
    before = etlora.kernel_path()
    yield
    etlora.select_kernel_path(before)


def test_paths_are_listed_best_first_and_portable_always_runs():
    names = [path.name for path in PATHS]
    assert names[-1] == "portable" and PATHS[-1].runnable and PATHS[-1].needs == ""
    if platform.machine() in ("x86_64", "AMD64"):
        assert names == ["avx512", "avx2", "portable"]
    first_runnable = next(path.name for path in PATHS if path.runnable)
    expected = os.environ.get("ETLORA_KERNEL_PATH") or first_runnable
    assert etlora.kernel_path() == (first_runnable if expected == "auto" else expected)


@pytest.mark.parametrize("path", PATHS, ids=[path.name for path in PATHS])
def test_attention_kernel_matches_reference(path):
    runnable_or_skip(path)
    result = subprocess.run([kernel_test_binary(), path.name], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"path {path.name}: passed" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def references(fixtures_dir):
    model = fixtures_dir / "model"
    return {None: peft_logits(model, None, TOKENS), "legal": peft_logits(model, fixtures_dir / "legal", TOKENS)}


@pytest.mark.parametrize("path", PATHS, ids=[path.name for path in PATHS])
def test_session_matches_peft(bundle, references, path, restore_kernel_path):
    runnable_or_skip(path)
    assert etlora.select_kernel_path(path.name) == path.name
    session = etlora.load(bundle)
    for adapter in (None, "legal"):
        session.set_adapters({adapter: 1.0} if adapter else {})
        logits = session.logits(TOKENS)
        # Relative to the logits' scale: float32 sums over the tiny model's widths, any order.
        error = float(np.max(np.abs(logits - references[adapter])))
        assert error < 1e-5 * float(np.max(np.abs(references[adapter]))) + 1e-6, (path.name, adapter, error)


def test_unknown_and_unrunnable_paths_are_refused(restore_kernel_path):
    before = etlora.kernel_path()
    with pytest.raises(etlora.EtloraError, match=r"expected a kernel path of this build \(.*portable.*\), got 'sse9'"):
        etlora.select_kernel_path("sse9")
    for path in PATHS:
        if not path.runnable:
            with pytest.raises(etlora.EtloraError, match=f"needs {path.needs}, which this CPU lacks"):
                etlora.select_kernel_path(path.name)
    assert etlora.kernel_path() == before


def run_python(code: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **environment})


def test_environment_variable_chooses_the_path(bundle):
    shown = run_python(f"import etlora; etlora.load({str(bundle)!r}); print(etlora.kernel_path())",
                       ETLORA_KERNEL_PATH="portable")
    assert shown.returncode == 0 and shown.stdout.strip() == "portable", shown.stderr
    refused = run_python(f"import etlora; etlora.load({str(bundle)!r})", ETLORA_KERNEL_PATH="avx1024")
    assert refused.returncode != 0
    assert "ETLORA_KERNEL_PATH: expected a kernel path of this build" in refused.stderr, refused.stderr


def test_runner_says_and_takes_the_path(bundle):
    command = [runner_path(), "--model", str(bundle / "model.pte"), "--data", str(bundle / "foundation.ptd"),
               "--tokens", ",".join(map(str, TOKENS))]
    shown = subprocess.run([*command, "--kernel-path", "portable"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "kernel path: portable" in shown.stdout, shown.stdout + shown.stderr
    refused = subprocess.run([*command, "--kernel-path", "neon9"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--kernel-path" in refused.stderr and "neon9" in refused.stderr


def test_cli_run_verbose_names_the_cpu_and_path(bundle):
    result = subprocess.run(
        [sys.executable, "-m", "etlora.cli", "run", str(bundle), "--prompt", "hello", "--max-new-tokens", "2",
         "--kernel-path", "portable", "--verbose"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "kernel path: portable (runnable here: " in result.stderr and "cpu: " in result.stderr, result.stderr


# --- a CPU without AVX-512, emulated ----------------------------------------------------------------
# QEMU's x86-64 emulator implements AVX2 but not AVX-512 (`-cpu max`), so on any x86-64 host this runs
# the auto-selected non-AVX-512 path as a CPU without AVX-512 would, XNNPACK's own CPU detection included.

def qemu_x86() -> str:
    if platform.machine() != "x86_64":
        pytest.skip("emulating an x86-64 CPU without AVX-512 needs an x86-64 host")
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
    return qemu


def test_kernel_auto_selects_avx2_on_an_emulated_cpu_without_avx512():
    result = subprocess.run([qemu_x86(), "-cpu", "max", kernel_test_binary()], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "path avx512: skipped, this CPU lacks avx512f" in result.stdout, result.stdout
    assert "path avx2: passed" in result.stdout and "path portable: passed" in result.stdout, result.stdout


def test_runner_on_an_emulated_cpu_without_avx512_matches_python(bundle):
    expected = etlora.load(bundle, adapters={"legal": 1.0}).logits(TOKENS)
    result = subprocess.run(
        [qemu_x86(), "-cpu", "max", runner_path(), "--model", str(bundle / "model.pte"),
         "--data", str(bundle / "foundation.ptd"), "--no-packed-cache",
         "--adapter", f"{bundle / 'adapters' / 'legal.ptd'}=1.0", "--tokens", ",".join(map(str, TOKENS))],
        capture_output=True, text=True, timeout=600,
        env={key: value for key, value in os.environ.items() if key != "ETLORA_KERNEL_PATH"})  # auto
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["kernel path"] == "avx2", result.stdout
    printed = np.array([float(value) for value in lines["logits[:8]"].split()])
    # XNNPACK picks other (AVX2) microkernels there too: float32 rounding apart, the same logits.
    np.testing.assert_allclose(printed, expected[:8], rtol=0, atol=1e-5 * float(np.max(np.abs(expected))) + 1e-6)
    assert int(lines["argmax"]) == int(np.argmax(expected))
