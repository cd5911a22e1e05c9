"""The typed records of `etlora report` and the limits its targets use: the one place that says
what report.json holds.

It exists so that the measuring side (measure.py, plan.py), the figures (figures.py) and the
renderer (render.py) share one definition of a step and its regions instead of passing dicts
around; it imports nothing of the report's other modules. Each record's `to_dict` writes exactly
the keys below and `from_dict` reads them back.

report.json (schema_version 2; sizes in bytes):

    bundle, adapters, load_options (passed to every etlora.load), machine, notes
    disk: Disk {bundle_bytes, foundation_bytes, program_bytes, adapter_bytes: {name: bytes} (measured),
           bundle_adapters, bundle_adapter_bytes (every adapter of the bundle),
           other_bytes (tokenizer, manifest), naive_bytes, overhead_fraction}
    per_session: PlannedMemory {buffer_bytes: [..], planned_bytes, kv_cache_bytes, kv_cache_tensors,
                  activation_bytes, planned_end_bytes} + measured_rss_bytes, measured_pss_bytes,
                  surplus_bytes
    adapter_costs: [AdapterCost {adapter, ptd_bytes, cost_bytes, cost_pss_bytes,
                     resident_adapter_pages, resident_adapter_pss, session_rss_growth, times_ptd,
                     times_ptd_pss, double_counted_pages, passed (on RSS, as the target says)}]
    unused_adapters: {bundle_adapters, measured, open_adapter_rss (adapter .ptd pages resident with the
                     bundle open, no adapter active), in_use_adapter_rss / in_use_adapter_pss (every
                     measured adapter in use), measured_ptd_bytes}
    first_activation_bytes: RSS the first activation in the process cost beyond the same adapter's
                     second one (once per process, in no adapter's cost), or null
    sessions: {steps: [Step]}
    growth: {steps: [Step], counts: [N], per_extra_session_pss, unexplained_per_session_pss
             (per extra session beyond the measured per-session state), weight_cache_miss}
    two_processes: ProcessPair {alone, first, second: Step, pss_sum, second_process_pss}
                   + foundation_counted_once, or null
    naive: {processes: [NaiveProcess {adapter, idle: Step, loaded: Step, model_pss}], total_pss,
            model_pss, note}
    comparison: [Comparison {what, etlora_bytes, naive_bytes, saving_bytes, saving_fraction}]
    targets: [Target {name, measured, limit, passed}]

    Step: {name, rss, pss, private, shared, regions: {region: RegionFigures {rss, pss}}}, region
    one of REGIONS (as child.py classifies the mappings of /proc/PID/smaps).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 2
MB = 1e6
COUNTS = (1, 2, 4, 8)  # sessions in one process, for the N-sessions target
ADAPTER_COST_LIMIT = 1.1  # x the adapter's .ptd size, beyond the per-session state
DISK_OVERHEAD_LIMIT = 0.01  # bundle vs foundation + adapters
IN_USE_ADAPTER_LIMIT = 1.05  # adapter pages resident with the measured ones in use, x their .ptd files
MISS_FRACTION = 0.5  # an extra session growing beyond its state by this x foundation: weight cache miss
SHARED_FRACTION = 0.9  # a second process must save at least this x foundation to share it
SURPLUS_TOLERANCE = (1 * MB, 0.05)  # measured per-session state may exceed planned by max(these)
METHOD = "forward"  # the program method whose planned memory is one session's state
REGIONS = ("foundation_file", "adapter_files", "program_file", "packed_cache_file", "anonymous", "other")


# ---------------------------------------------------------------------------------------------
# what a measuring process reads


@dataclass(frozen=True)
class RegionFigures:
    """RSS and PSS of one region's mappings."""

    rss: int
    pss: int

    def to_dict(self) -> dict:
        return {"rss": self.rss, "pss": self.pss}

    @classmethod
    def from_dict(cls, data: dict) -> RegionFigures:
        return cls(rss=data["rss"], pss=data["pss"])


