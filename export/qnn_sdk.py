"""Is there a QNN SDK that ExecuTorch's Qualcomm compiler can use here? Decided from files, torch-free.

Why from files and before any export work: ExecuTorch's own setup
(`executorch.backends.qualcomm.utils.qnn_sdk_setup`) downloads an SDK when QNN_SDK_ROOT is unset,
and its version query (`PyQnnManagerAdaptor.GetQnnSdkBuildId`) aborts the process on a library it
cannot load. So etlora looks, without loading anything, for what the ahead-of-time compiler needs:

- QNN_SDK_ROOT, a directory (the unzipped `qairt/<version>`);
- the x86-64 host libraries in `$QNN_SDK_ROOT/lib/x86_64-linux-clang/`: libQnnHtp.so (the HTP
  backend the compiler talks to), libQnnHtpPrepare.so (offline graph preparation into a context
  binary), libQnnSystem.so (context binary metadata);
- that folder on LD_LIBRARY_PATH: the compiler dlopens `libQnnHtp.so` by name, and the loader
  reads LD_LIBRARY_PATH once, at process start;
- the SDK version in `$QNN_SDK_ROOT/sdk.yaml`, whose major.minor must be the one ExecuTorch's
  adaptor was built against (ExecuTorch 1.5.1: QNN 2.37.0.250724): newer libraries failed device
  creation here (../shared/NOTES.md, Qualcomm HTP);
- the Python adaptor `executorch.backends.qualcomm.python.PyQnnManagerAdaptor`, a native module
  inside the executorch wheel (found by file, not imported: importing it pulls in ExecuTorch).

Passing this check means the files are where the compiler looks; whether they load is only known
when the compiler starts (qnn_lowering.py turns that failure into a one-line error).
"""

from __future__ import annotations

import enum
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT_VARIABLE = "QNN_SDK_ROOT"
HOST_LIBRARY_DIR = "lib/x86_64-linux-clang"
HOST_LIBRARIES = ("libQnnHtp.so", "libQnnHtpPrepare.so", "libQnnSystem.so")
VERSION_FILE = "sdk.yaml"
ADAPTOR_MODULE = "executorch.backends.qualcomm.python.PyQnnManagerAdaptor"
ADAPTOR_DIR = "backends/qualcomm/python"  # inside the executorch package
# ExecuTorch 1.5.1's Qualcomm backend is built against this release (its scripts/qnn_config.sh);
# change both together when the executorch pin moves.
EXECUTORCH_RELEASE = "1.5.1"
EXPECTED_RELEASE = "2.37.0.250724"
EXPECTED_VERSION = "2.37"  # what must match: major.minor
HOW_TO_GET = (
    f"download Qualcomm AI Runtime SDK {EXPECTED_RELEASE} (softwarecenter.qualcomm.com, "
    f"Qualcomm_AI_Runtime_Community), unzip it, then before starting etlora: "
    f"export {ROOT_VARIABLE}=<unzipped>/qairt/{EXPECTED_RELEASE} "
    f"LD_LIBRARY_PATH=${ROOT_VARIABLE}/{HOST_LIBRARY_DIR}:$LD_LIBRARY_PATH"
)


class ItemState(enum.Enum):
    FOUND = "found"
    MISSING = "missing"
    WRONG = "wrong"  # present, but not what ExecuTorch needs
    NOT_CHECKED = "not checked"  # depends on an item that is missing


@dataclass(frozen=True)
class SdkItem:
    name: str  # what is needed, e.g. "libQnnHtp.so"
    looked_for: str  # where, e.g. "$QNN_SDK_ROOT/lib/x86_64-linux-clang/libQnnHtp.so"
    state: ItemState
    detail: str = ""  # the path found, or what is wrong

    def describe(self) -> str:
        return f"{self.looked_for} ({self.state.value}{': ' + self.detail if self.detail else ''})"


@dataclass(frozen=True)
class QnnSdkCheck:
    found: bool  # every item found: ExecuTorch's QNN compiler can be started
    root: str  # QNN_SDK_ROOT as given, "" when unset
    items: tuple[SdkItem, ...]
    version_found: str  # from sdk.yaml, "" when unknown
    version_expected: str = EXPECTED_VERSION
    reason: str = ""  # the first missing or wrong item, one line; "" when found
    hint: str = HOW_TO_GET

    @property
    def looked_for(self) -> tuple[str, ...]:
        return tuple(item.looked_for for item in self.items)

    def item(self, name: str) -> SdkItem:
        return next(item for item in self.items if item.name == name)

    def short(self) -> str:
        """A few words for a status line: where the SDK is, or why there is none."""
        if self.found:
            return f"QNN SDK {self.version_found} at {self.root}"
        return f"{'no QNN SDK' if not self.root else 'no usable QNN SDK'}: {self.reason}"

    def message(self) -> str:
        """One line: expected -> received -> everything looked for -> hint."""
        return (
            f"expected a QNN SDK {self.version_expected} for ExecuTorch {EXECUTORCH_RELEASE}'s Qualcomm "
            f"backend, received: {self.reason}; looked for: "
            + "; ".join(item.describe() for item in self.items)
            + f"; hint: {self.hint}"
        )


