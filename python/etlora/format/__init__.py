"""The bundle format, torch-free: what a bundle's files are and how they are read and written safely.

docs/bundle-format.md is this package's spec. Both sides import it: the exporter (etlora.export,
which needs torch) writes bundles with it, and the device side (etlora.load, `etlora inspect`,
`etlora report`) reads them with it and the C++ runtime, never with the exporter.

Modules: errors (the package's exceptions), files (atomic writes, the bundle lock), ptd_reader
(bounds-checked FlatTensor .ptd reader), adapter_format (adapter file keys, dtypes, reader and
program check), manifest (manifest.json records, reader, writer), quantization (scheme names),
backends (BackendRequest, Backend, Soc).
"""

from .adapter_format import AdapterDtype
from .backends import DEFAULT_SOC, Backend, BackendRequest, Soc
from .errors import AdapterError, BundleError, EtloraError
from .manifest import Manifest, read_manifest, verify_files
from .quantization import QuantScheme

__all__ = [
    "DEFAULT_SOC", "AdapterDtype", "AdapterError", "Backend", "BackendRequest", "BundleError", "EtloraError",
    "Manifest", "QuantScheme", "Soc", "read_manifest", "verify_files",
]
