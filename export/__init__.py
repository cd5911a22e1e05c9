"""etlora's exporter: PEFT LoRA adapters + a Llama foundation -> an ExecuTorch bundle.

Installed as `etlora.export`. Data flow: foundation.py / adapters.py (load and validate) ->
program.py (model.py graph, tagging, lowering) -> adapter_file.py / manifest.py / bundle.py (write).
"""

from importlib import import_module

from .errors import AdapterError, BundleError, EtloraError
from .manifest import Manifest, read_manifest, verify_files

# The exporting half imports torch and ExecuTorch's exir; it loads on first use, so that the
# runtime side (etlora.load reads manifests and errors from here) starts without torch.
_LAZY = {"ExportOptions": ".bundle", "add_adapter": ".bundle", "export_bundle": ".bundle",
         "remove_adapter": ".bundle", "Backend": ".program", "BackendChoice": ".backend_choice",
         "Soc": ".backend_choice"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterError",
    "Backend",
    "BackendChoice",
    "BundleError",
    "EtloraError",
    "ExportOptions",
    "Manifest",
    "add_adapter",
    "export_bundle",
    "read_manifest",
    "remove_adapter",
    "Soc",
    "verify_files",
]
