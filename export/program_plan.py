"""`--backend {auto,xnnpack,htp}` and `--soc` at export: which programs a bundle gets, decided
before any export work (torch-free).

Every bundle holds the XNNPACK program (model.pte), which runs on any CPU; `htp` adds an HTP
program beside it, and `auto` adds one when a usable QNN SDK is found (qnn_sdk.py). So `auto`
never fails for want of an SDK, and `htp` fails at once, with what was looked for, instead of
after minutes of lowering.
"""

from __future__ import annotations

from dataclasses import dataclass

from etlora.format.backends import DEFAULT_SOC, BackendRequest, Soc
from etlora.format.errors import EtloraError

from .qnn_sdk import QnnSdkCheck, check_qnn_sdk


@dataclass(frozen=True)
class ProgramPlan:
    request: BackendRequest
    htp: bool  # an HTP program is built beside model.pte
    soc: Soc
    sdk: QnnSdkCheck | None  # None when not looked for (--backend xnnpack)

    @property
    def line(self) -> str:
        """One line for people, e.g. 'backend auto: xnnpack (no QNN SDK: QNN_SDK_ROOT not set)'."""
        if self.sdk is None:
            return f"backend {self.request.value}: xnnpack"
        programs = f"xnnpack + htp for {self.soc.value}" if self.htp else "xnnpack"
        return f"backend {self.request.value}: {programs} ({self.sdk.short()})"


def plan_programs(request: BackendRequest, soc: Soc = DEFAULT_SOC, sdk: QnnSdkCheck | None = None) -> ProgramPlan:
    """`sdk`: the QNN SDK check to decide on (default: this process's environment)."""
    if request is BackendRequest.XNNPACK:
        return ProgramPlan(request, htp=False, soc=soc, sdk=None)
    sdk = sdk if sdk is not None else check_qnn_sdk()
    if request is BackendRequest.HTP and not sdk.found:
        raise EtloraError(f"--backend htp: {sdk.message()}")
    return ProgramPlan(request, htp=sdk.found, soc=soc, sdk=sdk)
