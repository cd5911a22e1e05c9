"""etlora: one foundation model, many LoRA adapters, on the stock ExecuTorch runtime.

    import etlora
    session = etlora.load("bundle/", adapters={"support": 1.0})
    logits = session.logits([1, 2, 3])
    session.set_adapters({"legal": 0.5})
"""

from etlora.export.errors import AdapterError, BundleError, EtloraError
from etlora.session import Session, load

__all__ = ["AdapterError", "BundleError", "EtloraError", "Session", "load"]
