"""The backend decision before anything is loaded (runtime_cpp/include/etlora/htp_probe.h).

This machine has no QNN library, no Hexagon DSP and no Qualcomm SoC: `auto` runs XNNPACK and says
what was missing, `htp` is an error. Every other answer of the rule is tested with the device facts
faked (etlora._runtime.choose_backend takes them as a dict).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import etlora
from etlora import _runtime
from etlora.backend import BackendChoice, choose_backend, htp_facts
from etlora.format.backends import Backend

from conftest import TOKENS

LIBRARY_MISSING = {
    "htp_library_loadable": False, "htp_library_error": "libQnnHtp.so: cannot open shared object file: No such file or directory",
    "system_library_loadable": False,
    "system_library_error": "libQnnSystem.so: cannot open shared object file: No such file or directory",
}
NO_SOC0 = "no /sys/devices/soc0/machine or soc_id: not a Qualcomm SoC, or hidden by the kernel"
NODES = "/dev/fastrpc-cdsp, /dev/fastrpc-cdsp-secure, /dev/adsprpc-smd"
# A device that could run an HTP program for SM8650 (faked).
USABLE = {"htp_library_loadable": True, "htp_library_error": "", "system_library_loadable": True,
          "system_library_error": "", "dsp_device": "/dev/fastrpc-cdsp", "soc": "SM8650", "soc_source": "ETLORA_SOC"}
PROGRAM = {"soc": "SM8650", "path": "/bundle/model_htp.pte"}


@pytest.fixture(autouse=True)
def no_soc_override(monkeypatch):
    monkeypatch.delenv("ETLORA_SOC", raising=False)


@pytest.fixture
def bare_machine():
    """This machine as the tests expect it: no QNN library, no DSP node, no soc0."""
    facts = htp_facts()
    if facts["htp_library_loadable"] or facts["system_library_loadable"] or facts["dsp_device"]:
        pytest.skip(f"this machine has QNN libraries or a Hexagon DSP: {facts}")
    assert facts == {**LIBRARY_MISSING, "dsp_device": "", "soc": "", "soc_source": NO_SOC0}
    return facts


# A two-program bundle: model_htp.pte is a placeholder (no QNN SDK here to compile one), marked
# as such here only; the runtime must never open it.
HTP_ENTRY = {"file": "model_htp.pte", "soc": "SM8650", "qnn_sdk_version": "2.37.0.250724",
             "chunk_len": 32, "cache_len": 64, "foundation_in_context_bytes": 0}


@pytest.fixture
def htp_bundle(bundle_copy):
    from etlora.format.manifest import FileRecord

    placeholder = bundle_copy / "model_htp.pte"
    placeholder.write_bytes(b"PLACEHOLDER for an HTP program (tests/test_backend_choice.py only), not a .pte")
    data = json.loads((bundle_copy / "manifest.json").read_text())
    data["files"]["model_htp.pte"] = FileRecord.of(placeholder).__dict__
    data["htp_program"] = dict(HTP_ENTRY)
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    return bundle_copy


def test_auto_picks_xnnpack_here_with_the_same_logits_as_an_xnnpack_load(bundle, bare_machine):
    assert choose_backend(bundle) == BackendChoice(Backend.XNNPACK, "no HTP program in the bundle")
    chosen = etlora.load(bundle, adapters={"legal": 0.5})
    assert (chosen.backend, chosen.backend_reason) == ("xnnpack", "no HTP program in the bundle")
    xnnpack = etlora.load(bundle, adapters={"legal": 0.5}, backend="xnnpack")
    assert (xnnpack.backend, xnnpack.backend_reason) == ("xnnpack", "xnnpack requested")
    np.testing.assert_array_equal(chosen.logits(TOKENS), xnnpack.logits(TOKENS))


def test_htp_requested_here_is_an_error_naming_what_is_missing(bundle, bare_machine):
    expected = ("backend htp: expected an HTP program this device can run, received: no HTP program in the bundle "
                "(hint: export with --backend htp --soc SMxxxx; or backend auto runs the XNNPACK program on the CPU)")
    with pytest.raises(etlora.EtloraError) as raised:
        etlora.load(bundle, backend="htp")
    assert str(raised.value) == expected
    with pytest.raises(etlora.EtloraError, match="^backend: expected one of 'auto', 'xnnpack', 'htp', received 'npu'$"):
        etlora.load(bundle, backend="npu")


def test_a_two_program_bundle_runs_xnnpack_here_and_says_why(htp_bundle, bare_machine):
    device_problems = (f"libQnnHtp.so not loadable: {LIBRARY_MISSING['htp_library_error']}; "
                       f"libQnnSystem.so not loadable: {LIBRARY_MISSING['system_library_error']}; "
                       f"no Hexagon DSP device node ({NODES})")
    session = etlora.load(htp_bundle)
    assert session.backend == "xnnpack"
    assert session.backend_reason == f"{device_problems}; device SoC unknown ({NO_SOC0}), program compiled for SM8650"
    np.testing.assert_array_equal(session.logits(TOKENS), etlora.load(htp_bundle, backend="xnnpack").logits(TOKENS))
    with pytest.raises(etlora.EtloraError) as raised:
        etlora.load(htp_bundle, backend="htp")
    assert str(raised.value).startswith(f"backend htp: expected an HTP program this device can run, received: "
                                        f"{device_problems}; device SoC unknown")
    assert "hint: put the QNN runtime libraries" in str(raised.value)


def test_a_two_program_bundle_for_another_soc_says_so(htp_bundle, bare_machine, monkeypatch):
    monkeypatch.setenv("ETLORA_SOC", "SM8550")
    assert choose_backend(htp_bundle).reason.endswith("; program compiled for SM8650, device is SM8550")
    # The same bundle on a faked device that has everything: the HTP program is chosen.
    chosen = choose_backend(htp_bundle, facts={**USABLE, "soc": "SM8650"})
    assert chosen.backend is Backend.HTP and chosen.reason.startswith("HTP program for SM8650 (")


def _inotify_opens(path: Path):
    """Start watching `path`; the returned function says how many times it was opened since."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0
    in_open, in_access = 0x20, 0x01
    assert libc.inotify_add_watch(fd, str(path).encode(), in_open | in_access) >= 0

    def opened() -> int:
        count = 0
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            data = b""
        offset = 0
        while offset < len(data):
            _, mask, _, name_len = struct.unpack_from("iIII", data, offset)
            count += bool(mask & (in_open | in_access))
            offset += 16 + name_len
        os.close(fd)
        return count

    return opened


