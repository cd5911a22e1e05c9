"""`etlora report`: disk and memory of one bundle with N adapters vs N merged full models.

What is measured (each in fresh child processes, etlora/report_child.py, from /proc/PID/smaps):

- sessions: two foundation-only sessions, then one session per adapter, each after one forward.
  Per-session state measured = RSS growth of the second foundation-only session; predicted =
  the program's memory-planned bytes (etlora/report_plan.py: activations + KV cache). Adapter
  cost = RSS growth of the adapter's session minus the measured per-session state.
- growth: N = 1, 2, 4, 8 sessions cycling through the adapters in one process; the packed
  foundation must appear once (XNNPACK weight cache), not once per session.
- two processes on the same bundle, both alive: each one's PSS and their sum, against one alone.
- naive: each merged model (etlora/report_naive.py) alone in its own process; total = sum.

report.json (schema_version 2; sizes in bytes, a "step" is {name, rss, pss, private, shared,
regions: {foundation_file|adapter_files|program_file|packed_cache_file|anonymous|other:
{rss, pss}}}):

    bundle, adapters, load_options (passed to every etlora.load), machine, notes
    disk: {bundle_bytes, foundation_bytes, program_bytes, adapter_bytes: {name: bytes},
           other_bytes (tokenizer, manifest), naive_bytes, overhead_fraction}
    per_session: {buffer_bytes: [..], planned_bytes, kv_cache_bytes, kv_cache_tensors,
                  activation_bytes, planned_end_bytes, measured_rss_bytes, measured_pss_bytes,
                  surplus_bytes}
    adapter_costs: [{adapter, ptd_bytes, session_rss_growth, resident_adapter_pages,
                     resident_adapter_pss, cost_bytes, times_ptd, cost_pss_bytes, times_ptd_pss,
                     double_counted_pages, passed (on RSS, as the target says)}]
    sessions: {steps: [step]}
    growth: {steps: [step], counts: [N], per_extra_session_pss, unexplained_per_session_pss
             (per extra session beyond the measured per-session state), weight_cache_miss}
    two_processes: {alone, first, second: step, pss_sum, second_process_pss,
                    foundation_counted_once} or null
    naive: {processes: [{adapter, idle: step, loaded: step, model_pss}], total_pss, model_pss, note}
    comparison: [{what, etlora_bytes, naive_bytes, saving_bytes, saving_fraction}]
    targets: [{name, measured, limit, passed}]

Writes report.json, report.md and report.png (etlora/report_render.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from etlora.export.errors import EtloraError
from etlora.export.files import write_atomically
from etlora.export.manifest import Manifest, read_manifest
from etlora.inspect_bundle import inspect_bundle
from etlora.report_measure import (NaiveProcess, ProcessPair, Step, machine_info, measure_naive, measure_pair,
                                   run_steps)
from etlora.report_plan import PlannedMemory, read_planned_memory

SCHEMA_VERSION = 2
MB = 1e6
COUNTS = (1, 2, 4, 8)
ADAPTER_COST_LIMIT = 1.1  # x the adapter's .ptd size, beyond the per-session state
DISK_OVERHEAD_LIMIT = 0.01  # bundle vs foundation + adapters
MISS_FRACTION = 0.5  # an extra session growing beyond its state by this x foundation: weight cache miss
SHARED_FRACTION = 0.9  # a second process must save at least this x foundation to share it
SURPLUS_TOLERANCE = (1 * MB, 0.05)  # measured per-session state may exceed planned by max(these)


@dataclass(frozen=True)
class Disk:
    bundle_bytes: int
    foundation_bytes: int
    program_bytes: int
    adapter_bytes: dict[str, int]

    @property
    def other_bytes(self) -> int:
        return self.bundle_bytes - self.foundation_bytes - self.program_bytes - sum(self.adapter_bytes.values())

    @property
    def naive_bytes(self) -> int:
        return (self.foundation_bytes + self.program_bytes) * len(self.adapter_bytes)

    @property
    def overhead_fraction(self) -> float:
        return self.bundle_bytes / (self.foundation_bytes + sum(self.adapter_bytes.values())) - 1


@dataclass(frozen=True)
class AdapterCost:
    adapter: str
    ptd_bytes: int
    cost_bytes: int  # RSS growth when an existing session makes the adapter resident: the target's figure
    cost_pss_bytes: int  # the same in PSS
    resident_adapter_pages: int  # of which: RSS growth of the adapter .ptd mappings
    resident_adapter_pss: int  # the same pages in PSS: a page mapped twice in one process counts once
    session_rss_growth: int  # RSS growth of one more session with this adapter (pages already resident)

    @property
    def times_ptd(self) -> float:
        return self.cost_bytes / self.ptd_bytes if self.ptd_bytes else float("inf")

    @property
    def times_ptd_pss(self) -> float:
        return self.cost_pss_bytes / self.ptd_bytes if self.ptd_bytes else float("inf")

    @property
    def double_counted_pages(self) -> int:
        """Adapter pages RSS counts twice: each tensor is its own page-rounded mapping, so a page
        holding the end of one tensor and the start of the next is mapped (and counted) twice."""
        return self.resident_adapter_pages - self.resident_adapter_pss

    @property
    def passed(self) -> bool:
        return self.times_ptd <= ADAPTER_COST_LIMIT


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    limit: str
    passed: bool | None  # None: not measured


@dataclass(frozen=True)
class Comparison:
    what: str
    etlora_bytes: int
    naive_bytes: int  # 0: not measured

    @property
    def saving_bytes(self) -> int:
        return self.naive_bytes - self.etlora_bytes

    @property
    def saving_fraction(self) -> float | None:
        return self.saving_bytes / self.naive_bytes if self.naive_bytes else None


@dataclass(frozen=True)
class Report:
    bundle: str
    adapters: list[str]
    load_options: dict
    disk: Disk
    planned: PlannedMemory
    session_steps: list[Step]
    growth_steps: list[Step]
    pair: ProcessPair | None
    naive: list[NaiveProcess]
    naive_note: str
    notes: list[str]
    machine: dict

    # per-session state and adapters (one process: RSS growth; PSS alongside)

    def step(self, name: str) -> Step:
        return next(step for step in self.session_steps if step.name == name)

    @property
    def idle(self) -> Step:
        return self.session_steps[0]

    @property
    def reference_steps(self) -> list[Step]:
        """The foundation-only sessions: the first, then those whose mean growth is the per-session state."""
        return [step for step in self.session_steps if step.name.endswith("(foundation only)")]

    @property
    def per_session_rss(self) -> int:
        first, *extra = self.reference_steps
        return (extra[-1].rss - first.rss) // len(extra)

    @property
    def per_session_pss(self) -> int:
        first, *extra = self.reference_steps
        return (extra[-1].pss - first.pss) // len(extra)

    @property
    def per_session_surplus(self) -> int:
        return self.per_session_rss - self.planned.planned_bytes

    @property
    def surplus_tolerance(self) -> float:
        return max(SURPLUS_TOLERANCE[0], SURPLUS_TOLERANCE[1] * self.planned.planned_bytes)

    @property
    def adapter_costs(self) -> list[AdapterCost]:
        costs, names = [], [step.name for step in self.session_steps]
        previous_session = self.session_steps[names.index(f"+ session {self.adapters[0]}") - 1] if self.adapters else None
        for name in self.adapters:
            after = self.step(f"session 1 + adapter {name}")
            before = self.session_steps[names.index(after.name) - 1]
            session = self.step(f"+ session {name}")
            costs.append(AdapterCost(
                adapter=name,
                ptd_bytes=self.disk.adapter_bytes[name],
                cost_bytes=after.rss - before.rss,
                cost_pss_bytes=after.pss - before.pss,
                resident_adapter_pages=after.region("adapter_files") - before.region("adapter_files"),
                resident_adapter_pss=after.region("adapter_files", "pss") - before.region("adapter_files", "pss"),
                session_rss_growth=session.rss - previous_session.rss,
            ))
            previous_session = session
        return costs

    # N sessions

    @property
    def growth_counts(self) -> list[int]:
        return [int(step.name.split()[0]) for step in self.growth_steps if step.name[0].isdigit()]

    @property
    def per_extra_session_pss(self) -> int:
        counts = self.growth_counts
        steps = [step for step in self.growth_steps if step.name[0].isdigit()]
        if len(steps) < 2:
            return 0
        return (steps[-1].pss - steps[0].pss) // (counts[-1] - counts[0])

    @property
    def unexplained_per_session_pss(self) -> int:
        """Growth per extra session beyond the measured per-session state: adapter pages, or a repacked foundation."""
        return self.per_extra_session_pss - self.per_session_pss

    @property
    def weight_cache_miss(self) -> bool:
        return self.unexplained_per_session_pss > MISS_FRACTION * self.disk.foundation_bytes

    @property
    def foundation_counted_once(self) -> bool | None:
        if self.pair is None:
            return None
        return self.pair.second_process_pss <= self.pair.alone.pss - SHARED_FRACTION * self.disk.foundation_bytes

    # etlora vs naive

    @property
    def comparison(self) -> list[Comparison]:
        n = len(self.adapters)
        rows = [Comparison(f"disk: bundle vs {n} merged models", self.disk.bundle_bytes, self.disk.naive_bytes)]
        if not self.adapters:
            return rows
        extra_references = (len(self.reference_steps) - 1) * self.per_session_pss
        # one session switching through the adapters (its largest step), without the extra
        # foundation-only sessions
        one_switching = max(self.step(f"session 1 + adapter {name}").pss for name in self.adapters) - extra_references
        all_alive = self.step(f"+ session {self.adapters[-1]}").pss - extra_references
        naive_total = sum(p.loaded.pss for p in self.naive)
        naive_model = sum(p.model_pss for p in self.naive)
        idle = self.idle.pss
        rows += [
            Comparison(f"memory above the idle runtime, {n} adapters by switching", one_switching - idle, naive_model),
            Comparison(f"memory above the idle runtime, {n} adapter sessions alive", all_alive - idle, naive_model),
            Comparison(f"process PSS, {n} adapters by switching", one_switching, naive_total),
            Comparison(f"process PSS, {n} adapter sessions alive", all_alive, naive_total),
        ]
        return rows

    @property
    def targets(self) -> list[Target]:
        mb = lambda size: f"{size / MB:,.1f} MB"  # noqa: E731
        worst = max(self.adapter_costs, key=lambda cost: cost.times_ptd, default=None)
        targets = [
            Target(
                "each extra adapter costs <= 1.1x its .ptd beyond the per-session state",
                f"worst {worst.adapter}: {mb(worst.cost_bytes)} = {worst.times_ptd:.2f}x" if worst else "no adapters",
                f"<= {ADAPTER_COST_LIMIT}x",
                all(cost.passed for cost in self.adapter_costs) if worst else None,
            ),
            Target(
                f"foundation's packed weights once for N = {', '.join(map(str, COUNTS))} sessions",
                f"{mb(self.per_extra_session_pss)} PSS per extra session, "
                f"{mb(self.unexplained_per_session_pss)} beyond the per-session state",
                f"beyond the per-session state < {MISS_FRACTION} x foundation = "
                f"{mb(MISS_FRACTION * self.disk.foundation_bytes)}",
                not self.weight_cache_miss if self.growth_steps else None,
            ),
            Target(
                "two processes: foundation pages count once (PSS)",
                f"second process adds {mb(self.pair.second_process_pss)}" if self.pair else "not measured",
                f"<= one process alone - {SHARED_FRACTION} x foundation = "
                + (mb(self.pair.alone.pss - SHARED_FRACTION * self.disk.foundation_bytes) if self.pair else "-"),
                self.foundation_counted_once,
            ),
            Target(
                "disk: bundle within 1% of foundation + adapters",
                f"{100 * self.disk.overhead_fraction:+.2f}% ({mb(self.disk.bundle_bytes)})",
                f"<= {100 * DISK_OVERHEAD_LIMIT:.0f}%",
                self.disk.overhead_fraction <= DISK_OVERHEAD_LIMIT,
            ),
        ]
        return targets

    def to_dict(self) -> dict:
        planned = self.planned
        return {
            "schema_version": SCHEMA_VERSION,
            "bundle": self.bundle,
            "adapters": self.adapters,
            "load_options": self.load_options,
            "machine": self.machine,
            "notes": self.notes,
            "disk": {**asdict(self.disk), "other_bytes": self.disk.other_bytes, "naive_bytes": self.disk.naive_bytes,
                     "overhead_fraction": self.disk.overhead_fraction},
            "per_session": {
                "buffer_bytes": list(planned.buffer_bytes),
                "planned_bytes": planned.planned_bytes,
                "kv_cache_bytes": planned.kv_cache_bytes,
                "kv_cache_tensors": planned.kv_cache_tensors,
                "activation_bytes": planned.activation_bytes,
                "planned_end_bytes": planned.planned_end_bytes,
                "measured_rss_bytes": self.per_session_rss,
                "measured_pss_bytes": self.per_session_pss,
                "surplus_bytes": self.per_session_surplus,
            },
            "adapter_costs": [{**asdict(c), "times_ptd": c.times_ptd, "times_ptd_pss": c.times_ptd_pss,
                               "double_counted_pages": c.double_counted_pages, "passed": c.passed}
                              for c in self.adapter_costs],
            "sessions": {"steps": [asdict(step) for step in self.session_steps]},
            "growth": {
                "steps": [asdict(step) for step in self.growth_steps],
                "counts": self.growth_counts,
                "per_extra_session_pss": self.per_extra_session_pss,
                "unexplained_per_session_pss": self.unexplained_per_session_pss,
                "weight_cache_miss": self.weight_cache_miss,
            },
            "two_processes": None if self.pair is None else {
                **asdict(self.pair),
                "pss_sum": self.pair.pss_sum,
                "second_process_pss": self.pair.second_process_pss,
                "foundation_counted_once": self.foundation_counted_once,
            },
            "naive": {
                "processes": [{**asdict(p), "model_pss": p.model_pss} for p in self.naive],
                "total_pss": sum(p.loaded.pss for p in self.naive),
                "model_pss": sum(p.model_pss for p in self.naive),
                "note": self.naive_note,
            },
            "comparison": [{**asdict(c), "saving_bytes": c.saving_bytes, "saving_fraction": c.saving_fraction}
                           for c in self.comparison],
            "targets": [asdict(target) for target in self.targets],
        }


# ---------------------------------------------------------------------------------------------
# building


def _choose_adapters(manifest: Manifest, bundle: Path, adapters: list[str] | None) -> list[str]:
    if not adapters:
        return sorted(manifest.adapters)
    unknown = [name for name in adapters if name not in manifest.adapters]
    if unknown:
        raise EtloraError(
            f"{bundle}: no adapter named {unknown[0]!r} (bundle has: {', '.join(sorted(manifest.adapters)) or 'none'})"
        )
    return list(adapters)


def _disk(manifest: Manifest, bundle: Path, adapters: list[str]) -> Disk:
    return Disk(
        bundle_bytes=inspect_bundle(bundle).total_size,
        foundation_bytes=manifest.files[manifest.foundation.file].size,
        program_bytes=manifest.files[manifest.program.file].size,
        adapter_bytes={name: manifest.files[manifest.adapters[name].file].size for name in adapters},
    )


def build_report(
    bundle: str | Path,
    out: str | Path,
    adapters: list[str] | None = None,
    naive: bool = True,
    log: Callable[[str], None] = lambda _: None,
    load_options: dict | None = None,
) -> Report:
    """Measure `bundle`; `load_options` go to every etlora.load of the bundle (not the naive models)."""
    from etlora.report_naive import naive_problem, prepare_naive

    bundle, out = Path(bundle), Path(out)
    load_options = dict(load_options or {})
    manifest = read_manifest(bundle)
    adapters = _choose_adapters(manifest, bundle, adapters)
    planned = read_planned_memory(bundle / manifest.program.file)
    generate = ["--generate"] if manifest.tokenizer is not None else []
    names = ",".join(adapters)
    log("measuring per-session state and adapter sessions (child process)")
    session_steps, notes = run_steps("sessions", bundle, load_options, "--adapters", names, *generate)
    log(f"measuring {', '.join(map(str, COUNTS))} sessions (child process)")
    growth_steps, _ = run_steps("grow", bundle, load_options, "--adapters", names, "--counts", ",".join(map(str, COUNTS)))
    log("measuring two processes on the bundle")
    pair = measure_pair(bundle, adapters[0] if adapters else None, load_options)
    naive_processes, note = [], "" if naive else "naive column not requested (--no-naive)"
    if naive and not adapters:
        note = "bundle has no adapters; naive column skipped"
    elif naive:
        note = naive_problem(manifest, adapters)
    if naive and not note:
        bundles = prepare_naive(manifest, adapters, out / "naive_cache", log)
        log("measuring naive merged models (one fresh process each)")
        naive_processes = measure_naive(dict(zip(adapters, bundles)))
    return Report(
        bundle=str(bundle),
        adapters=adapters,
        load_options=load_options,
        disk=_disk(manifest, bundle, adapters),
        planned=planned,
        session_steps=session_steps,
        growth_steps=growth_steps,
        pair=pair,
        naive=naive_processes,
        naive_note=note,
        notes=notes,
        machine=machine_info(),
    )


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    from etlora.report_render import render_markdown, render_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"report.{name}" for name in ("json", "md", "png")}
    write_atomically(paths["json"], (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    write_atomically(paths["md"], render_markdown(report).encode())
    write_atomically(paths["png"], render_png(report))
    return paths
