"""`etlora report`: disk and memory of one bundle with N adapters vs N merged full models.

Memory is measured in fresh child processes (etlora/report_child.py) from /proc/self/smaps_rollup:
first the etlora way (one program + foundation, a session per adapter, switching), then the naive
way (one merged model per adapter, each exported foundation-only and loaded on its own). The
merged models are built from the adapters' PEFT dirs (manifest `source`) and cached under
<out>/naive_cache/. Writes report.json, report.md and report.png.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from etlora.export.errors import EtloraError
from etlora.export.files import write_atomically
from etlora.export.manifest import Manifest, read_manifest
from etlora.inspect_bundle import inspect_bundle

MB = 1e6
MISS_FRACTION = 0.5  # an extra session growing by more than this x foundation size: not shared
CACHE_STAMP = "stamp.json"


@dataclass(frozen=True)
class Step:
    name: str
    rss: int
    pss: int
    private: int
    shared: int


@dataclass(frozen=True)
class SessionCost:
    adapter: str
    ptd_bytes: int
    pss_growth: int

    @property
    def times_ptd(self) -> float:
        return self.pss_growth / self.ptd_bytes if self.ptd_bytes else float("inf")


@dataclass(frozen=True)
class Report:
    bundle: str
    adapters: list[str]
    foundation_bytes: int
    program_bytes: int
    bundle_disk_bytes: int
    naive_disk_bytes: int
    adapter_ptd_bytes: dict[str, int]
    etlora_steps: list[Step]
    naive_steps: list[Step]
    naive_note: str
    notes: list[str]
    machine: dict

    @property
    def session_costs(self) -> list[SessionCost]:
        sizes = self.adapter_ptd_bytes
        steps = self.etlora_steps
        pairs = zip(steps[1 : 1 + len(self.adapters)], steps[2 : 2 + len(self.adapters)], self.adapters)
        return [SessionCost(name, sizes[name], after.pss - before.pss) for before, after, name in pairs]

    @property
    def foundation_measured(self) -> int:
        """PSS growth from starting the runtime to the first session (program + foundation)."""
        return self.etlora_steps[1].pss - self.etlora_steps[0].pss

    def step(self, steps: list[Step], prefix: str) -> Step | None:
        matches = [s for s in steps if s.name.startswith(prefix)]
        return matches[-1] if matches else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["session_costs"] = [{**asdict(c), "times_ptd": c.times_ptd} for c in self.session_costs]
        data["foundation_measured_bytes"] = self.foundation_measured
        data["naive"] = {"steps": data.pop("naive_steps"), "note": data.pop("naive_note")}
        data["etlora"] = {"steps": data.pop("etlora_steps")}
        return data


# ---------------------------------------------------------------------------------------------
# machine


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "executorch", "etlora")},
    }


# ---------------------------------------------------------------------------------------------
# child processes


def run_child(args: list[str]) -> tuple[list[Step], list[str]]:
    command = [sys.executable, "-m", "etlora.report_child", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EtloraError(f"{args[1]}: measuring process failed ({done.returncode}): {tail}")
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    return [Step(**step) for step in result["steps"]], result["notes"]


# ---------------------------------------------------------------------------------------------
# naive: one merged model per adapter


def _naive_problem(manifest: Manifest, adapters: list[str]) -> str:
    if not Path(manifest.foundation.source).exists():
        return f"foundation source {manifest.foundation.source} not found; naive column skipped"
    for name in adapters:
        source = Path(manifest.adapters[name].source)
        if not (source / "adapter_config.json").is_file():
            return f"adapter {name}: PEFT dir {source} not found; naive column skipped"
    return ""


def _load_foundation_model(source: Path):
    """(LlamaForCausalLM, tokenizer or None) for an HF dir or a .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_file():
        from etlora.real_model import smollm2_gguf_path

        try:
            if source.resolve() == smollm2_gguf_path().resolve():
                from etlora.real_model import load_smollm2_hf

                return load_smollm2_hf()
        except FileNotFoundError:
            pass
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        return model, AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source)
    try:
        return model, AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return model, None


def _stamp(manifest: Manifest, name: str) -> dict:
    record = manifest.adapters[name]
    return {
        "foundation": manifest.foundation.fingerprint,
        "adapter_sha256": manifest.files[record.file].sha256,
        "max_seq_len": manifest.program.max_seq_len,
    }


def _cached(target: Path, stamp: dict) -> bool:
    path = target / CACHE_STAMP
    return (target / "bundle" / "manifest.json").is_file() and path.is_file() and json.loads(path.read_text()) == stamp


