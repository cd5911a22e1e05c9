"""Which vector code etlora's own kernels run (runtime_cpp/include/etlora/kernel_path.h).

The attention kernel's loops are compiled once per instruction set (x86-64: avx512, avx2,
portable) and one is chosen per process: the best the CPU runs, unless `select_kernel_path` or the
environment variable ETLORA_KERNEL_PATH names one. Tests run every path the CPU can execute, and
benchmarks record the path beside their figures. Paths differ only by float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class KernelPath:
    name: str  # "avx512", "avx2", "portable"
    needs: str  # CPU features the path uses, "" for portable
    runnable: bool  # this CPU has them


def kernel_paths() -> list[KernelPath]:
    """Every path this build compiled, best first (portable last)."""
    from etlora import _runtime

    return [KernelPath(**path) for path in _runtime.kernel_paths()]


def select_kernel_path(name: str) -> str:
    """Run etlora's kernels on `name` ("auto": the best this CPU runs), process-wide, from the next call."""
    from etlora import _runtime
    from etlora.format.errors import EtloraError

    try:
        _runtime.select_kernel_path(name)
    except ValueError as error:
        raise EtloraError(str(error)) from None
    return kernel_path()


def kernel_path() -> str:
    """The path in effect; the first call settles it from ETLORA_KERNEL_PATH or auto."""
    from etlora import _runtime
    from etlora.format.errors import EtloraError

    try:
        return _runtime.kernel_path()
    except ValueError as error:
        raise EtloraError(str(error)) from None


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), recorded beside every speed figure."""
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
