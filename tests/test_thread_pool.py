"""etlora's executor for ExecuTorch's thread pool: installed by the first load, configurable, results unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import etlora

from conftest import TOKENS

_FRESH = """
import json, sys
import etlora
before = etlora.thread_pool_state().__dict__
etlora.load(sys.argv[1])
print(json.dumps({"before": before, "after": etlora.thread_pool_state().__dict__}))
"""


def test_first_load_installs_the_executor_with_one_worker_per_extra_thread(bundle):
    out = subprocess.run([sys.executable, "-c", _FRESH, str(bundle)], check=True, capture_output=True,
                         text=True).stdout
    states = json.loads(out.strip().splitlines()[-1])
    assert states["before"]["configured"] is False and states["before"]["installed"] is False
    after = states["after"]
    assert after["configured"] is True and after["worker_spin_us"] == 1000.0
    threads = len(os.sched_getaffinity(0))
    if threads > 1:  # ExecuTorch's pool has one thread per core; the caller is one of them
        assert after["installed"] is True and after["worker_threads"] >= 1, after


def test_spin_changes_no_logit(bundle):
    session = etlora.load(bundle, adapters={"support": 1.0})
    try:
        etlora.configure_thread_pool(0)
        sleeping = session.logits(TOKENS)
        etlora.configure_thread_pool(5000)
        spinning = session.logits(TOKENS)
    finally:
        etlora.configure_thread_pool()
    assert etlora.thread_pool_state().worker_spin_us == 1000.0
    assert np.array_equal(sleeping, spinning)


@pytest.mark.parametrize("spin", [-1.0, 2e6, float("nan")])
def test_bad_spin_is_refused_with_the_range(spin):
    with pytest.raises(etlora.EtloraError, match=r"worker_spin_us: expected 0 to 1000000 microseconds"):
        etlora.configure_thread_pool(spin)
