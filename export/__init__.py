"""etlora's exporter: PEFT LoRA adapters + a Llama foundation -> an ExecuTorch bundle.

Installed as `etlora.export`. Data flow: foundation.py / adapters.py (load and validate) ->
program.py (model.py graph, tagging, lowering) -> adapter_file.py / manifest.py / bundle.py (write).
"""

from .bundle import ExportOptions, add_adapter, export_bundle, remove_adapter
from .errors import AdapterError, BundleError, EtloraError
from .manifest import Manifest, read_manifest, verify_files
from .program import Backend

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
