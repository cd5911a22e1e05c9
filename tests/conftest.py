"""Session fixtures: one tiny random Llama, three PEFT adapters, and bundles exported from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from etlora.testing.fixtures import make_lora_adapter, make_tiny_llama, make_tiny_tokenizer

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
    """etlora_runner for aarch64 under qemu-aarch64, as it would run on a board."""
    import subprocess

    return subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(device_build / "bin" / "etlora_runner"),
                           *args], capture_output=True, text=True, timeout=timeout)
