"""`etlora report` on the tiny bundle: planned memory, figures from child processes, the files."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import MAX_SEQ_LEN

from etlora.cli import main
from etlora.inspect_bundle import inspect_bundle
from etlora.report import Report
from etlora.report.plan import kv_cache_bytes_from_shape, read_planned_memory
from etlora.report.render import render_markdown
from etlora.report.schema import REGIONS, Step
from etlora.testing.fixtures import tiny_llama_config

FIGURES = ("rss", "pss", "private", "shared")


@pytest.fixture(scope="module")
def report_dir(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(bundle), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(report_dir):
    return json.loads((report_dir / "report.json").read_text())


def test_planned_memory_kv_cache_equals_the_model_shape(bundle):
    config = tiny_llama_config()
    head_dim = config.hidden_size // config.num_attention_heads
    planned = read_planned_memory(bundle / "model.pte")
    expected_kv = kv_cache_bytes_from_shape(config.num_hidden_layers, config.num_key_value_heads, head_dim, MAX_SEQ_LEN)
    assert expected_kv == 2 * 2 * 2 * 64 * 16 * 4  # K and V x 2 layers x 2 kv heads x 64 positions x 16 x float32
    assert planned.kv_cache_bytes == expected_kv
    assert planned.kv_cache_tensors == 2 * config.num_hidden_layers
    # every planned tensor lies inside the planned buffers, and they hold more than the cache
    assert expected_kv < planned.planned_end_bytes <= planned.planned_bytes
    assert planned.activation_bytes == planned.planned_bytes - expected_kv


def test_schema_has_every_section(report, bundle):
    assert report["schema_version"] == 2
    assert set(report) >= {"bundle", "adapters", "load_options", "machine", "notes", "disk", "per_session",
                           "adapter_costs", "sessions", "growth", "two_processes", "naive", "comparison", "targets"}
    planned = read_planned_memory(bundle / "model.pte")
    per_session = report["per_session"]
    assert per_session["planned_bytes"] == planned.planned_bytes == sum(per_session["buffer_bytes"])
    assert per_session["kv_cache_bytes"] == planned.kv_cache_bytes
    assert per_session["measured_rss_bytes"] > 0
    assert per_session["surplus_bytes"] == per_session["measured_rss_bytes"] - per_session["planned_bytes"]
    assert set(report["machine"]) >= {"cpu", "cores", "ram_bytes", "python", "torch", "executorch", "etlora"}
    # Each verdict follows from the report's own figures, and on this bundle every one is measured.
    targets = report["targets"]
    assert len(targets) == 5 and all(isinstance(t["passed"], bool) for t in targets), targets
    assert targets[0]["passed"] == all(cost["passed"] for cost in report["adapter_costs"])
    assert targets[3]["passed"] == (report["disk"]["overhead_fraction"] <= 0.01)


def test_session_steps_have_all_figures_and_regions(report):
    steps = report["sessions"]["steps"]
    names = [step["name"] for step in steps]
    assert names[:13] == [
        "runtime started",
        "session 1 (foundation only)",
        "session 2 (foundation only)",
        "session 3 (foundation only)",
        "session 4 (foundation only)",
        "session 1 first activation (legal)",
        "session 1 after first activation",
        "session 1 + adapter legal",
        "session 1 without adapter legal",
        "session 1 + adapter support",
        "session 1 without adapter support",
        "+ session legal",
        "+ session support",
    ]
    for step in steps:
        assert all(step[figure] > 0 for figure in FIGURES), step
        assert list(step["regions"]) == list(REGIONS)
    # the foundation is mapped, and adapter pages are resident once adapter sessions ran a forward
    by_name = {step["name"]: step for step in steps}
    assert by_name["session 1 (foundation only)"]["regions"]["foundation_file"]["rss"] > 0
    assert by_name["session 4 (foundation only)"]["regions"]["adapter_files"]["rss"] == 0
    assert by_name["session 1 + adapter legal"]["regions"]["adapter_files"]["rss"] > 0
    # release_adapters unmaps what no slot binds: nothing of an adapter file stays resident
    assert by_name["session 1 without adapter legal"]["regions"]["adapter_files"]["rss"] == 0
    assert by_name["session 1 after first activation"]["regions"]["adapter_files"]["rss"] == 0


def test_first_activation_is_its_own_line(report):
    steps = {step["name"]: step for step in report["sessions"]["steps"]}
    first = steps["session 1 first activation (legal)"]["rss"] - steps["session 4 (foundation only)"]["rss"]
    legal = next(cost for cost in report["adapter_costs"] if cost["adapter"] == "legal")
    assert report["first_activation_bytes"] == first - legal["cost_bytes"]


def test_adapter_costs_are_the_growth_of_making_each_adapter_resident(report, bundle):
    costs = {cost["adapter"]: cost for cost in report["adapter_costs"]}
    assert set(costs) == {"legal", "support"}
    for name, cost in costs.items():
        assert cost["ptd_bytes"] == (bundle / "adapters" / f"{name}.ptd").stat().st_size
        assert 0 < cost["resident_adapter_pages"] <= cost["ptd_bytes"] + 4096  # the last page is whole
        assert cost["times_ptd"] == pytest.approx(cost["cost_bytes"] / cost["ptd_bytes"])
        assert cost["times_ptd_pss"] == pytest.approx(cost["cost_pss_bytes"] / cost["ptd_bytes"])
        # page-aligned adapter tensors (export/adapter_file.py): no page is mapped twice
        assert cost["double_counted_pages"] == cost["resident_adapter_pages"] - cost["resident_adapter_pss"] == 0
        assert cost["passed"] == (cost["times_ptd"] <= 1.1)


def test_growth_and_two_processes(report, bundle):
    growth = report["growth"]
    assert growth["counts"] == [1, 2, 4, 8]
    assert [step["name"] for step in growth["steps"]] == ["runtime started", "1 session", "2 sessions",
                                                         "4 sessions", "8 sessions"]
    assert growth["weight_cache_miss"] is False
    pair = report["two_processes"]
    assert pair["pss_sum"] == pair["first"]["pss"] + pair["second"]["pss"]
    assert pair["second_process_pss"] == pair["pss_sum"] - pair["alone"]["pss"]
    # both map the same foundation.ptd: its resident pages count half in each PSS
    assert pair["first"]["regions"]["foundation_file"]["pss"] < pair["first"]["regions"]["foundation_file"]["rss"]


def test_naive_measures_each_merged_model_in_its_own_process(report, report_dir):
    naive = report["naive"]
    assert [p["adapter"] for p in naive["processes"]] == ["legal", "support"]
    for process in naive["processes"]:
        assert process["idle"]["name"] == "runtime started" and process["loaded"]["pss"] > process["idle"]["pss"]
    assert naive["total_pss"] == sum(p["loaded"]["pss"] for p in naive["processes"])
    assert naive["note"] == ""
    assert (report_dir / "naive_cache" / "legal" / "bundle" / "manifest.json").is_file()
    disk = report["comparison"][0]
    assert disk["etlora_bytes"] == report["disk"]["bundle_bytes"] and disk["naive_bytes"] == report["disk"]["naive_bytes"]


def test_markdown_and_png_written(report_dir):
    text = (report_dir / "report.md").read_text()
    assert "per-session state: predicted" in text and ", measured" in text
    assert "adapter cost beyond per-session state (legal):" in text and "(target <= 1.1x)" in text
    assert "N sessions: 1 -> 8 grows PSS by" in text and "| 8 |" in text
    assert "two processes: PSS sum" in text and "| disk: bundle vs 2 merged models |" in text
    assert "weight cache miss" not in text
    assert (report_dir / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not list(report_dir.glob(".*.tmp"))


def test_report_round_trips_through_json(report, report_dir):
    assert Report.from_dict(report).to_dict() == report
    # the same bytes as written, key order included
    text = (report_dir / "report.json").read_text()
    assert json.dumps(Report.from_dict(json.loads(text)).to_dict(), indent=2) + "\n" == text


def test_steps_are_typed_records(report):
    step = Step.from_dict(report["sessions"]["steps"][1])
    assert step.to_dict() == report["sessions"]["steps"][1]
    assert step.region("foundation_file") == step.regions["foundation_file"].rss > 0
    assert step.region("foundation_file", "pss") == step.regions["foundation_file"].pss
    assert step.region("no such region") == 0
    with pytest.raises(ValueError, match="schema_version"):
        Report.from_dict({**report, "schema_version": 1})


def test_a_repacked_foundation_is_flagged_loudly(report):
    # every extra session grows by a whole foundation, as without the XNNPACK weight cache
    data = copy.deepcopy(report)
    foundation = data["disk"]["foundation_bytes"]
    for step in data["growth"]["steps"][1:]:
        step["pss"] += (int(step["name"].split()[0]) - 1) * (data["per_session"]["measured_pss_bytes"] + foundation)
    missed = Report.from_dict(data)
    assert missed.weight_cache_miss and missed.to_dict()["growth"]["weight_cache_miss"] is True
    assert "**weight cache miss: N sessions: 1 -> 8" in render_markdown(missed)
    assert [t.passed for t in missed.targets][1] is False


def test_no_naive_and_load_options_are_recorded(bundle, tmp_path):
    # load options travel to every etlora.load: one that etlora.load does not know is its error
    assert main(["report", str(bundle), "--adapters", "support", "--out", str(tmp_path), "--no-naive"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["adapters"] == ["support"] and report["naive"]["processes"] == []
    assert "--no-naive" in report["naive"]["note"] and report["load_options"] == {}
    assert "not measured" in (tmp_path / "report.md").read_text()


def test_unknown_load_option_is_one_line_error(bundle, tmp_path, capsys):
    assert main(["report", str(bundle), "--out", str(tmp_path), "--no-naive", "--load-option", "nope=1"]) == 2
    assert "measuring process expected to exit 0" in capsys.readouterr().err


def test_unknown_adapter_is_one_line_error(bundle, tmp_path, capsys):
    assert main(["report", str(bundle), "--adapters", "nope", "--out", str(tmp_path)]) == 2
    assert "no adapter named 'nope'" in capsys.readouterr().err


def test_inspect_naive_disk_is_foundation_plus_program_per_adapter(bundle):
    report = inspect_bundle(bundle)
    sizes = {row.role: row.size for row in report.files if row.role in ("program", "foundation")}
    assert report.naive_disk_bytes == (sizes["program"] + sizes["foundation"]) * len(report.adapters)
    data = report.to_dict()
    assert data["disk_saving_bytes"] == data["naive_disk_bytes"] - data["total_size"]