def check_qnn_sdk(
    environ: Mapping[str, str] | None = None, executorch_dirs: Sequence[Path] | None = None
) -> QnnSdkCheck:
    """What ExecuTorch's Qualcomm compiler would find in this environment (`environ`: os.environ;
    `executorch_dirs`: the installed executorch package's folders). Loads nothing."""
    environ = os.environ if environ is None else environ
    root_text = environ.get(ROOT_VARIABLE, "")
    root = Path(root_text) if root_text else None
    items = [_root_item(root_text)]
    usable_root = root is not None and root.is_dir()
    library_dir = root / HOST_LIBRARY_DIR if root is not None else None
    for name in HOST_LIBRARIES:
        items.append(_file_item(name, f"${ROOT_VARIABLE}/{HOST_LIBRARY_DIR}/{name}",
                                library_dir / name if usable_root else None))
    version_item, version = _version_item(root if usable_root else None)
    items.append(version_item)
    items.append(_loader_path_item(library_dir if usable_root else None, environ.get("LD_LIBRARY_PATH", "")))
    items.append(_adaptor_item(executorch_dirs))
    failed = [item for item in items if item.state is not ItemState.FOUND]
    reason = ""
    if failed:
        first = failed[0]
        reason = first.detail
        missing_libraries = [item.name for item in failed if item.name in HOST_LIBRARIES]
        if first.name in HOST_LIBRARIES and len(missing_libraries) > 1:
            reason = f"{library_dir} lacks {', '.join(missing_libraries)}"
    return QnnSdkCheck(
        found=not failed, root=root_text, items=tuple(items), version_found=version, reason=reason
    )


def _root_item(root_text: str) -> SdkItem:
    looked_for = f"{ROOT_VARIABLE} (environment)"
    if not root_text:
        return SdkItem(ROOT_VARIABLE, looked_for, ItemState.MISSING, f"{ROOT_VARIABLE} not set")
    if not Path(root_text).is_dir():
        return SdkItem(ROOT_VARIABLE, looked_for, ItemState.MISSING, f"{ROOT_VARIABLE}={root_text} is not a directory")
    return SdkItem(ROOT_VARIABLE, looked_for, ItemState.FOUND, root_text)


def _file_item(name: str, looked_for: str, path: Path | None) -> SdkItem:
    if path is None:
        return SdkItem(name, looked_for, ItemState.NOT_CHECKED)
    if not path.is_file():
        return SdkItem(name, looked_for, ItemState.MISSING, f"{path} missing")
    return SdkItem(name, looked_for, ItemState.FOUND, str(path))


def _version_item(root: Path | None) -> tuple[SdkItem, str]:
    name, looked_for = "version", f"${ROOT_VARIABLE}/{VERSION_FILE} version: {EXPECTED_VERSION}.x"
    if root is None:
        return SdkItem(name, looked_for, ItemState.NOT_CHECKED), ""
    path = root / VERSION_FILE
    version = _read_version(path)
    if version is None:
        return SdkItem(name, looked_for, ItemState.MISSING, f"{path} missing or has no 'version:' line "
                       "(the SDK version cannot be read)"), ""
    if version.split(".")[:2] != EXPECTED_VERSION.split("."):
        return SdkItem(name, looked_for, ItemState.WRONG, f"{path} says {version}, ExecuTorch "
                       f"{EXECUTORCH_RELEASE} expects {EXPECTED_VERSION} ({EXPECTED_RELEASE})"), version
    return SdkItem(name, looked_for, ItemState.FOUND, version), version


def _read_version(path: Path) -> str | None:
    """The value of the first top-level `version:` line of sdk.yaml (a flat YAML file)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key == "version" and value.strip().strip("'\""):
            return value.strip().strip("'\"")
    return None


def _loader_path_item(library_dir: Path | None, loader_path: str) -> SdkItem:
    name, looked_for = "LD_LIBRARY_PATH", f"${ROOT_VARIABLE}/{HOST_LIBRARY_DIR} on LD_LIBRARY_PATH"
    if library_dir is None:
        return SdkItem(name, looked_for, ItemState.NOT_CHECKED)
    wanted = os.path.realpath(library_dir)
    if any(part and os.path.realpath(part) == wanted for part in loader_path.split(":")):
        return SdkItem(name, looked_for, ItemState.FOUND, str(library_dir))
    return SdkItem(name, looked_for, ItemState.MISSING, f"LD_LIBRARY_PATH does not include {library_dir} "
                   "(ExecuTorch's QNN compiler loads libQnnHtp.so by name)")


def _adaptor_item(executorch_dirs: Sequence[Path] | None) -> SdkItem:
    name, looked_for = "adaptor", f"Python adaptor {ADAPTOR_MODULE}"
    dirs = _executorch_dirs() if executorch_dirs is None else list(executorch_dirs)
    for directory in dirs:
        matches = sorted((Path(directory) / ADAPTOR_DIR).glob("PyQnnManagerAdaptor*.so"))
        if matches:
            return SdkItem(name, looked_for, ItemState.FOUND, str(matches[0]))
    where = ", ".join(str(Path(d) / ADAPTOR_DIR) for d in dirs) or "no executorch package installed"
    return SdkItem(name, looked_for, ItemState.MISSING, f"{ADAPTOR_MODULE} not in this executorch "
                   f"(looked in {where}; hint: an executorch wheel built with the Qualcomm backend)")


def _executorch_dirs() -> list[Path]:
    """The installed executorch package's folders, found without importing it."""
    spec = importlib.util.find_spec("executorch")
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
