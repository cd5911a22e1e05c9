"""Adapters are checked once, by one rule in two languages, and bound many times.

The C++ runtime (AdapterFile::check_for_program) and the torch-free Python check
(adapter_format.check_adapter_for_program, used by `etlora inspect`) must refuse the same files with
the same words; a Session keeps checked adapters open so that switching back only re-binds.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import etlora
from etlora.export.adapter_file import write_adapter_ptd
from etlora.export.adapters import load_adapter
from etlora.export.families import DecoderShape
from etlora.format.adapter_format import ProgramSlots, check_adapter_for_program, read_adapter_ptd
from etlora.format.errors import AdapterError, BundleError, EtloraError
from etlora.format.manifest import read_manifest

from conftest import TOKENS


def _shape(manifest) -> DecoderShape:
    return DecoderShape.from_summary(manifest.foundation.config)


def _bad_adapter_files(bundle_dir, fixtures_dir, out_dir):
    """One file per rule of the check, each breaking exactly that rule."""
    manifest = read_manifest(bundle_dir)
    slots = manifest.program_slots()
    support = load_adapter("support", fixtures_dir / "support", _shape(manifest))
    files = {}
    files["fingerprint"] = dataclasses.replace(slots, foundation_fingerprint="f" * 64), support
    # A k_proj site: the program was exported for q/v/o/down only.
    q_site = next(site for site in support.sites if site.endswith("q_proj"))
    k_site = q_site.replace("q_proj", "k_proj")
    lora_a, _ = support.tensors[q_site]
    k_out = _shape(manifest).linear_dims("k_proj")[1]
    import torch

    k_adapter = dataclasses.replace(support, tensors={k_site: (lora_a, torch.ones(k_out, support.rank))})
    files["site"] = ProgramSlots(slots.sites + (k_site,), slots.site_dims + ((lora_a.shape[1], k_out),),
                                 slots.max_rank, slots.foundation_fingerprint), k_adapter
    files["rank"] = dataclasses.replace(slots, max_rank=slots.max_rank + 4), support
    paths = {}
    for rule, (write_slots, adapter) in files.items():
        paths[rule] = out_dir / f"{rule}.ptd"
        write_adapter_ptd(adapter, write_slots, paths[rule])
    return paths


@pytest.mark.parametrize("rule", ["fingerprint", "site", "rank"])
def test_cpp_and_python_refuse_with_the_same_words(bundle, fixtures_dir, tmp_path, rule):
    from etlora import _runtime

    path = _bad_adapter_files(bundle, fixtures_dir, tmp_path)[rule]
    manifest = read_manifest(bundle)
    program = str(bundle / manifest.program.file)
    with pytest.raises(AdapterError) as python_error:
        check_adapter_for_program(read_adapter_ptd(path), manifest.program_slots(), path, program)
    runtime = _runtime.Session(program, str(bundle / manifest.foundation.file))
    with pytest.raises((ValueError, RuntimeError)) as cpp_error:
        runtime.set_adapters([(str(path), 1.0)])
    assert str(cpp_error.value) == str(python_error.value)
    assert {"fingerprint": "is for foundation ffffffffffff", "site": "k_proj, program",
            "rank": "expected shape [1, "}[rule] in str(cpp_error.value)


def test_inspect_reports_an_adapter_that_does_not_fit_the_program(bundle_copy, fixtures_dir, tmp_path):
    from etlora.inspect_bundle import inspect_bundle

    bad = _bad_adapter_files(bundle_copy, fixtures_dir, tmp_path)["rank"]
    shutil.copy(bad, bundle_copy / "adapters" / "support.ptd")
    problems = inspect_bundle(bundle_copy).problems
    assert any("support.ptd: key" in p and "expected shape" in p for p in problems), problems


def test_switching_back_rebinds_the_open_file(bundle):
    session = etlora.load(bundle)
    foundation = session.logits(TOKENS)
    session.set_adapters({"support": 1.0})
    support = session.logits(TOKENS)
    session.set_adapters({"legal": 1.0})
    legal = session.logits(TOKENS)
    session.set_adapters({"support": 1.0})
    assert session.resident_adapters == ["support", "legal"]
    np.testing.assert_array_equal(session.logits(TOKENS), support)
    session.set_adapters({})
    np.testing.assert_array_equal(session.logits(TOKENS), foundation)
    assert np.abs(support - legal).max() > 1e-3


def test_a_file_rewritten_at_the_same_path_is_opened_again(bundle_copy):
    session = etlora.load(bundle_copy, adapters={"support": 1.0})
    session.set_adapters({"legal": 1.0})
    legal = session.logits(TOKENS)
    shutil.copy(bundle_copy / "adapters" / "legal.ptd", bundle_copy / "adapters" / "support.tmp")
    (bundle_copy / "adapters" / "support.tmp").replace(bundle_copy / "adapters" / "support.ptd")
    session.set_adapters({"support": 1.0})
    np.testing.assert_array_equal(session.logits(TOKENS), legal)


def test_resident_budget_closes_the_least_recently_used(bundle):
    session = etlora.load(bundle, max_resident_adapters=1)
    session.set_adapters({"support": 1.0})
    session.set_adapters({"legal": 1.0})
    assert session.resident_adapters == ["legal"]
    both = etlora.load(bundle, max_resident_adapters=1)
    both.set_adapters({"support": 1.0, "legal": 0.5})  # bound adapters are never closed
    assert sorted(both.resident_adapters) == ["legal", "support"]
    both.set_adapters({"legal": 1.0})
    assert both.resident_adapters == ["legal"]
    with pytest.raises(EtloraError, match="max_resident_adapters: expected an int >= 0"):
        etlora.load(bundle, max_resident_adapters=-1)


def test_resident_byte_budget_closes_what_does_not_fit(bundle):
    """max_resident_adapter_bytes counts the open files' sizes; the active adapters always stay."""
    sizes = {name: (bundle / "adapters" / f"{name}.ptd").stat().st_size for name in ("support", "legal")}
    session = etlora.load(bundle, max_resident_adapter_bytes=sum(sizes.values()))
    session.set_adapters({"support": 1.0})
    session.set_adapters({"legal": 1.0})
    assert session.resident_adapters == ["legal", "support"]  # both fit
    assert session.resident_adapter_bytes == sum(sizes.values())
    tight = etlora.load(bundle, max_resident_adapter_bytes=sum(sizes.values()) - 1)
    tight.set_adapters({"support": 1.0})
    tight.set_adapters({"legal": 1.0})
    assert tight.resident_adapters == ["legal"] and tight.resident_adapter_bytes == sizes["legal"]
    tight.set_adapters({"support": 1.0, "legal": 0.5})  # above the budget, but both bound
    assert sorted(tight.resident_adapters) == ["legal", "support"]
    tight.set_adapters({})
    assert len(tight.resident_adapters) == 1  # the most recently bound one that fits
    with pytest.raises(EtloraError, match="max_resident_adapter_bytes: expected an int >= 0"):
        etlora.load(bundle, max_resident_adapter_bytes=-5)


