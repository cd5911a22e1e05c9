"""--adapter-dtype fp16: half-size adapter files, widened to float32 by the runtime at load."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import etlora
from etlora.export import add_adapter
from etlora.format.adapter_format import AdapterDtype, read_adapter_ptd
from etlora.format.errors import AdapterError
from etlora.format.manifest import FORMAT_VERSION, read_manifest

from conftest import TOKENS


@pytest.fixture
def fp16_bundle(bundle_copy, fixtures_dir):
    add_adapter(bundle_copy, "support16", fixtures_dir / "support", dtype=AdapterDtype.FP16)
    return bundle_copy


def test_fp16_file_holds_the_fp32_weights_rounded_in_half_the_bytes(fp16_bundle):
    manifest = read_manifest(fp16_bundle)
    assert manifest.adapters["support16"].dtype == "fp16"
    assert manifest.adapters["support"].dtype == "fp32"
    assert json.loads((fp16_bundle / "manifest.json").read_text())["format_version"] == FORMAT_VERSION >= 3

    full = read_adapter_ptd(fp16_bundle / manifest.adapters["support"].file)
    half = read_adapter_ptd(fp16_bundle / manifest.adapters["support16"].file)
    assert set(half.tensors) == set(full.tensors)
    assert half.scaling == full.scaling and half.foundation_fingerprint == full.foundation_fingerprint
    for key, values in full.tensors.items():
        assert half.tensors[key].dtype == np.float16, key
        np.testing.assert_array_equal(half.tensors[key], values.astype(np.float16), err_msg=key)
    tensor_bytes = sum(v.nbytes for v in full.tensors.values())
    size_full = (fp16_bundle / manifest.adapters["support"].file).stat().st_size
    size_half = (fp16_bundle / manifest.adapters["support16"].file).stat().st_size
    # Tensor payload halves; page alignment (4 KiB per tensor) pads both files alike.
    assert size_full - size_half >= tensor_bytes // 2 - 4096 * len(full.tensors)
    assert size_half < size_full


def test_fp16_adapter_logits_stay_within_rounding_of_fp32(fp16_bundle):
    session = etlora.load(fp16_bundle)
    session.set_adapters({})
    foundation = session.logits(TOKENS)
    session.set_adapters({"support": 1.0})
    fp32_adapter = session.logits(TOKENS)
    session.set_adapters({"support16": 1.0})
    fp16_adapter = session.logits(TOKENS)
    effect = np.abs(fp32_adapter - foundation).max()
    rounding = np.abs(fp16_adapter - fp32_adapter).max()
    # float16 keeps 11 significant bits: each A and B weight moves by at most 2^-11 relative, so the
    # update B(Ax) moves by about 2 * 2^-11 ~ 0.1% of its size, and a few layers compound that. A
    # bound of 1% of the adapter's effect on the logits leaves that margin and still fails for a
    # wrong key, scale or byte order (any of which moves the logits by the effect's own size).
    assert effect > 1e-2
    assert rounding <= 0.01 * effect, (rounding, effect)
    assert rounding > 0  # the fp16 file was really read, not the fp32 one


def test_unknown_adapter_dtype_is_refused_before_any_work(bundle_copy, fixtures_dir):
    with pytest.raises(AdapterError, match="--adapter-dtype: expected one of"):
        AdapterDtype.parse("bf16")
    before = (bundle_copy / "manifest.json").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "etlora.cli", "add-adapter", str(bundle_copy),
         "--adapter", f"x={fixtures_dir / 'support'}", "--adapter-dtype", "int8"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "--adapter-dtype: expected one of ['fp32', 'fp16'], received 'int8'" in result.stderr
    assert (bundle_copy / "manifest.json").read_bytes() == before
    assert not (bundle_copy / "adapters" / "x.ptd").exists()
