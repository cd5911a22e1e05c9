"""The foundation quantization schemes a manifest may name (foundation.quantization.scheme).

The torch code that quantizes a foundation is the exporter's (etlora.export.quantization); the
names live here so that reading a manifest needs no torch.
"""

from __future__ import annotations

import enum

from .errors import EtloraError


class QuantScheme(enum.Enum):
    FP32 = "fp32"
    INT8_DYNAMIC_INT4 = "8da4w"  # 8-bit dynamic activations, 4-bit grouped weights
    INT8_DYNAMIC_INT8 = "8da8w"  # 8-bit dynamic activations, 8-bit per-channel weights

    @staticmethod
    def parse(text: str, origin: str = "--quantize") -> "QuantScheme":
        for scheme in QuantScheme:
            if scheme.value == text:
                return scheme
        known = ", ".join(scheme.value for scheme in QuantScheme)
        raise EtloraError(f"{origin}: expected one of {known}, received {text!r}")
