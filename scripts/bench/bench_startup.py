#!/usr/bin/env python3
"""Start-up benchmark: how long a fresh process takes to load a bundle, with and without the packed cache file.

Every start is a fresh Python process running `etlora.load(bundle)` and one forward pass:
  - off:   packed cache file off (XNNPACK packs the foundation at load, as before the file existed)
  - first: packed cache file on, none there yet (removed beforehand): packs and writes it
  - later: packed cache file on, file present: maps it, then copies the weights into private memory
           (the default residency, median of --runs)
  - later (map): the same, keeping the file mapped (packed_cache_residency="map")
and records the C++ load time (Session::open), the first forward's time (mapped pages fault in
there), the process's wall time to ready, and RSS after the load. Writes a table and JSON.

    python scripts/bench/bench_startup.py --bundle .bench_cache/bundle-512 --cache-dir /tmp/etlora-cache

A performance benchmark: run it by hand, never as a timed unit test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_START = r"""
import json, sys, time
started = time.perf_counter()
import etlora
imported = time.perf_counter()
bundle, mode, cache_dir = sys.argv[1], sys.argv[2], sys.argv[3] or None
session = etlora.load(bundle, packed_cache=mode != "off", cache_dir=cache_dir,
                      packed_cache_residency="map" if mode == "map" else "copy")
loaded = time.perf_counter()
session.logits([1, 2, 3])
ran = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kib = lambda key: int(status[key].split()[0]) * 1024
print(json.dumps({
    "import_seconds": imported - started,
    "load_seconds": session.packed_cache.load_seconds,
    "open_seconds": loaded - imported,
    "first_forward_seconds": ran - loaded,
    "ready_seconds": ran - started,
    "rss_bytes": kib("VmRSS"), "rss_anon_bytes": kib("RssAnon"), "rss_file_bytes": kib("RssFile"),
    "packed_cache": session.packed_cache.__dict__,
}))
"""


def start(bundle: Path, mode: str, cache_dir: Path | None) -> dict:
    out = subprocess.run([sys.executable, "-c", _START, str(bundle), mode, str(cache_dir or "")],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    numbers = {key: statistics.median(run[key] for run in runs)
               for key, value in runs[0].items() if isinstance(value, (int, float))}
    return {**numbers, "runs": runs}


def remove_packed_files(folder: Path) -> None:
    for path in folder.glob("xnnpack-packed-*"):
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="packed cache file folder (default BUNDLE/.etlora-cache; use one for a read-only bundle)")
    parser.add_argument("--runs", type=int, default=3, help="later starts, median taken (default 3)")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="default docs/results/startup_<bundle name>_<date>.json")
    args = parser.parse_args(argv)

    folder = args.cache_dir or args.bundle / ".etlora-cache"
    folder.mkdir(parents=True, exist_ok=True)
    remove_packed_files(folder)
    off = start(args.bundle, "off", args.cache_dir)
    first = start(args.bundle, "on", args.cache_dir)
    later = median_of([start(args.bundle, "on", args.cache_dir) for _ in range(args.runs)])
    later_map = median_of([start(args.bundle, "map", args.cache_dir) for _ in range(args.runs)])
    if first["packed_cache"]["source"] != "written" or any(
            run["packed_cache"]["source"] != "mapped" for run in later["runs"] + later_map["runs"]):
        print("warning: expected first=written, later=mapped; got "
              f"{first['packed_cache']['source']}, {[r['packed_cache']['source'] for r in later['runs']]}",
              file=sys.stderr)

    mib = 1024 * 1024
    rows = [("off (packs at load)", off), ("first (packs, writes file)", first),
            (f"later (maps, copies; median of {args.runs})", later),
            (f"later, map (keeps mapping; median of {args.runs})", later_map)]
    print(f"{'start':40} {'load s':>8} {'1st fwd s':>10} {'ready s':>8} {'RSS MiB':>8} {'anon':>7} {'file':>7}")
    for name, r in rows:
        print(f"{name:40} {r['load_seconds']:8.3f} {r['first_forward_seconds']:10.3f} {r['ready_seconds']:8.3f} "
              f"{r['rss_bytes'] / mib:8.0f} {r['rss_anon_bytes'] / mib:7.0f} {r['rss_file_bytes'] / mib:7.0f}")
    ratios = {
        "later_over_first_load": later["load_seconds"] / first["load_seconds"],
        "later_map_over_first_load": later_map["load_seconds"] / first["load_seconds"],
        "later_over_off_load": later["load_seconds"] / off["load_seconds"],
        "later_over_first_load_plus_forward": (later["load_seconds"] + later["first_forward_seconds"])
        / (first["load_seconds"] + first["first_forward_seconds"]),
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    packed = first["packed_cache"]
    print(f"packed cache file: {packed['path']} ({packed['file_bytes'] / mib:.0f} MiB, {packed['file_entries']} entries)")

    today = datetime.date.today().isoformat()
    out = args.json_out or REPO / "docs" / "results" / f"startup_smollm2_{today}.json"
    if args.json_out is None and "smollm" not in json.dumps(json.loads((args.bundle / "manifest.json").read_text())["foundation"]).lower():
        out = REPO / "docs" / "results" / f"startup_{args.bundle.name}_{today}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": today, "bundle": str(args.bundle), "machine": platform.platform(),
        "python": platform.python_version(), "off": off, "first": first, "later": later, "later_map": later_map,
        "ratios": ratios,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
