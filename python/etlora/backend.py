"""Which program a session runs, decided before anything is loaded (torch-free).

A bundle may hold an HTP program (for the Hexagon NPU of one Snapdragon SoC) beside the XNNPACK
program model.pte. ExecuTorch's QnnBackend crashes the process on a program it cannot run instead
of refusing it, so the choice is never made by trying: the device is probed (QNN libraries, the
Hexagon DSP device node, the SoC) and one rule in C++ decides (etlora::choose_backend, the table in
runtime_cpp/include/etlora/htp_probe.h), the same rule etlora_runner applies.

etlora.load and etlora_runner decide through etlora::LoadedBundle, which applies that rule; this
module exposes it for callers that decide first (a BackendChoice handed to etlora.load) and for
tests that fake the device facts. When the answer is HTP, the HTP program runs in an HtpSession
(the static-shape session with the KV cache on the host); `htp` requested where it cannot run is an
error, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from etlora.format.backends import Backend, BackendRequest
from etlora.format.errors import BundleError, EtloraError


@dataclass(frozen=True)
class BackendChoice:
    """The backend that runs and one line saying why: the decision on a BackendRequest."""

    backend: Backend
    reason: str

    @property
    def line(self) -> str:
        """'backend: xnnpack (reason)', as `etlora run` and etlora_runner print it."""
        return f"backend: {self.backend.value} ({self.reason})"


def htp_facts() -> dict[str, Any]:
    """What this device offers an HTP program, read now (etlora::gather_htp_facts)."""
    from etlora import _runtime

    return _runtime.htp_facts()


def choose_backend(bundle: str | Path | Any, requested: BackendRequest | str = BackendRequest.AUTO, *,
                   facts: Mapping[str, Any] | None = None) -> BackendChoice:
    """Decide the backend for `bundle` (a bundle directory or an etlora._runtime.Bundle).

    facts: the device facts to decide on (default: htp_facts() of this device); tests fake them.
    Raises EtloraError when `htp` was requested and cannot run, naming what is missing.
    """
    from etlora import _runtime

    requested = BackendRequest.parse(requested)
    if not isinstance(bundle, _runtime.Bundle):
        try:
            bundle = _runtime.Bundle(str(bundle))
        except (ValueError, RuntimeError) as error:
            raise BundleError(str(error)) from None
    try:
        backend, reason = _runtime.choose_backend(
            requested.value, dict(facts) if facts is not None else _runtime.htp_facts(), bundle.htp_program)
    except ValueError as error:
        raise EtloraError(str(error)) from None
    return BackendChoice(Backend(backend), reason)
