"""The foundation quantization schemes a manifest may name (foundation.quantization.scheme).

The torch code that quantizes a foundation is the exporter's (etlora.export.quantization); the
names live here so that reading a manifest needs no torch.
"""

from __future__ import annotations

import enum


class QuantScheme(enum.Enum):
    FP32 = "fp32"
    INT8_DYNAMIC_INT4 = "8da4w"  # 8-bit dynamic activations, 4-bit grouped weights
    INT8_DYNAMIC_INT8 = "8da8w"  # 8-bit dynamic activations, 8-bit per-channel weights
