"""`--backend {auto,xnnpack,htp}` and `--soc`: which programs a bundle gets, decided before any
export work (torch-free).

Every bundle holds the XNNPACK program (model.pte), which runs on any CPU; `htp` adds an HTP
program beside it, and `auto` adds one when a usable QNN SDK is found (qnn_sdk.py). So `auto`
never fails for want of an SDK, and `htp` fails at once, with what was looked for, instead of
after minutes of lowering.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import EtloraError
from .qnn_sdk import QnnSdkCheck, check_qnn_sdk


class BackendChoice(enum.Enum):
    AUTO = "auto"  # HTP program too when a usable QNN SDK is found
    XNNPACK = "xnnpack"  # model.pte only
    HTP = "htp"  # model.pte and model_htp.pte; an error without a usable QNN SDK


class Soc(enum.Enum):
    """Snapdragon SoCs an HTP program can be compiled for (names as ExecuTorch's QcomChipset)."""

    SM8550 = "SM8550"  # Snapdragon 8 Gen 2, HTP v73
    SM8650 = "SM8650"  # Snapdragon 8 Gen 3, HTP v75
    SM8750 = "SM8750"  # Snapdragon 8 Elite, HTP v79


DEFAULT_SOC = Soc.SM8650


@dataclass(frozen=True)
class BackendDecision:
    choice: BackendChoice
    htp: bool  # an HTP program is built beside model.pte
    soc: Soc
    sdk: QnnSdkCheck | None  # None when not looked for (--backend xnnpack)

    @property
    def line(self) -> str:
        """One line for people, e.g. 'backend auto: xnnpack (no QNN SDK: QNN_SDK_ROOT not set)'."""
        if self.sdk is None:
            return f"backend {self.choice.value}: xnnpack"
        programs = f"xnnpack + htp for {self.soc.value}" if self.htp else "xnnpack"
        return f"backend {self.choice.value}: {programs} ({self.sdk.short()})"


def decide_backend(choice: BackendChoice, soc: Soc = DEFAULT_SOC, sdk: QnnSdkCheck | None = None) -> BackendDecision:
    """`sdk`: the QNN SDK check to decide on (default: this process's environment)."""
    if choice is BackendChoice.XNNPACK:
        return BackendDecision(choice, htp=False, soc=soc, sdk=None)
    sdk = sdk if sdk is not None else check_qnn_sdk()
    if choice is BackendChoice.HTP and not sdk.found:
        raise EtloraError(f"--backend htp: {sdk.message()}")
    return BackendDecision(choice, htp=sdk.found, soc=soc, sdk=sdk)
