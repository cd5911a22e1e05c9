"""The packed cache file: the first start writes it, later starts map it, logits never change."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import etlora
from etlora import _runtime
from etlora.format.manifest import read_manifest
from etlora.inspect_bundle import inspect_bundle
from etlora.packed_cache import CACHE_DIR_NAME

from conftest import MAX_SEQ_LEN, TOKENS
from test_cpp import runner_path

MALFORMED = Path(__file__).parent / "fixtures" / "malformed"

# One load in a fresh process: what it did with the packed cache file, and its logits.
_LOAD = """
import json, os, sys
import etlora
bundle, packed, residency, adapters = sys.argv[1], sys.argv[2] == "on", sys.argv[4], json.loads(sys.argv[5])
session = etlora.load(bundle, adapters=adapters, packed_cache=packed, packed_cache_residency=residency)
tokens = [int(t) for t in sys.argv[3].split(",")]
info = dict(session.packed_cache.__dict__)
# Bytes of the packed cache file still mapped after the load, from /proc/self/maps.
inode = os.stat(info["path"]).st_ino if info["path"] and os.path.exists(info["path"]) else None
info["mapped_now"] = sum(
    int(end, 16) - int(start, 16)
    for start, end, fields in (
        (*line.split()[0].split("-"), line.split()) for line in open("/proc/self/maps"))
    if inode is not None and len(fields) > 4 and fields[4] == str(inode))
