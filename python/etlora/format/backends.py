"""Backend names, as the C++ runtime spells them (runtime_cpp/include/etlora/htp_probe.h).

`BackendRequest` is what a user asks for (auto | xnnpack | htp, the `--backend` flags of export and
run), `Backend` is what a program is lowered for and what runs (xnnpack | htp, the manifest's
program.backend), and the decision between them is etlora.backend.BackendChoice (backend + reason).
`Soc` names the Snapdragon SoCs an HTP program can be compiled for (the manifest's htp_program.soc).
"""

from __future__ import annotations

import enum

from .errors import EtloraError


class BackendRequest(enum.Enum):
    """What a user asks for. At export: which programs the bundle gets; at run: which one runs."""

    AUTO = "auto"  # export: an HTP program too when a usable QNN SDK is found; run: HTP when it can run here
    XNNPACK = "xnnpack"  # model.pte only, on the CPU
    HTP = "htp"  # the HTP program too (export) or only (run); an error when that cannot be done

    @classmethod
    def parse(cls, value: BackendRequest | str) -> BackendRequest:
        if isinstance(value, BackendRequest):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(request.value) for request in cls)
            raise EtloraError(f"backend: expected one of {choices}, received {value!r}") from None


class Backend(enum.Enum):
    """The delegate a program is lowered for, and so the one that runs it."""

    XNNPACK = "xnnpack"  # model.pte, on any CPU
    HTP = "htp"  # Qualcomm Hexagon NPU through ExecuTorch's QNN backend (model_htp.pte)


class Soc(enum.Enum):
    """Snapdragon SoCs an HTP program can be compiled for (names as ExecuTorch's QcomChipset)."""

    SM8550 = "SM8550"  # Snapdragon 8 Gen 2, HTP v73
    SM8650 = "SM8650"  # Snapdragon 8 Gen 3, HTP v75
    SM8750 = "SM8750"  # Snapdragon 8 Elite, HTP v79


DEFAULT_SOC = Soc.SM8650
