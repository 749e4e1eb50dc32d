"""Keep numba's on-disk kernel cache in step with the kernels' sources.

numba keys a cached function on its own file's modification time only: a batch kernel compiled
with an older version of a helper it inlines (from another module) would load stale. Before the
kernels are imported, :func:`invalidate_stale_cache` hashes every module of this package and, when
the hash differs from the one stamped next to the cache, deletes the cached kernels so they
compile afresh (once). The cache is ``__pycache__`` next to the modules, or ``NUMBA_CACHE_DIR``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
STAMP = "defialloc-kernels.sha1"


def sources_hash() -> str:
    """sha1 over this package's module names and sources (sorted by name)."""
    digest = hashlib.sha1()
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_dirs() -> list[Path]:
    """Where numba may keep this package's cached kernels."""
    dirs = [PACKAGE_DIR / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        dirs += list(Path(os.environ["NUMBA_CACHE_DIR"]).glob("**/compiled"))
    return dirs


def invalidate_stale_cache() -> bool:
    """Delete cached kernels compiled from other sources; returns whether it deleted any."""
    current = sources_hash()
    deleted = False
    for folder in cache_dirs():
        stamp = folder / STAMP
        try:
            if stamp.read_text() == current:
                continue
        except OSError:
            pass
        for cached in [*folder.glob("*.nbi"), *folder.glob("*.nbc")]:
            try:
                cached.unlink()
                deleted = True
            except OSError:  # another process got there first, or a read-only install
                pass
        try:
            folder.mkdir(parents=True, exist_ok=True)
            stamp.write_text(current)
        except OSError:  # read-only: numba then caches elsewhere or compiles in memory
            pass
    return deleted
