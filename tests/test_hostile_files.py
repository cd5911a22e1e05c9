"""Damaged adapter .ptd files give errors, never a crash: byte flips and truncations.

A child process loads hundreds of mutations of a valid adapter file one after another, with the C++
runtime and with the torch-free Python reader; a signal
(SIGSEGV, SIGBUS, abort) fails the test with the seed and the mutation that killed it. Each
mutation either loads (damage in padding or tensor values is still a well-formed file) or is
refused with an error that names the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, random, sys
    from pathlib import Path
    import etlora
    from etlora.format.adapter_format import read_adapter_ptd
    from etlora.format.errors import EtloraError

    bundle, seed, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    target = bundle / "adapters" / "support.ptd"
    original = target.read_bytes()
    metadata_end = 16384  # header, flatbuffer and first page: where offsets live
    rng = random.Random(seed)
    session = etlora.load(bundle)
    refused, loaded = 0, 0
    for i in range(count):
        data = bytearray(original)
        kind = rng.choice(["flip", "flip", "bytes", "truncate", "word"])
        if kind == "flip":
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(min(metadata_end, len(data)))
                data[at] ^= 1 << rng.randrange(8)
        elif kind == "bytes":
            at = rng.randrange(min(metadata_end, len(data)))
            data[at:at + 4] = bytes(rng.randrange(256) for _ in range(4))
        elif kind == "word":  # an offset or count replaced by a large or negative value
            at = rng.randrange(0, min(metadata_end, len(data)) - 4, 4)
            data[at:at + 4] = rng.choice([b"\\xff\\xff\\xff\\x7f", b"\\x00\\x00\\x00\\x80", b"\\xff\\xff\\xff\\xff", b"\\x00\\x10\\x00\\x00"])
        else:
            data = data[: rng.randrange(len(data))]
        sys.stderr.write(f"{i} {kind}\\n")
        sys.stderr.flush()
        staged = target.with_suffix(".tmp")
        staged.write_bytes(bytes(data))
        os.replace(staged, target)
        try:
            read_adapter_ptd(target)
            python_refused = None
        except EtloraError as error:
            python_refused = str(error)
        try:
            session.set_adapters({"support": 1.0})
            loaded += 1
        except EtloraError as error:
            assert str(target) in str(error), str(error)
            refused += 1
        else:
            # Same rules: what the Python reader refuses, the C++ runtime refuses too (the runtime
            # checks more: the fingerprint and shapes against the program).
            assert python_refused is None, f"mutation {i}: C++ loaded what Python refused: {python_refused}"
    print(json.dumps({"refused": refused, "loaded": loaded}))
    """
)


@pytest.mark.parametrize("seed", [1, 2])
def test_damaged_adapter_files_are_refused_not_crashed(bundle_copy, seed):
    count = 150
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle_copy), str(seed), str(count)],
        capture_output=True, text=True, timeout=600,
    )
    last = result.stderr.strip().splitlines()[-1:] or ["(none)"]
    assert result.returncode == 0, f"seed {seed}: child died ({result.returncode}) at mutation {last[0]}\n{result.stderr[-2000:]}"
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["refused"] + counts["loaded"] == count
    assert counts["refused"] >= count // 4, counts  # the mutations reach the metadata: many are refused


FOUNDATION_CHILD = textwrap.dedent(
    """
    import json, random, sys
    from pathlib import Path
    from etlora import _runtime

    bundle, seed, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    original = (bundle / "foundation.ptd").read_bytes()
    target = bundle / "damaged.ptd"
    rng = random.Random(seed)
    refused, loaded, by_check = 0, 0, 0
    for i in range(count):
        data = bytearray(original)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        else:
            flatbuffer_end = 8 + 40 + int.from_bytes(original[24:32], "little")  # header + flatbuffer
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(min(flatbuffer_end, len(data)))
                data[at] ^= 1 << rng.randrange(8)
        sys.stderr.write(f"{i}\\n")
        sys.stderr.flush()
        target.write_bytes(bytes(data))
        try:
            _runtime.Session(str(bundle / "model.pte"), str(target), packed_cache_path="")
            loaded += 1
        except (ValueError, RuntimeError) as error:
            assert str(target) in str(error), str(error)
            refused += 1
            by_check += "not a valid FlatTensor" in str(error)
    print(json.dumps({"refused": refused, "loaded": loaded, "by_check": by_check}))
    """
)


def test_damaged_foundation_files_are_refused_not_crashed(bundle_copy):
    """foundation.ptd gets the same bounds check as adapter files before ExecuTorch reads it."""
    count = 80
    result = subprocess.run(
        [sys.executable, "-c", FOUNDATION_CHILD, str(bundle_copy), "3", str(count)],
        capture_output=True, text=True, timeout=600,
    )
    last = result.stderr.strip().splitlines()[-1:] or ["(none)"]
    assert result.returncode == 0, f"child died ({result.returncode}) at mutation {last[0]}\n{result.stderr[-2000:]}"
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["refused"] + counts["loaded"] == count
    assert counts["by_check"] >= count // 5, counts  # the bounds check, not ExecuTorch, refused them
