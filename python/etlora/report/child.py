"""The measuring processes of `etlora report`: load a bundle step by step, print the figures as JSON.

Run by measure.py in fresh interpreters, so that nothing the parent loaded is counted:

    python -m etlora.report.child sessions BUNDLE --adapters a,b,c [--generate]
        two foundation-only sessions (per-session state), then one more session per adapter
        (adapter cost), then the first session switching through the adapters
    python -m etlora.report.child grow BUNDLE --adapters a,b,c --counts 1,2,4,8
        sessions cycling through the adapters; a step at each count
    python -m etlora.report.child hold BUNDLE [--adapter a]
        one session, one forward; prints its steps, then stays alive until stdin closes, so that
        the parent can read /proc/PID/smaps beside a second process

Every session runs one forward with its adapters active before a step is taken: the program's
planned memory is zero-filled at load, but adapter .ptd pages are mmapped and only pages that a
forward touched are resident. `--load-options JSON` is passed to every `etlora.load` (see
`open_session`). The last stdout line of a step-taking mode is
{"steps": [{"name", "rss", "pss", "private", "shared", "regions": {region: {"rss", "pss"}}}], "notes": [...]}
(schema.Step.to_dict's keys; REGIONS are schema's). It imports only the runtime and the standard
library besides schema.py, and never torch: whatever it imports is in every figure it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from etlora.report.schema import REGIONS

PROMPT = "Write one sentence about the sea."
GENERATE_TOKENS = 16
FORWARD_TOKENS = [1, 2, 3, 4, 5, 6, 7, 8]


def forward_tokens(session, adapter: str | None) -> list[int]:
    """FORWARD_TOKENS, then an activated LoRA's invocation tokens: without them it applies nowhere,
    the kernels skip its rows, and its pages would never count."""
    invocation = session.manifest.adapters[adapter].alora_invocation_tokens if adapter else None
    return FORWARD_TOKENS + list(invocation or [])


# ---------------------------------------------------------------------------------------------
# /proc figures (also read by the parent for a process it started)


def _region(path: str, cache_paths: tuple[str, ...]) -> str:
    if not path or path.startswith("[heap]") or path.startswith("[anon") or path.startswith("[stack"):
        return "anonymous"
    if any(path.startswith(cache) for cache in cache_paths):
        return "packed_cache_file"
    name = os.path.basename(path)
    if name == "foundation.ptd":
        return "foundation_file"
    if name.endswith(".ptd") and os.path.basename(os.path.dirname(path)) == "adapters":
        return "adapter_files"
    if name == "model.pte":
        return "program_file"
    return "other"


def read_memory(pid: int | str = "self", cache_paths: tuple[str, ...] = ()) -> dict:
    """RSS, PSS, private, shared (clean + dirty) bytes of a process, and RSS/PSS per region."""
    totals = dict.fromkeys(("rss", "pss", "private", "shared"), 0)
    regions = {name: {"rss": 0, "pss": 0} for name in REGIONS}
    region = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            region = _region(head[5] if len(head) > 5 else "", cache_paths)
            continue
        if len(head) != 3 or head[2] != "kB":
            continue
        key, size = head[0], int(head[1]) * 1024
        if key == "Rss:":
            totals["rss"] += size
            regions[region]["rss"] += size
        elif key == "Pss:":
            totals["pss"] += size
            regions[region]["pss"] += size
        elif key in ("Private_Clean:", "Private_Dirty:"):
            totals["private"] += size
        elif key in ("Shared_Clean:", "Shared_Dirty:"):
            totals["shared"] += size
    return {**totals, "regions": regions}


def cache_paths_of(load_options: dict) -> tuple[str, ...]:
    """Paths of the packed cache file's folder or file among the load options (`cache_dir`, `packed_cache`)."""
    paths = [load_options.get(key) for key in ("cache_dir", "packed_cache")]
    return tuple(str(Path(path).resolve()) for path in paths if isinstance(path, str))


