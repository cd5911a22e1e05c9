"""etlora's exporter: PEFT LoRA adapters + a Llama foundation -> an ExecuTorch bundle.

Installed as `etlora.export`. Data flow: foundation.py / adapters.py (load and validate) ->
program.py (model.py graph, tagging, lowering) -> adapter_file.py / manifest.py / bundle.py (write).
"""

from .errors import AdapterError, BundleError, EtloraError
from .manifest import Manifest, read_manifest, verify_files

# Loaded on first use: they import torch (seconds), which reading a bundle never needs.
_TORCH_EXPORTS = {
    "ExportOptions": ".bundle",
    "add_adapter": ".bundle",
    "export_bundle": ".bundle",
    "remove_adapter": ".bundle",
    "Backend": ".program",
}


def __getattr__(name: str):
    if name in _TORCH_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_TORCH_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterError",
    "Backend",
    "BundleError",
    "EtloraError",
    "ExportOptions",
    "Manifest",
    "add_adapter",
    "export_bundle",
    "read_manifest",
    "remove_adapter",
    "verify_files",
]