print(json.dumps({"packed_cache": info, "logits": session.logits(tokens).tolist()}))
"""


def load_in_fresh_process(bundle: Path, packed: bool = True, residency: str = "copy",
                          adapters: dict[str, float] | None = None,
                          tokens: list[int] = TOKENS) -> tuple[dict, np.ndarray]:
    """(what the load did with the packed cache file, the last position's logits); adapters
    default to support at 1.0."""
    adapters = {"support": 1.0} if adapters is None else adapters
    out = subprocess.run([sys.executable, "-c", _LOAD, str(bundle), "on" if packed else "off",
                          ",".join(map(str, tokens)), residency, json.dumps(adapters)],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["packed_cache"], np.asarray(result["logits"], dtype=np.float32)


@pytest.fixture
def bundle_copy(bundle_copy):
    """The private copy without the packed cache file that loads of the shared bundle may have left."""
    shutil.rmtree(bundle_copy / CACHE_DIR_NAME, ignore_errors=True)
    return bundle_copy


def packed_file(bundle: Path) -> Path:
    weights_id = read_manifest(bundle).foundation.weights_id
    return bundle / CACHE_DIR_NAME / _runtime.packed_cache_file_name(weights_id)


def test_first_load_writes_the_file_named_by_fingerprint_and_runtime(bundle_copy):
    session = etlora.load(bundle_copy)
    info = session.packed_cache
    path = packed_file(bundle_copy)
    fingerprint = read_manifest(bundle_copy).foundation.fingerprint
    assert info.source == "written" and info.path == str(path) and not info.note
    assert path.is_file() and path.stat().st_size == info.file_bytes > 0
    assert fingerprint[:32] in path.name and _runtime.executorch_version().split("+")[0] in path.name
    assert info.file_entries > 0 and info.mapped_bytes > 0 and info.load_seconds > 0
    assert Path(str(path) + ".sum").is_file()
    assert not list(path.parent.glob("*.tmp-*")), "temp files left behind"
    assert _runtime.check_packed_cache_file(str(path))["valid"]


def test_temp_files_of_dead_writers_are_removed(bundle_copy):
    import time

    path = packed_file(bundle_copy)
    path.parent.mkdir()
    dead_pid = 4_000_000
    if Path(f"/proc/{dead_pid}").exists():
        pytest.skip("the stand-in dead pid is alive")
    stale, fresh = Path(f"{path}.tmp-{dead_pid}-1"), Path(f"{path}.tmp-{dead_pid}-2")
    for temp in (stale, fresh):
        temp.write_bytes(b"half written")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    assert etlora.load(bundle_copy).packed_cache.source == "written"
    assert not stale.exists() and fresh.exists()  # a young file may be another namespace's writer


def test_later_start_maps_the_file_with_identical_logits(bundle_copy):
    first_info, first = load_in_fresh_process(bundle_copy)
    later_info, later = load_in_fresh_process(bundle_copy)
    mapped_info, mapped = load_in_fresh_process(bundle_copy, residency="map")
    off_info, off = load_in_fresh_process(bundle_copy, packed=False)
    assert first_info["source"] == "written"
    assert later_info["source"] == "mapped" and later_info["mapped_bytes"] > 0, later_info
    assert 0 < later_info["check_seconds"] < later_info["load_seconds"]
    assert not later_info["check_hashed"]  # untouched since written: identity suffices
    assert off_info["source"] == "off"
    assert np.abs(later - first).max() == 0
    assert np.abs(later - off).max() == 0
    assert np.abs(mapped - off).max() == 0


def test_default_residency_copies_the_packed_weights_out_of_the_file(bundle_copy):
    load_in_fresh_process(bundle_copy)  # writes the file
    copied, _ = load_in_fresh_process(bundle_copy)
    mapped, _ = load_in_fresh_process(bundle_copy, residency="map")
    # Every mapped byte was moved into private memory, and nothing of the file stays mapped.
    assert copied["copied_bytes"] == copied["mapped_bytes"] >= copied["file_bytes"] > 0, copied
    assert copied["mapped_now"] == 0 and 0 < copied["copy_seconds"] < copied["load_seconds"]
    assert mapped["source"] == "mapped" and mapped["copied_bytes"] == 0 and mapped["copy_seconds"] == 0
    assert mapped["mapped_now"] == mapped["mapped_bytes"] >= mapped["file_bytes"], mapped


def test_unknown_residency_is_refused_with_the_choices(bundle):
    with pytest.raises(etlora.EtloraError, match=r"packed_cache_residency: expected one of 'copy', 'map', got 'disk'"):
        etlora.load(bundle, packed_cache_residency="disk")


def test_copied_cache_is_hashed_once_then_mapped(bundle_copy, tmp_path):
    load_in_fresh_process(bundle_copy)
    moved = tmp_path / "moved"
    shutil.copytree(bundle_copy, moved)  # new inodes: the .sum identity no longer matches
    info, _ = load_in_fresh_process(moved)
    assert info["source"] == "mapped" and info["check_hashed"], info


def test_sessions_of_one_process_share_the_mapped_file(bundle_copy):
    first = etlora.load(bundle_copy, adapters={"support": 1.0})
    second = etlora.load(bundle_copy, adapters={"legal": 1.0})
    assert first.packed_cache.source == "written" and second.packed_cache.source == "shared"
    # The first load copied the weights into memory; the second shares that copy.
    assert second.packed_cache.copied_bytes == first.packed_cache.copied_bytes > 0
    assert second.packed_cache.mapped_bytes == first.packed_cache.mapped_bytes
    assert _runtime.weight_cache_stats()["packed_cache_files"] >= 1
    alone = etlora.load(bundle_copy, adapters={"legal": 1.0}, packed_cache=False)
    assert np.abs(second.logits(TOKENS) - alone.logits(TOKENS)).max() == 0


def test_another_process_holding_the_file_leaves_this_one_packing_in_memory(bundle_copy):
    holder = etlora.load(bundle_copy)  # the backend keeps an exclusive flock while mapped
    info, logits = load_in_fresh_process(bundle_copy)
    assert info["source"] == "memory-only" and "locked" in info["note"], info
    assert np.abs(logits - load_in_fresh_process(bundle_copy, packed=False)[1]).max() == 0
    del holder


def test_another_foundation_gets_another_file(bundle, tmp_path):
    from etlora.export import ExportOptions, export_bundle
    from etlora.testing.fixtures import make_tiny_llama

    other = tmp_path / "other"
    export_bundle(make_tiny_llama(tmp_path / "model", seed=1), {}, other,
                  ExportOptions(max_seq_len=MAX_SEQ_LEN, target_modules="q_proj", max_rank=4))
    assert packed_file(other).name != packed_file(bundle).name
    session = etlora.load(other)
    assert session.packed_cache.source == "written" and Path(session.packed_cache.path) == packed_file(other)


def test_runtime_refuses_a_file_named_for_another_foundation(bundle_copy):
    wrong = bundle_copy / CACHE_DIR_NAME / _runtime.packed_cache_file_name("0" * 64)
    wrong.parent.mkdir()
    with pytest.raises(ValueError, match="expected the file name"):
        _runtime.Session(str(bundle_copy / "model.pte"), str(bundle_copy / "foundation.ptd"),
                         packed_cache_path=str(wrong))
    assert not wrong.exists() and not list(wrong.parent.iterdir())


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_sum", "fixture"])
def test_damaged_file_is_replaced_and_logits_stay_right(bundle_copy, damage, caplog):
    _, reference = load_in_fresh_process(bundle_copy, packed=False)
    load_in_fresh_process(bundle_copy)  # writes the file
    path = packed_file(bundle_copy)
    data = bytearray(path.read_bytes())
    written_at = path.stat().st_mtime_ns
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":  # footer intact: only the checksum can tell
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(data)
        # A write changes the mtime, which sends the check to hashing; on a coarse file-system
        # clock the test's write could land in the same tick, so move it on explicitly.
        os.utime(path, ns=(written_at + 10**9, written_at + 10**9))
    elif damage == "no_sum":
        Path(str(path) + ".sum").unlink()
    else:
        shutil.copy(MALFORMED / "packed_index_truncated.bin", path)
    with caplog.at_level(logging.WARNING, logger="etlora"):
        session = etlora.load(bundle_copy, adapters={"support": 1.0})
    info = session.packed_cache
    assert info.source == "written" and "written again" in info.note and str(path) in info.note, info
    assert any("packed cache" in record.getMessage() for record in caplog.records)
    assert np.abs(session.logits(TOKENS) - reference).max() == 0
    del session
    again, logits = load_in_fresh_process(bundle_copy)
    assert again["source"] == "mapped" and np.abs(logits - reference).max() == 0


@pytest.mark.parametrize("name", ["packed_index_truncated.bin", "packed_entry_out_of_bounds.bin"])
def test_footer_check_names_the_problem(name):
    check = _runtime.check_packed_cache_file(str(MALFORMED / name))
    assert not check["valid"] and str(MALFORMED / name) in check["problem"]
    assert ("truncated" if "truncated" in name else "outside the packed data") in check["problem"]


def test_unusable_cache_folder_turns_the_file_off_with_one_warning(bundle, tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="etlora"):
        session = etlora.load(bundle, cache_dir=blocker / "cache")
    assert session.packed_cache.source == "off"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "packed cache off" in warnings[0] and "\n" not in warnings[0]


def test_cache_dir_elsewhere_leaves_the_bundle_untouched(bundle_copy, tmp_path):
    session = etlora.load(bundle_copy, cache_dir=tmp_path / "cache")
    assert session.packed_cache.source == "written"
    assert Path(session.packed_cache.path).parent == tmp_path / "cache"
    assert not (bundle_copy / CACHE_DIR_NAME).exists()


def test_inspect_does_not_count_the_cache_folder(bundle_copy):
    before = inspect_bundle(bundle_copy)
    etlora.load(bundle_copy)
    after = inspect_bundle(bundle_copy)
    assert (bundle_copy / CACHE_DIR_NAME).is_dir() and not after.problems
    assert after.total_size == before.total_size
    assert CACHE_DIR_NAME not in json.dumps(after.to_dict())


def test_runner_writes_then_maps_and_shows_cache(bundle_copy):
    args = [runner_path(), "--bundle", str(bundle_copy), "--tokens", "1,2,3", "--show-cache"]
    first = subprocess.run(args, check=True, capture_output=True, text=True)
    later = subprocess.run(args, check=True, capture_output=True, text=True)
    kept = subprocess.run(args + ["--map-packed-cache"], check=True, capture_output=True, text=True)
    off = subprocess.run(args + ["--no-packed-cache"], check=True, capture_output=True, text=True)
    assert "packed cache: written" in first.stderr and "packed cache: mapped" in later.stderr
    assert "packed cache: off" in off.stderr
    assert "copied into memory 0.0 MiB" not in later.stderr and "copied into memory 0.0 MiB" in kept.stderr
    logits = [run.stdout.splitlines()[1] for run in (first, later, kept, off)]
    assert logits[0] == logits[1] == logits[2] == logits[3]
    elsewhere = subprocess.run(args + ["--packed-cache", str(bundle_copy / "elsewhere")],
                               check=True, capture_output=True, text=True)
    assert f"packed cache: written {bundle_copy / 'elsewhere'}/" in elsewhere.stderr
