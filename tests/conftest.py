"""Session fixtures: one tiny random Llama, three PEFT adapters, and bundles exported from them; one
tiny model of each family with its adapters and bundle (family_case); the aarch64 runner under qemu."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

from etlora.testing.fixtures import (FAMILY_CONFIGS, make_lora_adapter, make_tiny_llama, make_tiny_model,
                                     make_tiny_tokenizer)

# Two adapters of different ranks and target sets, plus one added later with add-adapter.
ADAPTERS = {
    "support": dict(rank=4, target_modules=["q_proj", "v_proj"], seed=11),
    "legal": dict(rank=8, target_modules=["q_proj", "o_proj", "down_proj"], seed=12, use_rslora=True),
    "sql": dict(rank=6, target_modules=["v_proj", "down_proj"], seed=13),
}
MAX_SEQ_LEN = 64
TOKENS = [1, 17, 42, 99, 3, 250, 7, 64]
TARGETS = "q_proj,v_proj,o_proj,down_proj"


def pytest_addoption(parser):
    parser.addoption("--heavy", action="store_true", help="also run the tests marked heavy")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests on the real model (minutes)")
    config.addinivalue_line(
        "markers", "heavy: end-to-end tests too long for CI's budget; run only with --heavy"
    )


def pytest_collection_modifyitems(config, items):
    """`heavy` tests run only with --heavy: the default run, which CI runs, skips them with the reason."""
    if config.getoption("--heavy"):
        return
    skip = pytest.mark.skip(reason="heavy (several minutes each): run with --heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fixtures")
    # The tokenizer is saved beside the weights, as in a Hugging Face checkpoint, and the model's
    # vocabulary is exactly the tokenizer's, so every id the model can pick decodes.
    tokenizer = make_tiny_tokenizer(root / "model")
    model = make_tiny_llama(root / "model", seed=0, vocab_size=len(tokenizer))
    for name, spec in ADAPTERS.items():
        make_lora_adapter(model, root / name, **spec)
    return root


@pytest.fixture(scope="session")
def model_dir(fixtures_dir) -> Path:
    return fixtures_dir / "model"


@pytest.fixture(scope="session")
def bundle(fixtures_dir, tmp_path_factory) -> Path:
    """support + legal exported; the program sized for sql too (max rank 8, union of targets)."""
    from etlora.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "main"
    export_bundle(
        fixtures_dir / "model",
        {"support": fixtures_dir / "support", "legal": fixtures_dir / "legal"},
        out,
        ExportOptions(max_seq_len=MAX_SEQ_LEN, target_modules=TARGETS, adapter_slots=2),
    )
    return out


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    """A private copy for tests that modify or damage the bundle."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer with ChatML tokens, trained on the spot (transformers fast tokenizer)."""
    from etlora.testing.fixtures import make_tiny_tokenizer

    return make_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer_file(tiny_tokenizer, tmp_path_factory) -> Path:
    """tokenizer/tokenizer.json (with etlora_chat.json beside it) written for tiny_tokenizer."""
    from etlora.export.tokenizer_file import TOKENIZER_JSON, write_tokenizer_files

    out = tmp_path_factory.mktemp("tiny_tokenizer_files") / "tokenizer"
    write_tokenizer_files(tiny_tokenizer, out)
    return out / TOKENIZER_JSON


