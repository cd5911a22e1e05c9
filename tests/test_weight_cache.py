"""XNNPACK weight cache: sessions of one foundation share its packed weights, logits unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from etlora import _runtime

TOKENS = [1, 5, 9, 2, 7]


def _open(bundle, adapter, weight_cache):
    session = _runtime.Session(
        str(bundle / "model.pte"), str(bundle / "foundation.ptd"), weight_cache=weight_cache
    )
    if adapter:
        session.set_adapters([(str(bundle / "adapters" / f"{adapter}.ptd"), 1.0)])
    return session


def test_stats_report_backend_options_and_sessions(bundle):
    stats = _runtime.weight_cache_stats()
    assert set(stats) >= {"default_enabled", "workspace_sharing_mode", "open_sessions",
                          "cached_sessions", "rss_bytes", "rss_anon_bytes", "rss_file_bytes"}
    assert stats["rss_bytes"] > 0 and stats["rss_anon_bytes"] > 0
    before = stats["cached_sessions"]
    session = _open(bundle, None, weight_cache=True)
    assert session.weight_cache
    assert _runtime.weight_cache_stats()["cached_sessions"] == before + 1
    del session
    assert _runtime.weight_cache_stats()["cached_sessions"] == before


def test_four_sessions_share_packed_foundation(bundle):
    adapters = ["support", "legal", None, "support"]
    # References: one session at a time, without the cache.
    reference = {}
    for name in set(adapters):
        alone = _open(bundle, name, weight_cache=False)
        reference[name] = alone.logits(TOKENS)
        del alone
    sessions = [_open(bundle, name, weight_cache=True) for name in adapters]
    for name, session in zip(adapters, sessions):
        np.testing.assert_allclose(session.logits(TOKENS), reference[name], rtol=0, atol=1e-6)
    # Sessions side by side keep their own adapters (no aliasing through the cache).
    assert not np.allclose(reference["support"], reference["legal"])


_GROWTH = """
import json, sys
from etlora import _runtime
bundle, cache = sys.argv[1], sys.argv[2] == "on"
sessions, anon = [], []
for i in range(8):
    s = _runtime.Session(bundle + "/model.pte", bundle + "/foundation.ptd", weight_cache=cache)
    s.set_adapters([(bundle + "/adapters/" + ("support", "legal")[i % 2] + ".ptd", 1.0)])
    s.logits([1, 2, 3])
    sessions.append(s)
    anon.append(_runtime.weight_cache_stats()["rss_anon_bytes"])
print(json.dumps(anon[-1] - anon[0]))
"""


def _anon_growth(bundle, cache):
    """RssAnon growth from 1 to 8 live sessions, in a fresh process (no reused heap)."""
    out = subprocess.run([sys.executable, "-c", _GROWTH, str(bundle), cache],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_extra_sessions_do_not_repack_foundation(bundle):
    foundation_bytes = (bundle / "foundation.ptd").stat().st_size
    on, off = _anon_growth(bundle, "on"), _anon_growth(bundle, "off")
    # Without the cache every extra session packs its own copy of the foundation;
    # with it, none does. Require at least half of that per session to be saved
    # (the rest of a session, its KV cache and arenas, is the same either way).
    assert off - on > 0.5 * 7 * foundation_bytes, (on, off, foundation_bytes)
