"""A hundred adapters in one bundle: opening it maps none of them, and a resident budget bounds RSS.

The 100 adapters are random LoRA weights of the fixture adapters' shapes, written straight into a
copy of the tiny bundle (adapter files and manifest entries as add-adapter writes them). Memory is
read from /proc in child processes, so the figures are the runtime's alone; time is the
benchmark's business (scripts/bench/bench_switch.py), not this test's.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from etlora.export.adapter_file import write_adapter_ptd
from etlora.export.adapters import load_adapter
from etlora.export.bundle import adapter_record
from etlora.export.families import DecoderShape
from etlora.format.adapter_format import AdapterDtype
from etlora.format.manifest import FileRecord, read_manifest

COUNT = 100

CHILD = textwrap.dedent(
    """
    import json, sys
    import etlora

    def status():
        fields = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
        return fields

    def adapter_rss():
        total, inside = 0, False
        for line in open("/proc/self/smaps"):
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                inside = len(head) > 5 and "/adapters/" in head[5]
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
        return total

    def mapped_adapter_files():
        return len({line.split()[-1] for line in open("/proc/self/maps") if "/adapters/" in line})

    bundle, budget, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",") if sys.argv[3] else []
    import etlora._runtime  # the runtime's libraries, before the first figure
    before = status()
    session = etlora.load(bundle, max_resident_adapters=budget)
    session.logits([1, 2, 3, 4])
    opened = status()
    figures = {"open_rss": opened["VmRSS"] - before["VmRSS"], "mapped_after_open": mapped_adapter_files()}
    for name in names:
        session.set_adapters({name: 1.0})
        session.logits([1, 2, 3, 4])
    used = status()
    figures.update({"mapped_after_use": mapped_adapter_files(), "resident": session.resident_adapters,
                    "adapter_file_rss_growth": adapter_rss(),  # adapter files only, not other file pages
                    "anon_growth": used["RssAnon"] - opened["RssAnon"]})
    print(json.dumps(figures))
    """
)


def _child(bundle, budget: int, names: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(bundle), str(budget), ",".join(names)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hundred_bundle(bundle, fixtures_dir, tmp_path_factory):
    import shutil

    out = tmp_path_factory.mktemp("many") / "bundle"
    shutil.copytree(bundle, out)
    manifest = read_manifest(out)
    shape = DecoderShape.from_summary(manifest.foundation.config)
    template = load_adapter("legal", fixtures_dir / "legal", shape)
    generator = torch.Generator().manual_seed(100)
    files, records = dict(manifest.files), dict(manifest.adapters)
    for index in range(COUNT):
        name = f"customer{index:03d}"
        tensors = {site: (torch.randn(a.shape, generator=generator) * 0.05,
                          torch.randn(b.shape, generator=generator) * 0.05)
                   for site, (a, b) in template.tensors.items()}
        adapter = dataclasses.replace(template, name=name, tensors=tensors, source=f"random:{index}")
        relative = f"adapters/{name}.ptd"
        write_adapter_ptd(adapter, manifest.program_slots(), out / relative)
        files[relative] = FileRecord.of(out / relative)
        records[name] = adapter_record(adapter, relative, AdapterDtype.FP32)
    dataclasses.replace(manifest, files=files, adapters=records).write(out)
    return out


def test_opening_a_hundred_adapter_bundle_maps_none_and_costs_what_one_costs(bundle, hundred_bundle):
    one = _child(bundle, 0, [])
    hundred = _child(hundred_bundle, 0, [])
    assert len(read_manifest(hundred_bundle).adapters) == COUNT + 2
    assert hundred["mapped_after_open"] == one["mapped_after_open"] == 0
    # The manifest's 100 entries are a few hundred kB of Python objects at most.
    assert hundred["open_rss"] <= 1.05 * one["open_rss"] + 512 * 1024, (hundred, one)


def test_a_resident_budget_bounds_the_adapters_mapped(hundred_bundle):
    names = [f"customer{index:03d}" for index in range(40)]
    unbounded = _child(hundred_bundle, 0, names)
    bounded = _child(hundred_bundle, 4, names)
    assert unbounded["mapped_after_use"] == 40
    assert bounded["mapped_after_use"] == 4
    assert bounded["resident"] == names[:-5:-1]  # the last four, most recent first
    adapter_bytes = (hundred_bundle / "adapters" / "customer000.ptd").stat().st_size
    assert bounded["adapter_file_rss_growth"] <= 5 * adapter_bytes
    assert unbounded["adapter_file_rss_growth"] >= 30 * adapter_bytes * 0.5


def test_report_on_a_hundred_adapter_bundle_pays_only_for_the_activated(hundred_bundle, tmp_path):
    """`etlora report --adapters a,b` on the 102-adapter bundle: the bundle opens with no adapter
    page resident, and with both in use only their pages are (the other 100 cost nothing)."""
    from etlora.cli import main

    chosen = ["customer007", "customer042"]
    out = tmp_path / "report"
    assert main(["report", str(hundred_bundle), "--adapters", ",".join(chosen), "--no-naive", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    ptd = {name: (hundred_bundle / "adapters" / f"{name}.ptd").stat().st_size for name in chosen}
    assert report["disk"]["adapter_bytes"] == ptd
    assert report["disk"]["bundle_adapters"] == COUNT + 2
    unused = report["unused_adapters"]
    assert unused["open_adapter_rss"] == 0
    assert 0.5 * sum(ptd.values()) <= unused["in_use_adapter_pss"] <= 1.05 * sum(ptd.values()), unused
    targets = {target["name"].split(" (")[0]: target["passed"] for target in report["targets"]}
    assert targets["adapters not activated cost no RAM"] is True
    # the other 100 adapters' files count on disk, not against the measured ones
    assert targets["disk: bundle within 1% of foundation + adapters"] is True
    assert f"2 of the bundle's {COUNT + 2} adapters measured" in (out / "report.md").read_text()