def test_the_placeholder_htp_program_is_never_opened(htp_bundle, bare_machine):
    """Nothing reads model_htp.pte: the decision comes from the manifest and the device alone."""
    opened = _inotify_opens(htp_bundle / "model_htp.pte")
    for backend in ("auto", "xnnpack"):
        etlora.load(htp_bundle, adapters={"support": 1.0}, backend=backend).logits(TOKENS)
    with pytest.raises(etlora.EtloraError):
        etlora.load(htp_bundle, backend="htp")
    result = subprocess.run([runner_path(), "--bundle", str(htp_bundle), "--tokens", "1,2,3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert opened() == 0
    maps = Path("/proc/self/maps").read_text()
    assert "model_htp.pte" not in maps


# (what, facts, htp_program, backend for auto, reason; htp's error names the reason)
FAKED = [
    ("no HTP program in the bundle", USABLE, None, "xnnpack", "no HTP program in the bundle"),
    ("libraries present, no DSP node", {**USABLE, "dsp_device": ""}, PROGRAM, "xnnpack",
     f"no Hexagon DSP device node ({NODES})"),
    ("libQnnHtp.so missing", {**USABLE, "htp_library_loadable": False, "htp_library_error": "libQnnHtp.so: nope"},
     PROGRAM, "xnnpack", "libQnnHtp.so not loadable: libQnnHtp.so: nope"),
    ("libQnnSystem.so missing", {**USABLE, "system_library_loadable": False, "system_library_error": "undefined symbol: x"},
     PROGRAM, "xnnpack", "libQnnSystem.so not loadable: undefined symbol: x"),
    ("wrong SoC", {**USABLE, "soc": "SM8550"}, PROGRAM, "xnnpack", "program compiled for SM8650, device is SM8550"),
    ("unknown SoC", {**USABLE, "soc": "", "soc_source": "no soc0"}, PROGRAM, "xnnpack",
     "device SoC unknown (no soc0), program compiled for SM8650"),
    ("everything present", USABLE, PROGRAM, "htp",
     "HTP program for SM8650 (/bundle/model_htp.pte), libQnnHtp.so and libQnnSystem.so loadable, "
     "/dev/fastrpc-cdsp, SoC SM8650 from ETLORA_SOC"),
]


@pytest.mark.parametrize("what, facts, program, backend, reason", FAKED, ids=[f[0] for f in FAKED])
def test_every_branch_with_faked_facts(what, facts, program, backend, reason):
    assert _runtime.choose_backend("auto", facts, program) == (backend, reason)
    assert _runtime.choose_backend("xnnpack", facts, program) == ("xnnpack", "xnnpack requested")
    if backend == "htp":
        assert _runtime.choose_backend("htp", facts, program) == (backend, reason)
        return
    with pytest.raises(ValueError) as raised:
        _runtime.choose_backend("htp", facts, program)
    assert str(raised.value).startswith(
        f"backend htp: expected an HTP program this device can run, received: {reason} (hint: ")
    assert str(raised.value).endswith("; or backend auto runs the XNNPACK program on the CPU)")


def test_several_missing_things_are_all_named_with_their_hints():
    facts = {**USABLE, "dsp_device": "", "soc": "SM8750"}
    with pytest.raises(ValueError) as raised:
        _runtime.choose_backend("htp", facts, PROGRAM)
    assert str(raised.value) == (
        f"backend htp: expected an HTP program this device can run, received: no Hexagon DSP device node ({NODES}); "
        "program compiled for SM8650, device is SM8750 (hint: run on a Snapdragon device whose kernel exposes the "
        "Hexagon DSP; re-export with --soc SM8750; or backend auto runs the XNNPACK program on the CPU)")


def test_the_binding_refuses_incomplete_or_mistyped_facts():
    missing = {k: v for k, v in USABLE.items() if k != "dsp_device"}
    with pytest.raises(ValueError, match=r"^facts: expected a 'dsp_device' key, received none$"):
        _runtime.choose_backend("auto", missing, PROGRAM)
    with pytest.raises(ValueError, match=r"^facts: expected only the keys .*, received 'dsp'$"):
        _runtime.choose_backend("auto", {**USABLE, "dsp": ""}, PROGRAM)
    with pytest.raises(ValueError, match=r"^facts: 'htp_library_loadable' expected a boolean, received a number$"):
        _runtime.choose_backend("auto", {**USABLE, "htp_library_loadable": 1}, PROGRAM)
    with pytest.raises(ValueError, match=r"^htp_program: expected a 'path' key, received none$"):
        _runtime.choose_backend("auto", USABLE, {"soc": "SM8650"})
    with pytest.raises(ValueError, match=r"^backend: expected one of auto, xnnpack, htp, received 'npu'$"):
        _runtime.choose_backend("npu", USABLE, PROGRAM)


def test_gather_htp_facts_takes_the_soc_from_etlora_soc(monkeypatch, bare_machine):
    monkeypatch.setenv("ETLORA_SOC", " sm8550\n")
    assert htp_facts() == {**bare_machine, "soc": "SM8550", "soc_source": "ETLORA_SOC"}
    monkeypatch.setenv("ETLORA_SOC", "")  # empty: not set
    assert htp_facts()["soc"] == ""


def runner_path() -> str:
    found = shutil.which("etlora_runner") or str(Path(sysconfig.get_path("scripts")) / "etlora_runner")
    if not Path(found).exists():
        pytest.skip("etlora_runner is not installed")
    return found


def test_the_runner_prints_the_backend_line(bundle, htp_bundle, bare_machine):
    def runner(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([runner_path(), *args, "--tokens", "1,2,3"], capture_output=True, text=True, timeout=120)

    auto = runner("--bundle", str(bundle))
    assert auto.returncode == 0, auto.stderr
    assert "backend: xnnpack (no HTP program in the bundle)\n" in auto.stderr
    assert "backend: xnnpack (xnnpack requested)\n" in runner("--bundle", str(bundle), "--backend", "xnnpack").stderr
    two = runner("--bundle", str(htp_bundle))
    assert two.returncode == 0, two.stderr
    assert f"backend: xnnpack (libQnnHtp.so not loadable: {LIBRARY_MISSING['htp_library_error']}; " in two.stderr
    # The same words as the Python session.
    assert f"backend: xnnpack ({etlora.load(htp_bundle).backend_reason})\n" in two.stderr
    htp = runner("--bundle", str(bundle), "--backend", "htp")
    assert htp.returncode == 1
    assert htp.stderr.startswith("error: backend htp: expected an HTP program this device can run, received: "
                                 "no HTP program in the bundle (hint: ")
    bad = runner("--bundle", str(bundle), "--backend", "npu")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --backend: expected one of auto, xnnpack, htp, received 'npu'\n")


def test_etlora_run_prints_the_backend_line(bundle, bare_machine):
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "etlora.cli", "run", str(bundle), "--prompt", "hi",
                               "--max-new-tokens", "2", *argv], capture_output=True, text=True, timeout=300)

    auto = run()
    assert auto.returncode == 0, auto.stderr
    assert "backend: xnnpack (no HTP program in the bundle)\n" in auto.stderr
    assert "backend: xnnpack (xnnpack requested)\n" in run("--backend", "xnnpack").stderr
    htp = run("--backend", "htp")
    assert htp.returncode == 2
    lines = [line for line in htp.stderr.splitlines() if line.strip()]
    assert lines == ["etlora: error: backend htp: expected an HTP program this device can run, received: no HTP "
                     "program in the bundle (hint: export with --backend htp --soc SMxxxx; or backend auto runs the "
                     "XNNPACK program on the CPU)"]
