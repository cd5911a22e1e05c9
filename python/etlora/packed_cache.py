"""Where a bundle's packed cache file lives, and what a load did with it.

XNNPACK repacks the foundation weights at every load; with a packed cache file the first start writes
its packed copy and later starts map it instead (runtime_cpp/README.md). The file lives in a cache
folder, `<bundle>/.etlora-cache/` unless told otherwise; it is not part of the bundle and may be
deleted at any time (docs/bundle-format.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

CACHE_DIR_NAME = ".etlora-cache"

log = logging.getLogger("etlora")


class PackedCacheResidency(Enum):
    """Where the packed weights live after a load that used the file.

    COPY (default) moves them from the file's mapping into private memory at the same addresses:
    on the machine we benchmark on, XNNPACK decodes about 20% slower from mapped page-cache pages
    (docs/results/), and the copy costs about 0.2 s per start. MAP keeps the mapping, which
    shares the pages with the page cache: less memory at start-up, for devices where mapped pages
    read as fast as private ones.
    """

    COPY = "copy"
    MAP = "map"


@dataclass(frozen=True)
class PackedCacheInfo:
    """How one load used the packed cache file, as measured by the C++ runtime.

    source: off | mapped (existing file mapped, nothing packed) | written (packed, file written) |
    shared (another live session of this process had it) | memory-only (packed into memory; `note`
    says why the file was not used). The backend reports no hit/miss counters, so there are none.
    """

    path: str
    source: str
    file_bytes: int
    file_entries: int
    mapped_bytes: int  # bytes of the file the backend mapped for the load
    copied_bytes: int  # of those, moved into private memory (residency COPY); 0 when kept mapped
    copy_seconds: float  # of load_seconds: that copy
    load_seconds: float
    check_seconds: float  # of load_seconds: footer and checksum check of an existing file
    check_hashed: bool  # whether that check read and hashed the bytes (file changed since written)
    note: str

    @property
    def from_file(self) -> bool:
        return self.source in ("mapped", "shared")

    @staticmethod
    def off(note: str = "") -> "PackedCacheInfo":
        """No packed cache file in play (packed_cache=False, or a program XNNPACK does not run)."""
        return PackedCacheInfo("", "off", 0, 0, 0, 0, 0.0, 0.0, 0.0, False, note)


def packed_cache_path(bundle_dir: str | Path, foundation_weights_id: str,
                      cache_dir: str | Path | None = None) -> Path | None:
    """The packed cache file for this foundation, runtime and CPU, or None (one warning) when the folder
    is unusable. The rule lives in the C++ runtime (etlora::packed_cache_path), shared with the runner."""
    from etlora import _runtime

    try:
        return Path(_runtime.packed_cache_path(str(bundle_dir), str(cache_dir or ""), foundation_weights_id))
    except ValueError as error:
        log.warning("etlora: packed cache off: %s", error)
        return None