@dataclass(frozen=True)
class Step:
    """One reading of a process's memory, after the step `name`."""

    name: str
    rss: int
    pss: int
    private: int  # clean + dirty
    shared: int  # clean + dirty
    regions: dict[str, RegionFigures]

    def region(self, name: str, figure: str = "rss") -> int:
        figures = self.regions.get(name)
        return 0 if figures is None else getattr(figures, figure)

    def to_dict(self) -> dict:
        return {"name": self.name, "rss": self.rss, "pss": self.pss, "private": self.private, "shared": self.shared,
                "regions": {name: figures.to_dict() for name, figures in self.regions.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> Step:
        return cls(name=data["name"], rss=data["rss"], pss=data["pss"], private=data["private"],
                   shared=data["shared"],
                   regions={name: RegionFigures.from_dict(figures) for name, figures in data["regions"].items()})


@dataclass(frozen=True)
class ProcessPair:
    """Two processes on one bundle: the first alone, then both alive (read by the parent)."""

    alone: Step
    first: Step
    second: Step

    @property
    def pss_sum(self) -> int:
        return self.first.pss + self.second.pss

    @property
    def second_process_pss(self) -> int:
        """What starting the second process added to the machine (PSS of both minus one alone)."""
        return self.pss_sum - self.alone.pss

    def to_dict(self) -> dict:
        return {"alone": self.alone.to_dict(), "first": self.first.to_dict(), "second": self.second.to_dict(),
                "pss_sum": self.pss_sum, "second_process_pss": self.second_process_pss}

    @classmethod
    def from_dict(cls, data: dict) -> ProcessPair:
        return cls(*(Step.from_dict(data[key]) for key in ("alone", "first", "second")))


@dataclass(frozen=True)
class NaiveProcess:
    """One merged full model in its own process: idle runtime, then loaded with one forward."""

    adapter: str
    idle: Step
    loaded: Step

    @property
    def model_pss(self) -> int:
        return self.loaded.pss - self.idle.pss

    def to_dict(self) -> dict:
        return {"adapter": self.adapter, "idle": self.idle.to_dict(), "loaded": self.loaded.to_dict(),
                "model_pss": self.model_pss}

    @classmethod
    def from_dict(cls, data: dict) -> NaiveProcess:
        return cls(data["adapter"], Step.from_dict(data["idle"]), Step.from_dict(data["loaded"]))


# ---------------------------------------------------------------------------------------------
# what the bundle and its program say


@dataclass(frozen=True)
class Disk:
    bundle_bytes: int
    foundation_bytes: int
    program_bytes: int
    adapter_bytes: dict[str, int]  # the measured adapters' .ptd files
    # Every adapter of the bundle (a report may measure a few of a hundred): their count and bytes.
    bundle_adapters: int
    bundle_adapter_bytes: int

    @property
    def other_bytes(self) -> int:
        return self.bundle_bytes - self.foundation_bytes - self.program_bytes - self.bundle_adapter_bytes

    @property
    def naive_bytes(self) -> int:
        return (self.foundation_bytes + self.program_bytes) * len(self.adapter_bytes)

    @property
    def overhead_fraction(self) -> float:
        return self.bundle_bytes / (self.foundation_bytes + self.bundle_adapter_bytes) - 1

    def to_dict(self) -> dict:
        return {"bundle_bytes": self.bundle_bytes, "foundation_bytes": self.foundation_bytes,
                "program_bytes": self.program_bytes, "adapter_bytes": dict(self.adapter_bytes),
                "bundle_adapters": self.bundle_adapters, "bundle_adapter_bytes": self.bundle_adapter_bytes,
                "other_bytes": self.other_bytes, "naive_bytes": self.naive_bytes,
                "overhead_fraction": self.overhead_fraction}

    @classmethod
    def from_dict(cls, data: dict) -> Disk:
        adapter_bytes = dict(data["adapter_bytes"])  # a report.json before bundle_adapters: all were measured
        return cls(data["bundle_bytes"], data["foundation_bytes"], data["program_bytes"], adapter_bytes,
                   data.get("bundle_adapters", len(adapter_bytes)),
                   data.get("bundle_adapter_bytes", sum(adapter_bytes.values())))


@dataclass(frozen=True)
class PlannedMemory:
    """What one session of a program holds beyond the shared foundation, as the program says (plan.py)."""

    method: str
    buffer_bytes: tuple[int, ...]  # non_const_buffer_sizes[1:] (index 0 is reserved, always 0)
    kv_cache_bytes: int  # mutable buffers: the KV cache
    kv_cache_tensors: int
    planned_end_bytes: int  # largest offset + size of any planned tensor (<= planned_bytes)

    @property
    def planned_bytes(self) -> int:
        return sum(self.buffer_bytes)

    @property
    def activation_bytes(self) -> int:
        return self.planned_bytes - self.kv_cache_bytes

    def to_dict(self) -> dict:
        """The planned half of report.json's per_session (the method is not written: always METHOD)."""
        return {"buffer_bytes": list(self.buffer_bytes), "planned_bytes": self.planned_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "kv_cache_tensors": self.kv_cache_tensors,
                "activation_bytes": self.activation_bytes, "planned_end_bytes": self.planned_end_bytes}

    @classmethod
    def from_dict(cls, data: dict, method: str = METHOD) -> PlannedMemory:
        return cls(method, tuple(data["buffer_bytes"]), data["kv_cache_bytes"], data["kv_cache_tensors"],
                   data["planned_end_bytes"])


# ---------------------------------------------------------------------------------------------
# what figures.py derives (written, never read back)


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

    def to_dict(self) -> dict:
        return {"adapter": self.adapter, "ptd_bytes": self.ptd_bytes, "cost_bytes": self.cost_bytes,
                "cost_pss_bytes": self.cost_pss_bytes, "resident_adapter_pages": self.resident_adapter_pages,
                "resident_adapter_pss": self.resident_adapter_pss, "session_rss_growth": self.session_rss_growth,
                "times_ptd": self.times_ptd, "times_ptd_pss": self.times_ptd_pss,
                "double_counted_pages": self.double_counted_pages, "passed": self.passed}


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

    def to_dict(self) -> dict:
        return {"what": self.what, "etlora_bytes": self.etlora_bytes, "naive_bytes": self.naive_bytes,
                "saving_bytes": self.saving_bytes, "saving_fraction": self.saving_fraction}


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    limit: str
    passed: bool | None  # None: not measured

    def to_dict(self) -> dict:
        return {"name": self.name, "measured": self.measured, "limit": self.limit, "passed": self.passed}