class Recorder:
    def __init__(self, load_options: dict):
        self.steps: list[dict] = []
        self.notes: list[str] = []
        self.cache_paths = cache_paths_of(load_options)

    def __call__(self, name: str) -> None:
        self.steps.append({"name": name, **read_memory("self", self.cache_paths)})

    def print(self) -> None:
        sys.stdout.write("\n" + json.dumps({"steps": self.steps, "notes": self.notes}) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# sessions


REFERENCE_SESSIONS = 3  # foundation-only sessions after the first, for the per-session state


def open_session(bundle: str, adapter: str | None, load_options: dict):
    """THE place where the report opens a session (etlora's and the naive models'). The packed
    weight file is off unless the user asks (`--load-option packed_cache=true`, `cache_dir=...`):
    by default both sides pack into memory, the same way, and nothing is written into bundles."""
    import etlora

    options = {"packed_cache": False, **load_options}
    session = etlora.load(bundle, adapters={adapter: 1.0} if adapter else None, **options)
    session.logits(forward_tokens(session, adapter))  # adapter pages count once a forward touched them
    return session


def _start(load_options: dict) -> Recorder:
    record = Recorder(load_options)
    import etlora  # noqa: F401  (the runtime and its libraries, before the first step)
    import etlora._runtime  # noqa: F401

    record("runtime started")
    return record


def _generate(session, record: Recorder) -> None:
    from etlora.format.errors import EtloraError

    try:
        session.generate(PROMPT, max_new_tokens=GENERATE_TOKENS)
    except (EtloraError, ValueError, RuntimeError) as error:  # e.g. a tokenizer that does not fit
        record.notes.append(f"generation skipped: {error}")
        return
    record(f"generated {GENERATE_TOKENS} tokens")


def measure_sessions(bundle: str, adapters: list[str], generate: bool, load_options: dict) -> Recorder:
    record = _start(load_options)
    first = open_session(bundle, None, load_options)
    record("session 1 (foundation only)")
    sessions = [first]
    # Several foundation-only sessions: the per-session state is their mean growth, one sample
    # alone carries a few hundred kB of heap noise into every adapter's cost.
    for number in range(2, 2 + REFERENCE_SESSIONS):
        sessions.append(open_session(bundle, None, load_options))
        record(f"session {number} (foundation only)")
    # The first activation in a process pays once for what every later one reuses (heap the
    # runtime's adapter bookkeeping grows into, the kernels' first LoRA call): the first adapter is
    # activated and released once before the measured round, and what it cost beyond its second
    # activation is reported on its own line, not in that adapter's cost.
    if adapters:
        first.set_adapters({adapters[0]: 1.0})
        first.logits(forward_tokens(first, adapters[0]))
        record(f"session 1 first activation ({adapters[0]})")
        first.set_adapters({})
        first.release_adapters()
        first.logits(FORWARD_TOKENS)
        record("session 1 after first activation")
    # Each adapter made resident in the existing session 1 and released again (set_adapters({})
    # keeps files open for a fast switch back; release_adapters unmaps them): its growth is what
    # the adapter itself costs, without a new session's state and the heap noise that comes with it.
    for name in adapters:
        first.set_adapters({name: 1.0})
        first.logits(forward_tokens(first, name))
        record(f"session 1 + adapter {name}")
        first.set_adapters({})
        first.release_adapters()
        first.logits(FORWARD_TOKENS)
        record(f"session 1 without adapter {name}")
    for name in adapters:
        sessions.append(open_session(bundle, name, load_options))
        record(f"+ session {name}")
    if generate:
        _generate(first, record)
    return record


def measure_growth(bundle: str, adapters: list[str], counts: list[int], load_options: dict) -> Recorder:
    record = _start(load_options)
    sessions = []
    for index in range(max(counts, default=0)):
        adapter = adapters[index % len(adapters)] if adapters else None
        sessions.append(open_session(bundle, adapter, load_options))
        if len(sessions) in counts:
            record(f"{len(sessions)} session" + ("s" if len(sessions) > 1 else ""))
    return record


def hold(bundle: str, adapter: str | None, load_options: dict) -> None:
    record = _start(load_options)
    session = open_session(bundle, adapter, load_options)
    record("loaded, one forward")
    record.print()
    sys.stdin.read()  # the parent closes stdin once it has read /proc/PID/smaps
    del session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etlora.report.child")
    parser.add_argument("mode", choices=["sessions", "grow", "hold"])
    parser.add_argument("bundle")
    parser.add_argument("--adapters", default="")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--load-options", default="{}", help="JSON object passed to etlora.load")
    args = parser.parse_args(argv)
    adapters = [name for name in args.adapters.split(",") if name]
    load_options = json.loads(args.load_options)
    if args.mode == "hold":
        hold(args.bundle, args.adapter, load_options)
        return 0
    if args.mode == "sessions":
        record = measure_sessions(args.bundle, adapters, args.generate, load_options)
    else:
        record = measure_growth(args.bundle, adapters, [int(n) for n in args.counts.split(",")], load_options)
    record.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
