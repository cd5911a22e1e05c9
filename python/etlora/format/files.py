"""File helpers shared by every writer: nothing half-written is ever left under a final name."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_mode(directory: bool) -> int:
    """Permissions a plain open()/mkdir() would give, since mkstemp/mkdtemp use 0600/0700."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, _default_mode(directory=False))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def staged_directory(final: Path):
    """Yield a temporary directory that becomes `final` only if the block completes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        staging.chmod(_default_mode(directory=True))
        yield staging
        if final.exists():
            # One atomic swap: at every instant `final` is the old bundle or the new one.
            _exchange(staging, final)
            shutil.rmtree(staging, ignore_errors=True)  # now the old bundle
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _exchange(first: Path, second: Path) -> None:
    """Swap two directory entries atomically (Linux renameat2 RENAME_EXCHANGE)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None or renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) != 0:
        error = ctypes.get_errno() if renameat2 is not None else 0
        raise OSError(error, f"cannot swap {first} and {second} atomically ({os.strerror(error) if error else 'no renameat2'}); "
                             "hint: a file system without RENAME_EXCHANGE, remove the old bundle first")


@contextmanager
def bundle_lock(bundle_dir: Path):
    """Exclusive lock on a bundle directory for a read-modify-write of its manifest.

    Two add-adapter runs at once then both land, one after the other, instead of the second
    rewriting the manifest it read before the first finished. flock on the directory itself: no
    lock file appears in the bundle, and the kernel drops the lock if the process dies.
    """
    import fcntl

    descriptor = os.open(bundle_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
