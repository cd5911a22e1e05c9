"""Every supported family (conftest's family_case: the bundles tests/test_families.py tests, built once
per run) through what tests/test_families.py does not run: per-module ranks and alphas against PEFT,
the aarch64 runner under qemu against the x86 runtime, a second start mapping the packed cache file,
and `etlora report`.

ARM vs x86 bound: 1e-4 x the largest |logit| + 1e-6 (the runner prints 6 decimals), argued in
tests/test_device.py: float32 on both sides, only the summation order differs (NEON vs AVX
microkernels, other vector widths in the attention kernel). These models have 3 layers and widths up
to 128 (Qwen3's heads of 24), so rounding stays near 1e-6 relative; a wrong kernel, layout, RoPE
table or adapter binding moves logits by 1e-2 or more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import etlora
from conftest import FAMILY_MAX_SEQ_LEN, FAMILY_TOKENS, arm_bound, arm_logits
from etlora.packed_cache import CACHE_DIR_NAME
from etlora.testing.fixtures import peft_reference_logits
from test_packed_cache import load_in_fresh_process

TOLERANCE = 1e-4  # runtime vs PEFT, as tests/test_families.py


def private_copy(bundle: Path, out: Path) -> Path:
    """The shared bundle without the packed cache files other tests' loads left in it."""
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns(CACHE_DIR_NAME))
    return out


def test_rank_and_alpha_patterns_equal_peft(family_case):
    """'patterned': rank 4 with one module at rank 2 and one site at rank 8, two modules with their
    own alpha (conftest.rank_and_alpha_patterns). The program's rank is the largest site's; a lower
    site is zero-padded, its scaling folded into lora_B; the logits equal PEFT's at every position."""
    from etlora.format.adapter_format import read_adapter_ptd
    from etlora.format.manifest import read_manifest

    family, model_dir, adapters, bundle = family_case
    record = read_manifest(bundle).adapters["patterned"]
    assert (record.rank, record.alpha, record.scaling) == (8, 8.0, 1.0), record
    tensors = read_adapter_ptd(bundle / record.file).tensors
    # Columns of lora_a ([1, in, max rank]) each site uses: q_proj (for Phi-3 the q part of its fused
    # qkv_proj) 2, layer 1's down_proj 8, every other site 4.
    for site, used in (("model.layers.0.self_attn.q_proj", 2), ("model.layers.1.mlp.down_proj", 8),
                       ("model.layers.0.mlp.down_proj", 4), ("model.layers.2.self_attn.o_proj", 4)):
        lora_a = tensors[f"{site}.lora_a"]
        assert np.all(lora_a[..., :used] != 0) and not np.any(lora_a[..., used:]), (family, site, used)
    expected = peft_reference_logits(model_dir, {adapters["patterned"]: 1.0}, FAMILY_TOKENS)
    foundation = peft_reference_logits(model_dir, {}, FAMILY_TOKENS)
    session = etlora.load(bundle, adapters={"patterned": 1.0})
    for end in range(1, len(FAMILY_TOKENS) + 1):
        error = float(np.max(np.abs(session.logits(FAMILY_TOKENS[:end]) - expected[end - 1])))
        assert error <= TOLERANCE, f"{family} prefill of {end}: max |runtime - PEFT| = {error:.2e}"
    assert float(np.max(np.abs(expected - foundation))) > 1e-2, f"{family}: the adapter changes nothing"


def test_arm_runner_matches_the_x86_runtime(family_case, device_build, tmp_path):
    """Two adapters bound at once (patterned at 1, attn's rsLoRA at -0.5), 12 tokens: past Gemma's
    window of 4 and through SmolLM3's layer without RoPE."""
    family, _, _, bundle = family_case
    copy = private_copy(bundle, tmp_path / "bundle")
    x86 = etlora.load(copy, adapters={"patterned": 1.0, "attn": -0.5}).logits(FAMILY_TOKENS)
    arm = arm_logits(device_build, copy, FAMILY_TOKENS, "--adapter", "patterned", "--adapter", "attn=-0.5")
    assert arm.shape == x86.shape == (256,), family
    difference, bound = arm_bound(x86, arm)
    assert difference <= bound, f"{family}: ARM vs x86 max |difference| {difference:.2e} > {bound:.2e}"
    assert np.argmax(arm) == np.argmax(x86), family


def test_second_start_maps_the_packed_cache_with_identical_logits(family_case, tmp_path):
    family, _, _, bundle = family_case
    copy = private_copy(bundle, tmp_path / "bundle")
    adapters = {"patterned": 1.0, "attn": -0.5}
    first_info, first = load_in_fresh_process(copy, adapters=adapters, tokens=FAMILY_TOKENS)
    later_info, later = load_in_fresh_process(copy, adapters=adapters, tokens=FAMILY_TOKENS)
    assert first_info["source"] == "written" and first_info["file_bytes"] > 0, (family, first_info)
    assert later_info["source"] == "mapped" and later_info["path"] == first_info["path"], (family, later_info)
    assert later_info["mapped_bytes"] >= later_info["file_bytes"] == first_info["file_bytes"], (family, later_info)
    assert first.shape == (256,) and np.array_equal(later, first), (
        f"{family}: mapped start differs by {float(np.max(np.abs(later - first))):.3g}")


