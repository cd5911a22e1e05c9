"""The QNN SDK check (export/qnn_sdk.py), the export's program plan (program_plan.py) and the QNN
lowering's refusal (qnn_lowering.py), on faked environments: no SDK exists on this machine.

Every answer is checked word for word where a user reads it: the reason, what was looked for,
the version found against the one expected, and the hint.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from etlora.export.program_plan import plan_programs
from etlora.export.qnn_sdk import EXPECTED_RELEASE, HOST_LIBRARIES, HOW_TO_GET, ItemState, check_qnn_sdk
from etlora.format.backends import BackendRequest, Soc
from etlora.format.errors import EtloraError
from etlora.testing.fixtures import make_fake_qnn_sdk

LIBRARY_DIR = "lib/x86_64-linux-clang"
ADAPTOR = "Python adaptor executorch.backends.qualcomm.python.PyQnnManagerAdaptor"


@pytest.fixture
def executorch_dir(tmp_path):
    """An executorch package folder holding the adaptor (a file: found, never imported)."""
    folder = tmp_path / "site" / "executorch"
    (folder / "backends/qualcomm/python").mkdir(parents=True)
    (folder / "backends/qualcomm/python/PyQnnManagerAdaptor.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    return folder


def check(environ, executorch_dir):
    return check_qnn_sdk(environ, [executorch_dir])


def states(result) -> dict[str, str]:
    return {item.name: item.state.value for item in result.items}


def test_no_root_says_so_and_checks_nothing_under_it(executorch_dir):
    result = check({}, executorch_dir)
    assert not result.found and result.root == "" and result.version_found == ""
    assert result.reason == "QNN_SDK_ROOT not set"
    assert result.short() == "no QNN SDK: QNN_SDK_ROOT not set"
    assert states(result) == {"QNN_SDK_ROOT": "missing", **{name: "not checked" for name in HOST_LIBRARIES},
                              "version": "not checked", "LD_LIBRARY_PATH": "not checked", "adaptor": "found"}
    assert result.looked_for == (
        "QNN_SDK_ROOT (environment)",
        f"$QNN_SDK_ROOT/{LIBRARY_DIR}/libQnnHtp.so",
        f"$QNN_SDK_ROOT/{LIBRARY_DIR}/libQnnHtpPrepare.so",
        f"$QNN_SDK_ROOT/{LIBRARY_DIR}/libQnnSystem.so",
        "$QNN_SDK_ROOT/sdk.yaml version: 2.37.x",
        f"$QNN_SDK_ROOT/{LIBRARY_DIR} on LD_LIBRARY_PATH",
        ADAPTOR,
    )
    assert result.message() == (
        "expected a QNN SDK 2.37 for ExecuTorch 1.5.1's Qualcomm backend, received: QNN_SDK_ROOT not set; "
        "looked for: QNN_SDK_ROOT (environment) (missing: QNN_SDK_ROOT not set); "
        f"$QNN_SDK_ROOT/{LIBRARY_DIR}/libQnnHtp.so (not checked); "
        f"$QNN_SDK_ROOT/{LIBRARY_DIR}/libQnnHtpPrepare.so (not checked); "
        f"$QNN_SDK_ROOT/{LIBRARY_DIR}/libQnnSystem.so (not checked); "
        "$QNN_SDK_ROOT/sdk.yaml version: 2.37.x (not checked); "
        f"$QNN_SDK_ROOT/{LIBRARY_DIR} on LD_LIBRARY_PATH (not checked); "
        f"{ADAPTOR} (found: {executorch_dir}/backends/qualcomm/python/"
        "PyQnnManagerAdaptor.cpython-311-x86_64-linux-gnu.so); "
        f"hint: {HOW_TO_GET}"
    )
    assert HOW_TO_GET == (
        "download Qualcomm AI Runtime SDK 2.37.0.250724 (softwarecenter.qualcomm.com, "
        "Qualcomm_AI_Runtime_Community), unzip it, then before starting etlora: export "
        "QNN_SDK_ROOT=<unzipped>/qairt/2.37.0.250724 LD_LIBRARY_PATH=$QNN_SDK_ROOT/lib/x86_64-linux-clang:$LD_LIBRARY_PATH"
    )


def test_a_complete_sdk_is_found(tmp_path, executorch_dir):
    environ = make_fake_qnn_sdk(tmp_path / "qairt")
    result = check({**environ, "LD_LIBRARY_PATH": f"/opt/other:{environ['LD_LIBRARY_PATH']}/"}, executorch_dir)
    assert result.found and result.reason == "" and set(states(result).values()) == {"found"}
    assert (result.version_found, result.version_expected) == (EXPECTED_RELEASE, "2.37")
    assert result.short() == f"QNN SDK 2.37.0.250724 at {tmp_path / 'qairt'}"
    assert result.item("libQnnHtp.so").detail == str(tmp_path / "qairt" / LIBRARY_DIR / "libQnnHtp.so")


def test_a_root_that_is_no_directory(tmp_path, executorch_dir):
    result = check({"QNN_SDK_ROOT": str(tmp_path / "nowhere")}, executorch_dir)
    assert result.reason == f"QNN_SDK_ROOT={tmp_path / 'nowhere'} is not a directory"
    assert result.short() == f"no usable QNN SDK: QNN_SDK_ROOT={tmp_path / 'nowhere'} is not a directory"
    assert states(result)["libQnnHtp.so"] == "not checked"


def test_missing_libraries_are_named(tmp_path, executorch_dir):
    root = tmp_path / "qairt"
    one = check(make_fake_qnn_sdk(root, libraries=("libQnnHtp.so", "libQnnSystem.so")), executorch_dir)
    assert one.reason == f"{root / LIBRARY_DIR / 'libQnnHtpPrepare.so'} missing"
    assert one.item("libQnnHtpPrepare.so").state is ItemState.MISSING
    assert one.item("libQnnHtp.so").state is ItemState.FOUND
    (root / LIBRARY_DIR / "libQnnSystem.so").unlink()
    two = check(make_fake_qnn_sdk(root, libraries=()), executorch_dir)
    assert two.reason == f"{root / LIBRARY_DIR} lacks libQnnHtpPrepare.so, libQnnSystem.so"
    assert f"$QNN_SDK_ROOT/{LIBRARY_DIR}/libQnnSystem.so (missing: {root / LIBRARY_DIR / 'libQnnSystem.so'} missing)" \
        in two.message()


def test_the_version_must_be_the_one_executorch_was_built_against(tmp_path, executorch_dir):
    root = tmp_path / "qairt"
    newer = check(make_fake_qnn_sdk(root, version="2.51.0.251030"), executorch_dir)
    assert not newer.found and newer.version_found == "2.51.0.251030"
    assert newer.item("version").state is ItemState.WRONG
    assert newer.reason == f"{root / 'sdk.yaml'} says 2.51.0.251030, ExecuTorch 1.5.1 expects 2.37 (2.37.0.250724)"
    assert check(make_fake_qnn_sdk(root, version="2.37.1.250901"), executorch_dir).found  # a patch release
    (root / "sdk.yaml").unlink()
    unknown = check(make_fake_qnn_sdk(root, version=None), executorch_dir)
    assert unknown.version_found == "" and unknown.item("version").state is ItemState.MISSING
    assert unknown.reason == f"{root / 'sdk.yaml'} missing or has no 'version:' line (the SDK version cannot be read)"


def test_the_library_folder_must_be_on_the_loader_path(tmp_path, executorch_dir):
    environ = make_fake_qnn_sdk(tmp_path / "qairt")
    result = check({**environ, "LD_LIBRARY_PATH": "/usr/lib"}, executorch_dir)
    assert result.reason == (f"LD_LIBRARY_PATH does not include {tmp_path / 'qairt' / LIBRARY_DIR} "
                             "(ExecuTorch's QNN compiler loads libQnnHtp.so by name)")


def test_an_executorch_without_the_adaptor(tmp_path):
    environ = make_fake_qnn_sdk(tmp_path / "qairt")
    bare = tmp_path / "bare" / "executorch"
    bare.mkdir(parents=True)
    result = check_qnn_sdk(environ, [bare])
    assert result.reason == (
        "executorch.backends.qualcomm.python.PyQnnManagerAdaptor not in this executorch (looked in "
        f"{bare / 'backends/qualcomm/python'}; hint: an executorch wheel built with the Qualcomm backend)"
    )


def test_the_installed_wheel_has_the_adaptor():
    """ExecuTorch 1.5.1's x86 wheel ships the adaptor; only the SDK is missing here."""
    assert check_qnn_sdk({}).item("adaptor").state is ItemState.FOUND


