"""etlora's exporter: PEFT LoRA adapters + a Llama foundation -> an ExecuTorch bundle (needs torch).

Installed as `etlora.export`. Data flow: foundation.py / adapters.py (load and validate) ->
program.py (model.py graph, tagging, lowering) -> adapter_file.py / bundle.py (write). What the
files are, and their records, errors and readers, is etlora.format's, which this package imports
and the device side reads without it.
"""

from .bundle import ExportOptions, add_adapter, export_bundle, remove_adapter

__all__ = ["ExportOptions", "add_adapter", "export_bundle", "remove_adapter"]
