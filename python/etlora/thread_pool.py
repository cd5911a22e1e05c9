"""Keeping ExecuTorch's thread-pool workers awake between dispatches (runtime_cpp/include/etlora/thread_pool.h).

The pool's worker sleeps after 10-15 us without work and waking it adds about 20 us to the next
dispatch, 50-90 times per decoded token; etlora lends the pool worker threads that spin for
`worker_spin_us` after each task instead (docs/architecture.md). Process-wide; the first
`etlora.load` installs it with the default unless `configure_thread_pool` ran first. Results never
change, only when the workers start.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WORKER_SPIN_US = 1000.0


@dataclass(frozen=True)
class ThreadPoolState:
    configured: bool  # configure_thread_pool ran (directly or from the first load)
    installed: bool  # etlora's executor provides the pool's workers (False on a 1-thread pool)
    worker_threads: int  # threads besides the calling one
    worker_spin_us: float


def configure_thread_pool(worker_spin_us: float = DEFAULT_WORKER_SPIN_US) -> ThreadPoolState:
    """Set how long idle pool workers spin before sleeping; 0 lets them sleep at once (saves power)."""
    from etlora import _runtime
    from etlora.format.errors import EtloraError

    try:
        _runtime.configure_thread_pool(float(worker_spin_us))
    except (ValueError, RuntimeError) as error:
        raise EtloraError(str(error)) from None
    return thread_pool_state()


def thread_pool_state() -> ThreadPoolState:
    from etlora import _runtime

    return ThreadPoolState(**_runtime.thread_pool_state())