@pytest.mark.parametrize("bad, message", [
    ({"support": float("nan")}, "strength must be a finite number"),
    ({"support": float("inf")}, "strength must be a finite number"),
    ({"nope": 1.0}, "no adapter named 'nope'"),
    ({"support": 1.0, "legal": 1.0, "sql": 1.0}, "3 adapters requested"),
])
def test_a_bad_choice_leaves_the_session_unchanged(bundle, bad, message):
    session = etlora.load(bundle, adapters={"legal": 0.5})
    before = session.logits(TOKENS)
    with pytest.raises(EtloraError, match=message):
        session.set_adapters(bad)
    assert session.active_adapters == {"legal": 0.5}
    np.testing.assert_array_equal(session.logits(TOKENS), before)


def test_the_same_file_twice_is_refused_by_the_runtime(bundle):
    from etlora import _runtime

    manifest = read_manifest(bundle)
    runtime = _runtime.Session(str(bundle / manifest.program.file), str(bundle / manifest.foundation.file))
    path = str(bundle / manifest.adapters["support"].file)
    with pytest.raises(ValueError, match="is given twice"):
        runtime.set_adapters([(path, 1.0), (path, 0.5)])
    assert runtime.active_adapters == []


def test_a_bad_file_after_a_good_one_binds_neither(bundle_copy, fixtures_dir, tmp_path):
    session = etlora.load(bundle_copy)
    foundation = session.logits(TOKENS)
    bad = _bad_adapter_files(bundle_copy, fixtures_dir, tmp_path)["fingerprint"]
    shutil.copy(bad, bundle_copy / "adapters" / "legal.ptd")
    with pytest.raises(BundleError, match="adapter 'legal': .*is for foundation ffff"):
        session.set_adapters({"support": 1.0, "legal": 1.0})
    assert session.active_adapters == {}
    np.testing.assert_array_equal(session.logits(TOKENS), foundation)