@pytest.fixture(scope="session")
def device_build(tmp_path_factory) -> Path:
    """etlora_runner cross-built for aarch64 by scripts/device/build_device.sh (skipped without the cross
    compiler or qemu-aarch64, or when the registry cannot serve the aarch64 executorch wheel)."""
    import shutil
    import subprocess

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is missing (apt-get install g++-aarch64-linux-gnu)")
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 is missing (apt-get install qemu-user)")
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("device") / "aarch64"
    result = subprocess.run([str(repo / "scripts" / "device" / "build_device.sh"), "--arch", "aarch64", "--out", str(out)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0 and "could not download" in result.stderr:
        pytest.skip(f"no aarch64 executorch wheel: {result.stderr.strip()}")
    if result.returncode != 0 and "scripts/setup_system.sh --arm64" in result.stderr:
        pytest.skip(f"no arm64 PCRE2/utf8proc: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out


def run_on_arm(device_build: Path, *args: str, timeout: int = 600):
    """etlora_runner for aarch64 under qemu-aarch64, as it would run on a board.

    The guest's library path names the cross sysroot first: with Debian's libc6:arm64 installed
    (multiarch), the host's /etc/ld.so.cache sends the guest's loader (the sysroot's) to
    /lib/aarch64-linux-gnu/libc.so.6, another glibc build than the loader's, and the runner spins
    forever in its first thread start."""
    import subprocess

    return subprocess.run(["qemu-aarch64", "-L", ARM_SYSROOT, "-E", f"LD_LIBRARY_PATH={ARM_SYSROOT}/lib",
                           str(device_build / "bin" / "etlora_runner"), *args],
                          capture_output=True, text=True, timeout=timeout)


ARM_SYSROOT = "/usr/aarch64-linux-gnu"


def arm_logits(device_build: Path, bundle: Path, tokens: list[int], *args: str) -> np.ndarray:
    """Every logit of the last position, as the aarch64 runner prints them (6 decimals)."""
    result = run_on_arm(device_build, "--bundle", str(bundle), "--tokens", ",".join(map(str, tokens)),
                        "--show", "1000000", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("logits[:"))
    return np.array([float(v) for v in line.split("]:", 1)[1].split()], dtype=np.float64)


def arm_bound(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max |difference|, allowed): 1e-4 x the largest |logit| plus the print's rounding
    (tests/test_device.py argues the bound)."""
    return float(np.abs(reference - other).max()), 1e-4 * max(1.0, float(np.abs(reference).max())) + 1e-6


# --- one tiny model per family (tests/test_families.py, tests/test_families_device.py) ---------------

FAMILY_TOKENS = [1, 17, 42, 99, 3, 250, 7, 64, 5, 128, 33, 200]  # longer than Gemma's window of 4
FAMILY_MAX_SEQ_LEN = 32
INVOCATION = [42, 99]  # FAMILY_TOKENS[2:4]
# PEFT's names for every linear module of a block; Phi-3 fuses q/k/v and gate/up.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
FAMILY_ADAPTERS = ("all", "attn", "invoked", "patterned")


def family_targets(family: str) -> list[str]:
    return PHI3_LINEAR if family == "phi3" else ALL_LINEAR


def rank_and_alpha_patterns(family: str) -> dict:
    """PEFT's per-module ranks and alphas over a rank-4 adapter: one module lower (Phi-3's fused
    qkv_proj as one module), one site of layer 1 above (the adapter's rank becomes 8), two alphas."""
    fused = family == "phi3"
    return dict(rank_pattern={"qkv_proj" if fused else "q_proj": 2, "model.layers.1.mlp.down_proj": 8},
                alpha_pattern={"o_proj": 3.0, "gate_up_proj" if fused else "up_proj": 12.0})


class FamilyCase(NamedTuple):
    family: str
    model_dir: Path
    adapters: dict[str, Path]  # FAMILY_ADAPTERS -> PEFT adapter dir
    bundle: Path  # shared by every test of the run: copy it before anything that changes it


def _build_family_case(root: Path, family: str) -> None:
    """The tiny model (seed 3) and four adapters: 'all' (rank 4, every linear module), 'attn' (rank 8,
    rsLoRA, two attention modules), 'invoked' (an activated LoRA on INVOCATION), 'patterned'
    (rank_and_alpha_patterns); exported with two slots."""
    from etlora.export import ExportOptions, export_bundle

    model_dir = make_tiny_model(root / "model", family, seed=3)
    targets = family_targets(family)
    adapters = {
        "all": make_lora_adapter(model_dir, root / "all", rank=4, target_modules=targets, seed=5),
        "attn": make_lora_adapter(model_dir, root / "attn", rank=8, target_modules=targets[:2], seed=6,
                                  use_rslora=True),
        "invoked": make_lora_adapter(model_dir, root / "invoked", rank=4, target_modules=targets[:1], seed=7,
                                     alora_invocation_tokens=INVOCATION),
        "patterned": make_lora_adapter(model_dir, root / "patterned", rank=4, target_modules=targets, seed=9,
                                       **rank_and_alpha_patterns(family)),
    }
    export_bundle(model_dir, adapters, root / "bundle", ExportOptions(max_seq_len=FAMILY_MAX_SEQ_LEN, adapter_slots=2))


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` once per test run, by whichever pytest-xdist worker asks first; the others wait
    for it and reuse the folder (exports take most of a family test's time). Built in place, so
    that recorded paths stay valid, and marked complete last; a half-built folder is built again."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    shared = shared / "built_once"
    shared.mkdir(exist_ok=True)
    folder, complete = shared / name, shared / f"{name}.complete"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not complete.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            complete.touch()
    return folder


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def family_case(request, tmp_path_factory) -> FamilyCase:
    family = request.param
    root = built_once(tmp_path_factory, f"family-{family}", lambda folder: _build_family_case(folder, family))
    return FamilyCase(family, root / "model", {name: root / name for name in FAMILY_ADAPTERS}, root / "bundle")
