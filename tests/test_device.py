"""The runtime on 64-bit ARM: scripts/device/build_device.sh's runner under qemu-aarch64, against x86.

Tolerance for ARM vs x86 logits: 1e-4 x the largest |logit| (and 1e-6 for the runner's 6-decimal
print). Both sides compute in float32; XNNPACK picks other microkernels on ARM (NEON vs AVX), and
our attention kernel other vector widths, so sums are rounded in another order. Higham's bound for
a float32 dot product of n terms is gamma_n = n u (u = 2^-24): for the tiny model's widths (64,
128) a few 1e-6 relative per layer, compounding over 2 layers and the head to well under 1e-4. A
wrong kernel, layout or adapter binding moves logits by 1e-2 or more.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import etlora
from conftest import arm_bound, arm_logits, run_on_arm

PROMPT = [1, 2, 3, 4, 5]
TOKENS = ",".join(map(str, PROMPT))
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("adapter", [None, "legal"])
def test_arm_runner_matches_the_x86_runtime(bundle_copy, device_build, adapter):
    x86 = etlora.load(bundle_copy, adapters={adapter: 1.0} if adapter else {}).logits(PROMPT)
    arm = arm_logits(device_build, bundle_copy, PROMPT, *(["--adapter", adapter] if adapter else []))
    assert arm.shape == x86.shape
    diff, bound = arm_bound(x86, arm)
    assert diff <= bound, (diff, bound)
    assert np.argmax(arm) == np.argmax(x86)


def test_arm_kernel_paths_neon_and_portable_agree(bundle_copy, device_build):
    neon = run_on_arm(device_build, "--bundle", str(bundle_copy), "--tokens", TOKENS, "--kernel-path", "neon")
    assert neon.returncode == 0 and "kernel path: neon" in neon.stdout, neon.stderr  # auto picks neon too
    first = arm_logits(device_build, bundle_copy, PROMPT, "--adapter", "legal", "--kernel-path", "neon")
    second = arm_logits(device_build, bundle_copy, PROMPT, "--adapter", "legal", "--kernel-path", "portable")
    diff, bound = arm_bound(first, second)
    assert diff <= bound, (diff, bound)
    refused = run_on_arm(device_build, "--bundle", str(bundle_copy), "--tokens", TOKENS, "--kernel-path", "avx512")
    assert refused.returncode != 0 and "expected a kernel path of this build" in refused.stderr


def test_packed_file_of_another_cpu_is_never_mapped(bundle_copy, device_build):
    """Same bundle, same executorch release, two CPUs: each packs into its own file, by name."""
    x86_first = etlora.load(bundle_copy, adapters={"legal": 1.0}).logits(PROMPT)
    cache = bundle_copy / ".etlora-cache"
    (x86_file,) = [p for p in cache.glob("*.bin")]
    x86_digest = hashlib.sha256(x86_file.read_bytes()).hexdigest()
    result = run_on_arm(device_build, "--bundle", str(bundle_copy), "--tokens", TOKENS, "--show-cache")
    assert result.returncode == 0, result.stderr
    assert "packed cache: written" in result.stderr, result.stderr  # not "mapped": the x86 file is not its
    files = sorted(p.name for p in cache.glob("*.bin"))
    assert len(files) == 2 and any("-aarch64-" in name for name in files) and any("-x86_64-" in name for name in files)
    assert hashlib.sha256(x86_file.read_bytes()).hexdigest() == x86_digest  # untouched by the ARM run
    again = etlora.load(bundle_copy, adapters={"legal": 1.0})
    assert again.packed_cache.source == "mapped"
    np.testing.assert_array_equal(again.logits(PROMPT), x86_first)


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / "device" / "build_device.sh"), *args], capture_output=True, text=True, timeout=300)


def test_build_device_refuses_bad_input_before_compiling(tmp_path, device_build):
    unknown = _script("--arch", "mips", "--out", str(tmp_path / "out"))
    assert unknown.returncode == 2 and unknown.stderr.strip() == "build_device: unknown architecture 'mips' (known: aarch64)"
    not_sdk = _script("--arch", "aarch64", "--out", str(tmp_path / "out"), "--sdk", str(tmp_path))
    assert not_sdk.returncode == 2 and "is not an ExecuTorch SDK" in not_sdk.stderr
    assert len(not_sdk.stderr.strip().splitlines()) == 1
    import executorch

    x86_sdk = Path(list(executorch.__path__)[0])
    wrong_arch = _script("--arch", "aarch64", "--out", str(tmp_path / "out"), "--sdk", str(x86_sdk))
    assert wrong_arch.returncode == 2 and "is an SDK for ELF machine 62, not aarch64 (183)" in wrong_arch.stderr
    # An aarch64 SDK of another release: the version file says 1.4.0.
    arm_sdk = REPO / "build-device" / "aarch64" / "sdk" / "executorch"
    fake = tmp_path / "sdk"
    (fake / "lib" / "cmake" / "executorch").mkdir(parents=True)
    shutil.copy(arm_sdk / "lib" / "libexecutorch.so", fake / "lib")
    shutil.copy(arm_sdk / "lib" / "cmake" / "executorch" / "executorch-config.cmake", fake / "lib" / "cmake" / "executorch")
    (fake / "lib" / "cmake" / "executorch" / "executorch-config-version.cmake").write_text(
        'set(EXECUTORCH_BUILD_VERSION "1.4.0+cpu")\n')
    old = _script("--arch", "aarch64", "--out", str(tmp_path / "out"), "--sdk", str(fake))
    assert old.returncode == 2 and "is ExecuTorch 1.4.0, the runtime is written for 1.5.1" in old.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing built


def test_arm_tokenizer_gives_the_x86_ids(device_build, tmp_path):
    """The aarch64 runner (PCRE2's ARM JIT, utf8proc) encodes as x86 and as Hugging Face do."""
    import json

    from etlora.testing.tokenizer_kinds import TokenizerKind, added_contents, build_tokenizer, sample_texts
    from test_cpp import runner_path
    from test_tokenizer import runner_encode_line

    for kind in (TokenizerKind.LLAMA3, TokenizerKind.QWEN2, TokenizerKind.LLAMA2_BYTE_FALLBACK,
                 TokenizerKind.DIGITS_AND_SPLITS, TokenizerKind.ADDED_TOKENS):
        hf = build_tokenizer(kind)
        folder = tmp_path / kind.value
        folder.mkdir()
        hf.save(str(folder / "tokenizer.json"))
        texts = sample_texts(300, seed=13, inserts=added_contents(hf))
        (folder / "texts.jsonl").write_text("".join(json.dumps(text) + "\n" for text in texts))
        arguments = ["--tokenizer", str(folder / "tokenizer.json"), "--encode", str(folder / "texts.jsonl")]
        arm = run_on_arm(device_build, *arguments)
        x86 = subprocess.run([runner_path(), *arguments], capture_output=True, text=True, timeout=120)
        assert arm.returncode == 0 and x86.returncode == 0, arm.stderr + x86.stderr
        assert arm.stdout == x86.stdout, kind
        assert arm.stdout.splitlines() == [runner_encode_line(hf, text) for text in texts], kind