def _export_merged(base, tokenizer, adapter_dir: Path, target: Path, max_seq_len: int) -> None:
    from peft import PeftModel

    from etlora.export import ExportOptions, export_bundle

    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir)).merge_and_unload()
    checkpoint = target / "checkpoint"
    merged.save_pretrained(checkpoint, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(checkpoint)
    del merged
    shutil.rmtree(target / "bundle", ignore_errors=True)
    export_bundle(checkpoint, {}, target / "bundle", ExportOptions(target_modules="none", max_seq_len=max_seq_len))
    shutil.rmtree(checkpoint)


def prepare_naive(manifest: Manifest, adapters: list[str], cache: Path, log: Callable[[str], None]) -> list[Path]:
    """One foundation-only bundle per adapter, its weights merged; reused while the stamp matches."""
    base = tokenizer = None
    bundles = []
    for name in adapters:
        target = cache / name
        stamp = _stamp(manifest, name)
        if not _cached(target, stamp):
            if base is None:
                log(f"loading foundation {manifest.foundation.source}")
                base, tokenizer = _load_foundation_model(Path(manifest.foundation.source))
            log(f"merging and exporting {name} -> {target / 'bundle'}")
            target.mkdir(parents=True, exist_ok=True)
            (target / CACHE_STAMP).unlink(missing_ok=True)
            _export_merged(base, tokenizer, Path(manifest.adapters[name].source), target, stamp["max_seq_len"])
            (target / CACHE_STAMP).write_text(json.dumps(stamp))
        bundles.append(target / "bundle")
    return bundles


# ---------------------------------------------------------------------------------------------
# the report


def _choose_adapters(manifest: Manifest, bundle: Path, adapters: list[str] | None) -> list[str]:
    if not adapters:
        return sorted(manifest.adapters)
    unknown = [name for name in adapters if name not in manifest.adapters]
    if unknown:
        raise EtloraError(
            f"{bundle}: no adapter named {unknown[0]!r} (bundle has: {', '.join(sorted(manifest.adapters)) or 'none'})"
        )
    return list(adapters)


def build_report(
    bundle: str | Path,
    out: str | Path,
    adapters: list[str] | None = None,
    naive: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> Report:
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    adapters = _choose_adapters(manifest, bundle, adapters)
    generate = ["--generate"] if manifest.tokenizer is not None else []
    log("measuring etlora (child process)")
    etlora_steps, notes = run_child(["etlora", str(bundle), "--adapters", ",".join(adapters), *generate])
    naive_steps, note = [], "" if naive else "naive column not requested (--no-naive)"
    if naive and not note:
        note = _naive_problem(manifest, adapters)
    if naive and not note and adapters:
        naive_bundles = prepare_naive(manifest, adapters, out / "naive_cache", log)
        log("measuring naive merged models (child process)")
        naive_steps, naive_notes = run_child(["naive", *map(str, naive_bundles), *generate])
        notes += [f"naive: {note}" for note in naive_notes]
    elif naive and not adapters:
        note = "bundle has no adapters; naive column skipped"
    disk = inspect_bundle(bundle)
    return Report(
        bundle=str(bundle),
        adapters=adapters,
        foundation_bytes=manifest.files[manifest.foundation.file].size,
        program_bytes=manifest.files[manifest.program.file].size,
        bundle_disk_bytes=disk.total_size,
        naive_disk_bytes=(manifest.files[manifest.foundation.file].size + manifest.files[manifest.program.file].size)
        * len(adapters),
        adapter_ptd_bytes={name: manifest.files[manifest.adapters[name].file].size for name in adapters},
        etlora_steps=etlora_steps,
        naive_steps=naive_steps,
        naive_note=note,
        notes=notes,
        machine=machine_info(),
    )


# ---------------------------------------------------------------------------------------------
# writers


def _mb(size: float) -> str:
    return f"{size / MB:,.1f} MB" if abs(size) >= 0.1 * MB else f"{size / 1e3:,.1f} kB"


def _saving(ours: int, theirs: int) -> str:
    if not theirs:
        return "-"
    return f"{_mb(theirs - ours)} ({100 * (theirs - ours) / theirs:.0f}%)"


def _comparison_rows(report: Report) -> list[str]:
    n = len(report.adapters)
    rows = [f"| disk (bundle vs {n} full models) | {_mb(report.bundle_disk_bytes)} | "
            f"{_mb(report.naive_disk_bytes)} | {_saving(report.bundle_disk_bytes, report.naive_disk_bytes)} |"]
    naive_last = report.step(report.naive_steps, "+ merged model")
    theirs = naive_last.pss if naive_last else 0
    first, last = report.etlora_steps[1], report.step(report.etlora_steps, "+ session") or report.etlora_steps[1]
    switched = report.step(report.etlora_steps, "switched") or last
    one_session = first.pss + max(0, switched.pss - last.pss)  # switching cost measured after the sessions
    for label, ours in ((f"PSS, one session switching through {n} adapters", one_session),
                        (f"PSS, {n + 1} sessions alive (one per adapter + first)", last.pss)):
        rows.append(f"| {label} | {_mb(ours)} | {_mb(theirs) if theirs else '-'} | {_saving(ours, theirs)} |")
    return rows


def _step_rows(steps: list[Step]) -> list[str]:
    return [f"| {s.name} | {_mb(s.rss)} | {_mb(s.pss)} | {_mb(s.private)} | {_mb(s.shared)} |" for s in steps]


def _foundation_line(report: Report) -> str:
    line = (f"foundation resident: predicted {_mb(report.foundation_bytes)} (foundation.ptd size) "
            f"vs measured {_mb(report.foundation_measured)} (PSS growth of the first session)")
    worst = max((c.pss_growth for c in report.session_costs), default=0)
    if worst > MISS_FRACTION * report.foundation_bytes:
        return line + (f"  \n**MISS**: an extra session grew by {_mb(worst)}, more than {MISS_FRACTION}x the "
                       "foundation: the foundation is not shared between sessions")
    return line + f"  \nextra sessions stay below {MISS_FRACTION}x the foundation size: the foundation is shared"


def render_markdown(report: Report) -> str:
    machine = report.machine
    lines = [
        f"# etlora memory report: `{report.bundle}`",
        "",
        f"{len(report.adapters)} adapters ({', '.join(report.adapters)}); {machine['cpu']}, {machine['cores']} cores, "
        f"{_mb(machine['ram_bytes'])} RAM; python {machine['python']}, torch {machine['torch']}, "
        f"executorch {machine['executorch']}, etlora {machine['etlora']}",
        "",
        "| | etlora | naive (one merged model per adapter, all loaded) | saving |",
        "|---|---|---|---|",
        *_comparison_rows(report),
        "",
        "## Extra adapter sessions",
        "",
        "| adapter | .ptd size | PSS growth | x .ptd size |",
        "|---|---|---|---|",
        *[f"| {c.adapter} | {_mb(c.ptd_bytes)} | {_mb(c.pss_growth)} | {c.times_ptd:.2f}x |" for c in report.session_costs],
        "",
        _foundation_line(report),
        "",
        "## etlora steps (one process)",
        "",
        "| step | RSS | PSS | private | shared |",
        "|---|---|---|---|---|",
        *_step_rows(report.etlora_steps),
        "",
        "## naive steps (one process, one merged model per adapter)",
        "",
    ]
    if report.naive_steps:
        lines += ["| step | RSS | PSS | private | shared |", "|---|---|---|---|---|", *_step_rows(report.naive_steps)]
    else:
        lines.append(f"not measured: {report.naive_note}")
    lines += [""] + [f"note: {note}  " for note in report.notes]
    lines += ["", "Both processes import etlora (and with it torch) before the first step; compare growth between steps."]
    return "\n".join(lines) + "\n"


def render_png(report: Report) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("etlora", report.etlora_steps), ("naive", report.naive_steps)]
    columns = [(title, steps) for title, steps in columns if steps]
    figure, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4.5), sharey=True, squeeze=False)
    for axis, (title, steps) in zip(axes[0], columns):
        positions = range(len(steps))
        axis.bar([p - 0.2 for p in positions], [s.rss / MB for s in steps], 0.4, label="RSS", color="#9ecae1")
        axis.bar([p + 0.2 for p in positions], [s.pss / MB for s in steps], 0.4, label="PSS", color="#3182bd")
        axis.set_xticks(list(positions), [s.name for s in steps], rotation=30, ha="right", fontsize=8)
        axis.set_title(title)
        axis.legend()
    axes[0][0].set_ylabel("MB")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"report.{name}" for name in ("json", "md", "png")}
    write_atomically(paths["json"], (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    write_atomically(paths["md"], render_markdown(report).encode())
    write_atomically(paths["png"], render_png(report))
    return paths