def test_report_figures_match_the_manifest(family_case, tmp_path):
    """`etlora report --no-naive` (the naive column exports a merged model per adapter: the same
    export the family bundle went through, minutes more per family): disk figures are the manifest's
    and the files' sizes, the planned KV cache is the family's shape, each adapter's cost is its file."""
    from etlora.cli import main
    from etlora.format.manifest import read_manifest
    from etlora.report import Report
    from etlora.report.plan import kv_cache_bytes_from_shape

    family, _, _, bundle = family_case
    copy = private_copy(bundle, tmp_path / "bundle")
    out = tmp_path / "report"
    assert main(["report", str(copy), "--adapters", "patterned", "--no-naive", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    manifest = read_manifest(copy)
    size = {name: record.size for name, record in manifest.files.items()}
    adapter_file = manifest.adapters["patterned"].file
    disk = report["disk"]
    assert disk["foundation_bytes"] == size[manifest.foundation.file] == (copy / "foundation.ptd").stat().st_size
    assert disk["program_bytes"] == size[manifest.program.file] == (copy / "model.pte").stat().st_size
    assert disk["adapter_bytes"] == {"patterned": size[adapter_file]}
    assert size[adapter_file] == (copy / adapter_file).stat().st_size
    assert disk["bundle_adapters"] == len(manifest.adapters) == 4
    assert disk["bundle_adapter_bytes"] == sum(size[record.file] for record in manifest.adapters.values())
    on_disk = sum(path.stat().st_size for path in copy.rglob("*")
                  if path.is_file() and CACHE_DIR_NAME not in path.relative_to(copy).parts)
    # The bundle's files as the manifest lists them (manifest.json itself is not counted), no tokenizer.
    assert disk["bundle_bytes"] == sum(size.values()) == on_disk - (copy / "manifest.json").stat().st_size, family
    assert disk["other_bytes"] == 0

    config = manifest.foundation.config
    expected_kv = kv_cache_bytes_from_shape(config["num_layers"], config["num_kv_heads"], config["head_dim"],
                                            FAMILY_MAX_SEQ_LEN)
    per_session = report["per_session"]
    assert per_session["kv_cache_bytes"] == expected_kv and per_session["kv_cache_tensors"] == 2 * config["num_layers"]
    assert per_session["kv_cache_bytes"] < per_session["planned_bytes"] == sum(per_session["buffer_bytes"])
    assert per_session["measured_rss_bytes"] > 0

    (cost,) = report["adapter_costs"]
    assert cost["adapter"] == "patterned" and cost["ptd_bytes"] == size[adapter_file]
    assert 0 < cost["resident_adapter_pages"] <= cost["ptd_bytes"] + 4096, cost  # the last page is whole
    assert cost["passed"] == (cost["times_ptd"] <= 1.1)
    assert report["naive"]["processes"] == [] and "--no-naive" in report["naive"]["note"]
    assert Report.from_dict(report).to_dict() == report
    assert "adapter cost beyond per-session state (patterned):" in (out / "report.md").read_text()


@pytest.mark.heavy
def test_report_naive_column_is_the_merged_model(family_case, tmp_path):
    """The naive column of `etlora report` per family: one merged model per adapter (PEFT's
    merge_and_unload), exported foundation-only. Its bundle must be the model the adapter makes (the
    logits of PEFT at strength 1 at every position, within the runtime's 1e-4), the same size as the
    family bundle's foundation and program (merging changes values, not shapes), and each merged model
    is measured in its own process. Heavy: a merged export and two measured processes per family."""
    from etlora.cli import main
    from etlora.format.manifest import read_manifest

    family, model_dir, adapters, bundle = family_case
    copy = private_copy(bundle, tmp_path / "bundle")
    out = tmp_path / "report"
    assert main(["report", str(copy), "--adapters", "all", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["naive"]["note"] == "" and [p["adapter"] for p in report["naive"]["processes"]] == ["all"]
    (process,) = report["naive"]["processes"]
    assert process["loaded"]["pss"] > 0 and report["naive"]["total_pss"] == process["loaded"]["pss"]

    naive_bundle = out / "naive_cache" / "all" / "bundle"
    naive_manifest, manifest = read_manifest(naive_bundle), read_manifest(copy)
    assert naive_manifest.adapters == {} and naive_manifest.foundation.config == manifest.foundation.config
    assert (naive_bundle / "foundation.ptd").stat().st_size == (copy / "foundation.ptd").stat().st_size, family

    session = etlora.load(naive_bundle)
    logits = np.stack([session.forward([token], position) for position, token in enumerate(FAMILY_TOKENS)])
    expected = peft_reference_logits(model_dir, adapters["all"], FAMILY_TOKENS)
    assert np.max(np.abs(logits - expected)) <= TOLERANCE, (family, float(np.max(np.abs(logits - expected))))