def test_the_check_loads_nothing_of_the_qualcomm_backend(tmp_path):
    """The check and the plan read files only: ExecuTorch's own version query aborts the process on a
    library it cannot load, so nothing of executorch.backends.qualcomm may be imported to decide."""
    code = ("import sys; from etlora.export.program_plan import plan_programs; "
            "from etlora.format.backends import BackendRequest; before = set(sys.modules); "
            "plan = plan_programs(BackendRequest.HTP); "
            "print(plan.line); print(sorted(m for m in set(sys.modules) - before if 'qualcomm' in m))")
    environ = {**os.environ, **make_fake_qnn_sdk(tmp_path / "qairt")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environ)
    assert result.returncode == 0, result.stderr[-2000:]
    line, loaded = result.stdout.strip().splitlines()[-2:]
    assert line.startswith("backend htp: xnnpack + htp for SM8650 (QNN SDK 2.37.0.250724") and loaded == "[]"


def test_backend_decisions_and_their_lines(tmp_path, executorch_dir):
    none = check({}, executorch_dir)
    found = check(make_fake_qnn_sdk(tmp_path / "qairt"), executorch_dir)
    auto = plan_programs(BackendRequest.AUTO, Soc.SM8650, none)
    assert not auto.htp and auto.line == "backend auto: xnnpack (no QNN SDK: QNN_SDK_ROOT not set)"
    auto = plan_programs(BackendRequest.AUTO, Soc.SM8750, found)
    assert auto.htp and auto.line == f"backend auto: xnnpack + htp for SM8750 (QNN SDK 2.37.0.250724 at {tmp_path / 'qairt'})"
    htp = plan_programs(BackendRequest.HTP, Soc.SM8550, found)
    assert htp.htp and htp.line.startswith("backend htp: xnnpack + htp for SM8550 (QNN SDK 2.37.0.250724")
    xnnpack = plan_programs(BackendRequest.XNNPACK, Soc.SM8650, none)
    assert not xnnpack.htp and xnnpack.sdk is None and xnnpack.line == "backend xnnpack: xnnpack"
    with pytest.raises(EtloraError) as error:
        plan_programs(BackendRequest.HTP, Soc.SM8650, none)
    assert str(error.value) == f"--backend htp: {none.message()}"


def test_the_qnn_lowering_refuses_an_sdk_the_check_did_not_pass(executorch_dir):
    from etlora.export.qnn_lowering import qnn_htp_lowering

    missing = check({}, executorch_dir)
    with pytest.raises(EtloraError) as error:
        qnn_htp_lowering(Soc.SM8650, missing)
    assert str(error.value) == f"--backend htp: {missing.message()}"
