"""Running the measuring processes of `etlora report` (child.py) and reading their figures.

Every figure comes from a fresh child interpreter: nothing the parent loaded (torch, the naive
export) is counted. The child prints JSON; this module turns it into schema.Step records
(RSS/PSS/private/shared bytes and RSS/PSS per region: foundation.ptd mapping, adapter .ptd
mappings, model.pte, the packed cache file, anonymous memory, everything else), and records
what machine they were taken on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from etlora.format.errors import EtloraError
from etlora.report.child import cache_paths_of, read_memory
from etlora.report.schema import NaiveProcess, ProcessPair, Step

CHILD = [sys.executable, "-m", "etlora.report.child"]


def _steps(payload: dict) -> tuple[list[Step], list[str]]:
    return [Step.from_dict(step) for step in payload["steps"]], payload["notes"]


def _failure(what: str, returncode: int, stderr: str) -> EtloraError:
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return EtloraError(f"{what}: measuring process expected to exit 0, received {returncode}: {tail}")


def run_steps(mode: str, bundle: Path, load_options: dict, *args: str) -> tuple[list[Step], list[str]]:
    """Run a step-taking child to the end; its steps and notes."""
    command = [*CHILD, mode, str(bundle), "--load-options", json.dumps(load_options), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise _failure(f"{mode} {bundle}", done.returncode, done.stderr)
    return _steps(json.loads(done.stdout.strip().splitlines()[-1]))


class _Held:
    """A `hold` child: loaded, one forward done, alive until close()."""

    def __init__(self, bundle: Path, adapter: str | None, load_options: dict):
        self.what = f"hold {bundle}"
        self.stderr = tempfile.TemporaryFile(mode="w+")
        command = [*CHILD, "hold", str(bundle), "--load-options", json.dumps(load_options)]
        command += ["--adapter", adapter] if adapter else []
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True)
        for line in self.process.stdout:
            if line.startswith("{"):
                self.steps, self.notes = _steps(json.loads(line))
                return
        self.close()
        raise _failure(self.what, self.process.returncode, self.stderr.read())

    def close(self) -> None:
        self.process.stdin.close()
        returncode = self.process.wait()
        self.stderr.seek(0)
        if returncode != 0:
            raise _failure(self.what, returncode, self.stderr.read())


def measure_pair(bundle: Path, adapter: str | None, load_options: dict) -> ProcessPair:
    cache_paths = cache_paths_of(load_options)
    first = _Held(bundle, adapter, load_options)
    try:
        alone = first.steps[-1]
        second = _Held(bundle, adapter, load_options)
        try:
            both = [Step.from_dict({"name": f"process {i} of 2", **read_memory(held.process.pid, cache_paths)})
                    for i, held in enumerate((first, second), start=1)]
        finally:
            second.close()
    finally:
        first.close()
    return ProcessPair(alone=alone, first=both[0], second=both[1])


def measure_naive(bundles: dict[str, Path]) -> list[NaiveProcess]:
    """Each merged model alone in its own fresh process, one after the other."""
    processes = []
    for adapter, bundle in bundles.items():
        held = _Held(bundle, None, {})
        held.close()
        processes.append(NaiveProcess(adapter=adapter, idle=held.steps[0], loaded=held.steps[-1]))
    return processes


# ---------------------------------------------------------------------------------------------
# the measuring machine


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
