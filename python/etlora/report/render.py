"""report.md and report.png of `etlora report`: formatting only, every figure comes from a Report
(figures.py), whether just measured or read back from report.json. It imports the schema, not the
module that measures, so that rendering needs nothing but a Report.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from etlora.report.schema import ADAPTER_COST_LIMIT, MB, Step

if TYPE_CHECKING:
    from etlora.report.figures import Report


def _mb(size: float) -> str:
    return f"{size / MB:,.1f} MB" if abs(size) >= 0.1 * MB else f"{size / 1e3:,.1f} kB"


def _verdict(passed: bool | None) -> str:
    return "not measured" if passed is None else "**PASS**" if passed else "**FAIL**"


def _targets(report: Report) -> list[str]:
    rows = [f"| {t.name} | {t.measured} | {t.limit} | {_verdict(t.passed)} |" for t in report.targets]
    return ["| target | measured | limit | result |", "|---|---|---|---|", *rows]


def _comparison(report: Report) -> list[str]:
    n = len(report.adapters)
    lines = [f"| | etlora | naive ({n} processes, one merged model each) | saving |", "|---|---|---|---|"]
    for row in report.comparison:
        naive = _mb(row.naive_bytes) if row.naive_bytes else "-"
        saving = f"{_mb(row.saving_bytes)} ({100 * row.saving_fraction:.0f}%)" if row.saving_fraction is not None else "-"
        lines.append(f"| {row.what} | {_mb(row.etlora_bytes)} | {naive} | {saving} |")
    if not report.naive:
        lines += ["", f"naive not measured: {report.naive_note}"]
    return lines


def _per_session(report: Report) -> list[str]:
    planned = report.planned
    lines = [
        f"per-session state: predicted {_mb(planned.planned_bytes)}, measured {_mb(report.per_session_rss)}  ",
        f"(predicted: model.pte's memory-planned buffers of `{planned.method}`, KV cache {_mb(planned.kv_cache_bytes)} "
        f"in {planned.kv_cache_tensors} tensors + activations {_mb(planned.activation_bytes)} sized for a "
        f"max_seq_len prefill; measured: mean RSS growth of {len(report.reference_steps) - 1} more "
        f"foundation-only sessions after one forward each, PSS {_mb(report.per_session_pss)})",
        "",
    ]
    if report.per_session_surplus > report.surplus_tolerance:
        lines += [
            f"surplus: measured exceeds predicted by {_mb(report.per_session_surplus)} per session (tolerance "
            f"{_mb(report.surplus_tolerance)}): memory the program does not plan, most likely XNNPACK's per-session "
            "runtime objects (delegate runtime, operator objects, workspace) and allocator slack. It is part of "
            "the measured per-session state below, not of the adapter cost.",
            "",
        ]
    for cost in report.adapter_costs:
        lines.append(
            f"- adapter cost beyond per-session state ({cost.adapter}): {_mb(cost.cost_bytes)} = "
            f"{cost.times_ptd:.2f}x its .ptd of {_mb(cost.ptd_bytes)} (target <= {ADAPTER_COST_LIMIT}x): "
            f"{_verdict(cost.passed)}; in PSS {_mb(cost.cost_pss_bytes)} = {cost.times_ptd_pss:.2f}x; "
            f"of which the .ptd's mapped pages {_mb(cost.resident_adapter_pages)} RSS / "
            f"{_mb(cost.resident_adapter_pss)} PSS. Another session with it: +{_mb(cost.session_rss_growth)} RSS "
            f"(per-session state {_mb(report.per_session_rss)})"
        )
    if report.first_activation_bytes is not None:
        lines.append(
            f"- first adapter activation in a process, once (not in any adapter's cost): "
            f"{_mb(report.first_activation_bytes)} RSS beyond the same adapter's second activation"
        )
    double = max(report.adapter_costs, key=lambda cost: cost.double_counted_pages, default=None)
    if double is not None and double.double_counted_pages > 0.01 * double.ptd_bytes:
        lines += [
            "",
            f"RSS counts some adapter pages twice ({double.adapter}: {_mb(double.double_counted_pages)}): the "
            "runtime maps each tensor of a .ptd on its own, rounded out to whole pages, and this file's tensors "
            "are not page-aligned (written before etlora aligned them), so the page where one tensor ends and "
            "the next begins is in two mappings. It is one physical page (PSS counts it once); "
            "`etlora add-adapter BUNDLE --adapter NAME=PEFT_DIR --replace` rewrites the file page-aligned.",
        ]
    lines += [
        "",
        "How: adapter .ptd files are mmapped and only pages a forward touched are resident; a forward "
        "reads every A and B matrix, so after it the whole adapter counts, once per process however many "
        "sessions use it. Adapter cost = RSS growth when the first session switches to the adapter and "
        "runs one forward: the adapter alone, without a new session's state (measured separately as the "
        "mean growth of several foundation-only sessions) and without the heap noise of opening one "
        "(up to about a MB, which would move a small adapter's figure by a few tenths of its .ptd).",
    ]
    return lines


def _growth(report: Report) -> list[str]:
    steps = [step for step in report.growth_steps if step.name[0].isdigit()]
    if not steps:
        return ["not measured"]
    lines = ["| sessions | RSS | PSS | PSS growth from 1 session |", "|---|---|---|---|"]
    lines += [f"| {n} | {_mb(s.rss)} | {_mb(s.pss)} | {_mb(s.pss - steps[0].pss)} |"
              for n, s in zip(report.growth_counts, steps)]
    per = report.per_extra_session_pss
    first, last = report.growth_counts[0], report.growth_counts[-1]
    summary = (f"N sessions: {first} -> {last} grows PSS by {_mb(steps[-1].pss - steps[0].pss)}, "
               f"{_mb(per)} per extra session = per-session state {_mb(report.per_session_pss)} + "
               f"{_mb(report.unexplained_per_session_pss)} (adapter pages, each adapter once); "
               f"one foundation is {_mb(report.disk.foundation_bytes)}")
    if report.weight_cache_miss:
        lines += ["", f"**weight cache miss: {summary}: each extra session repacks the foundation**"]
    else:
        lines += ["", f"{summary}: the packed foundation appears once"]
    return lines


def _regions_row(label: str, step: Step) -> str:
    cells = [f"{_mb(step.region(region, 'rss'))} / {_mb(step.region(region, 'pss'))}"
             for region in ("foundation_file", "packed_cache_file", "anonymous")]
    return f"| {label} | {_mb(step.rss)} | {_mb(step.pss)} | " + " | ".join(cells) + " |"


def _two_processes(report: Report) -> list[str]:
    pair = report.pair
    if pair is None:
        return ["not measured"]
    first = pair.first
    cache_rss = first.region("packed_cache_file")
    second_cache_rss = pair.second.region("packed_cache_file")
    cache = (f"the packed cache file is {_mb(cache_rss)} RSS / {_mb(first.region('packed_cache_file', 'pss'))} PSS "
             f"in process 1 and {_mb(second_cache_rss)} RSS in process 2 (the XNNPACK backend locks the file "
             "for the process that maps it; another process packs into memory)" if cache_rss else
             "no packed cache file is mapped (the report loads with packed_cache=False unless "
             "--load-option packed_cache=true)")
    return [
        "| | RSS | PSS | foundation.ptd RSS / PSS | packed cache file RSS / PSS | anonymous RSS / PSS |",
        "|---|---|---|---|---|---|",
        _regions_row("one process alone", pair.alone),
        _regions_row("process 1 of 2", pair.first),
        _regions_row("process 2 of 2", pair.second),
        "",
        f"two processes: PSS sum {_mb(pair.pss_sum)} vs one process alone PSS {_mb(pair.alone.pss)} "
        f"(RSS {_mb(pair.alone.rss)}); the second process adds {_mb(pair.second_process_pss)}; "
        f"foundation pages counted once: {_verdict(report.foundation_counted_once)}",
        "",
        f"Shared between the processes (each PSS holds half): mapped file pages, i.e. foundation.ptd "
        f"({_mb(first.region('foundation_file'))} resident in each: XNNPACK packs the foundation at load and "
        f"releases the mapped data) and the shared libraries. Not shared: anonymous memory, "
        f"{_mb(first.region('anonymous'))} in each, which holds the packed foundation, the per-session state "
        f"and the heap; {cache}. The foundation counts once between processes only when its packed "
        "weights live in a file both map.",
    ]


def _naive(report: Report) -> list[str]:
    if not report.naive:
        return [f"not measured: {report.naive_note}"]
    lines = ["| merged model | idle runtime PSS | loaded PSS | model PSS |", "|---|---|---|---|"]
    lines += [f"| {p.adapter} | {_mb(p.idle.pss)} | {_mb(p.loaded.pss)} | {_mb(p.model_pss)} |" for p in report.naive]
    return lines


def _steps(steps: list[Step]) -> list[str]:
    rows = [f"| {s.name} | {_mb(s.rss)} | {_mb(s.pss)} | {_mb(s.private)} | {_mb(s.shared)} | "
            f"{_mb(s.region('adapter_files'))} |" for s in steps]
    return ["| step | RSS | PSS | private | shared | adapter .ptd RSS |", "|---|---|---|---|---|---|", *rows]


def render_markdown(report: Report) -> str:
    machine = report.machine
    lines = [
        f"# etlora memory report: `{report.bundle}`",
        "",
        f"{len(report.adapters)} of the bundle's {report.disk.bundle_adapters} adapters measured "
        f"({', '.join(report.adapters)}); {machine['cpu']}, {machine['cores']} cores, "
        f"{_mb(machine['ram_bytes'])} RAM; python {machine['python']}, torch {machine['torch']}, "
        f"executorch {machine['executorch']}, etlora {machine['etlora']}"
        + (f"; load options {report.load_options}" if report.load_options else ""),
        "",
        *_targets(report),
        "",
        "## etlora vs naive",
        "",
        *_comparison(report),
        "",
        f"The idle runtime (python, etlora, its libraries) is {_mb(report.idle.pss)} PSS per process; the naive "
        "column pays it once per merged model, each in its own fresh process.",
        "",
        "## Per-session state and adapter cost",
        "",
        *_per_session(report),
        "",
        "## N sessions in one process (cycling through the adapters)",
        "",
        *_growth(report),
        "",
        "## Two processes on the same bundle",
        "",
        *_two_processes(report),
        "",
        "## Naive: one merged model per process",
        "",
        *_naive(report),
        "",
        "## etlora steps (one process)",
        "",
        *_steps(report.session_steps),
        "",
        *[f"note: {note}  " for note in report.notes],
    ]
    return "\n".join(lines) + "\n"


def render_png(report: Report) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    rows = report.comparison
    positions = range(len(rows))
    left.barh([p + 0.2 for p in positions], [r.etlora_bytes / MB for r in rows], 0.4, label="etlora", color="#3182bd")
    left.barh([p - 0.2 for p in positions], [r.naive_bytes / MB for r in rows], 0.4, label="naive", color="#fdae6b")
    left.set_yticks(list(positions), [r.what for r in rows], fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("MB")
    left.set_title("etlora vs one merged model per adapter")
    left.legend(loc="lower right")
    steps = [step for step in report.growth_steps if step.name[0].isdigit()]
    if steps:
        counts = report.growth_counts
        right.plot(counts, [s.pss / MB for s in steps], "o-", label="PSS, etlora sessions", color="#3182bd")
        base = steps[0].pss / MB
        right.plot(counts, [base + (n - counts[0]) * report.disk.foundation_bytes / MB for n in counts], "--",
                   color="#e6550d", label="if each session repacked the foundation")
        right.plot(counts, [base + (n - counts[0]) * report.planned.planned_bytes / MB for n in counts], ":",
                   color="#31a354", label="+ predicted per-session state")
        right.set_xticks(counts)
        right.set_xlabel("sessions in one process")
        right.set_ylabel("MB")
        right.set_title("N sessions: the foundation appears once")
        right.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
