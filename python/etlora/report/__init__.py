"""`etlora report`: disk and memory of one bundle with N adapters vs N merged full models.

What is measured (each in fresh child processes, child.py, from /proc/PID/smaps):

- sessions: four foundation-only sessions, then session 1 switching to each adapter and back,
  then one more session per adapter, each step after one forward. Per-session state measured =
  mean RSS growth of the foundation-only sessions after the first; predicted = the program's
  memory-planned bytes (plan.py: activations + KV cache). Adapter cost = RSS growth when
  session 1 switches to the adapter (no new session's state in it).
- growth: N = 1, 2, 4, 8 sessions cycling through the adapters in one process; the packed
  foundation must appear once (XNNPACK weight cache), not once per session.
- two processes on the same bundle, both alive: each one's PSS and their sum, against one alone.
- naive: each merged model (naive.py) alone in its own process; total = sum.

Modules: schema (the records of report.json and the targets' limits), plan (model.pte's planned
memory), child (the measuring process, `python -m etlora.report.child`), measure (runs it),
naive (the merged models), figures (Report: figures and targets), render (report.md,
report.png), build (measures a bundle, writes the files).

This package's own import is lazy: `python -m etlora.report.child` imports it in every measuring
process, where anything imported is counted, so the names below load their module on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"build_report": "build", "write_report": "build", "Report": "figures"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
