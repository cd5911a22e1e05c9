"""Building a `Report`: runs every measurement of `etlora report` on one bundle, then writes it.

The one module that measures (through measure.py, plan.py and naive.py) and writes the files;
figures.py derives and render.py formats, and neither imports this one, so that a Report read
back from report.json renders without anything that measures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from etlora.format.errors import EtloraError
from etlora.format.files import write_atomically
from etlora.format.manifest import Manifest, read_manifest
from etlora.inspect_bundle import inspect_bundle
from etlora.report.figures import Report
from etlora.report.measure import machine_info, measure_naive, measure_pair, run_steps
from etlora.report.plan import read_planned_memory
from etlora.report.render import render_markdown, render_png
from etlora.report.schema import COUNTS, Disk


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
        bundle_adapters=len(manifest.adapters),
        bundle_adapter_bytes=sum(manifest.files[record.file].size for record in manifest.adapters.values()),
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
    from etlora.report.naive import activated_note, naive_problem, prepare_naive

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
        if activated_note(manifest, adapters):
            notes = [*notes, activated_note(manifest, adapters)]
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
    """report.json, report.md and report.png under `out`, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"report.{name}" for name in ("json", "md", "png")}
    write_atomically(paths["json"], (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    write_atomically(paths["md"], render_markdown(report).encode())
    write_atomically(paths["png"], render_png(report))
    return paths
