"""The figures and targets of `etlora report`, derived from its measurements.

`Report` holds what was measured (steps from the child processes, the program's planned memory,
the bundle's sizes) and derives everything else on demand: the per-session state, each adapter's
cost, the growth of N sessions, the two-process sharing, etlora vs naive and the five targets.
It exists apart from build.py, which runs the measurements, so that render.py and the tests can
build one from report.json (`Report.from_dict`) without measuring anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from etlora.report.schema import (ADAPTER_COST_LIMIT, COUNTS, DISK_OVERHEAD_LIMIT, IN_USE_ADAPTER_LIMIT, MB, METHOD,
                                  MISS_FRACTION,
                                  SCHEMA_VERSION, SHARED_FRACTION, SURPLUS_TOLERANCE, AdapterCost, Comparison, Disk,
                                  NaiveProcess, PlannedMemory, ProcessPair, Step, Target)


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

    @property
    def first_activation_bytes(self) -> int | None:
        """RSS the process's first adapter activation cost beyond the same adapter's second one."""
        names = [step.name for step in self.session_steps]
        if not self.adapters or f"session 1 first activation ({self.adapters[0]})" not in names:
            return None  # a report.json from before this step was measured
        first = self.step(f"session 1 first activation ({self.adapters[0]})")
        before_first = self.session_steps[names.index(first.name) - 1]
        cost = next(c for c in self.adapter_costs if c.adapter == self.adapters[0])
        return (first.rss - before_first.rss) - cost.cost_bytes

    # adapters not in use: a bundle of a hundred pays RAM only for those activated

    @property
    def open_adapter_rss(self) -> int:
        """Adapter .ptd pages resident with the bundle open, a forward run, no adapter active."""
        return self.step("session 1 (foundation only)").region("adapter_files")

    @property
    def in_use_step(self) -> Step | None:
        """Every measured adapter in use at once: one session each, all alive, a forward run in each."""
        return self.step(f"+ session {self.adapters[-1]}") if self.adapters else None

    @property
    def in_use_adapter_fraction(self) -> float | None:
        """Adapter pages resident (PSS: a page once) with all measured in use, x their .ptd files."""
        measured = sum(self.disk.adapter_bytes.values())
        return self.in_use_step.region("adapter_files", "pss") / measured if self.in_use_step else None

    @property
    def unused_adapters_cost_nothing(self) -> bool | None:
        if self.in_use_step is None:
            return None
        # in use, the measured adapters' pages must show: none would mean they were not counted at all
        return self.open_adapter_rss == 0 and 0 < self.in_use_adapter_fraction <= IN_USE_ADAPTER_LIMIT

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
            Target(
                f"adapters not activated cost no RAM ({self.disk.bundle_adapters} in the bundle, "
                f"{len(self.adapters)} activated)",
                f"bundle open: {mb(self.open_adapter_rss)} of adapter pages; all {len(self.adapters)} in use: "
                + (f"{mb(self.in_use_step.region('adapter_files', 'pss'))} PSS = {self.in_use_adapter_fraction:.2f}x "
                   "their .ptd files" if self.in_use_step else "none measured"),
                f"0 B open; > 0 and <= {IN_USE_ADAPTER_LIMIT}x the activated adapters' .ptd in use",
                self.unused_adapters_cost_nothing,
            ),
        ]
        return targets

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "bundle": self.bundle,
            "adapters": self.adapters,
            "load_options": self.load_options,
            "machine": self.machine,
            "notes": self.notes,
            "disk": self.disk.to_dict(),
            "per_session": {
                **self.planned.to_dict(),
                "measured_rss_bytes": self.per_session_rss,
                "measured_pss_bytes": self.per_session_pss,
                "surplus_bytes": self.per_session_surplus,
            },
            "adapter_costs": [cost.to_dict() for cost in self.adapter_costs],
            "first_activation_bytes": self.first_activation_bytes,
            "unused_adapters": {
                "bundle_adapters": self.disk.bundle_adapters,
                "measured": len(self.adapters),
                "open_adapter_rss": self.open_adapter_rss,
                "in_use_adapter_rss": self.in_use_step.region("adapter_files") if self.in_use_step else None,
                "in_use_adapter_pss": self.in_use_step.region("adapter_files", "pss") if self.in_use_step else None,
                "measured_ptd_bytes": sum(self.disk.adapter_bytes.values()),
            },
            "sessions": {"steps": [step.to_dict() for step in self.session_steps]},
            "growth": {
                "steps": [step.to_dict() for step in self.growth_steps],
                "counts": self.growth_counts,
                "per_extra_session_pss": self.per_extra_session_pss,
                "unexplained_per_session_pss": self.unexplained_per_session_pss,
                "weight_cache_miss": self.weight_cache_miss,
            },
            "two_processes": None if self.pair is None else {
                **self.pair.to_dict(),
                "foundation_counted_once": self.foundation_counted_once,
            },
            "naive": {
                "processes": [process.to_dict() for process in self.naive],
                "total_pss": sum(p.loaded.pss for p in self.naive),
                "model_pss": sum(p.model_pss for p in self.naive),
                "note": self.naive_note,
            },
            "comparison": [row.to_dict() for row in self.comparison],
            "targets": [target.to_dict() for target in self.targets],
        }

    @classmethod
    def from_dict(cls, data: dict, method: str = METHOD) -> Report:
        """The measurements of a report.json (its derived figures are derived again)."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"report.json: expected schema_version {SCHEMA_VERSION}, "
                             f"received {data.get('schema_version')!r}")
        pair = data["two_processes"]
        return cls(
            bundle=data["bundle"],
            adapters=list(data["adapters"]),
            load_options=dict(data["load_options"]),
            disk=Disk.from_dict(data["disk"]),
            planned=PlannedMemory.from_dict(data["per_session"], method),
            session_steps=[Step.from_dict(step) for step in data["sessions"]["steps"]],
            growth_steps=[Step.from_dict(step) for step in data["growth"]["steps"]],
            pair=None if pair is None else ProcessPair.from_dict(pair),
            naive=[NaiveProcess.from_dict(process) for process in data["naive"]["processes"]],
            naive_note=data["naive"]["note"],
            notes=list(data["notes"]),
            machine=dict(data["machine"]),
        )
