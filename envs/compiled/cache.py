"""Keep numba's on-disk kernel cache in step with the kernels' sources.

numba keys a cached function on its own file's modification time only: a batch kernel compiled
with an older version of a helper it inlines (from another module) would load stale, and a process
still running older sources would save kernels that a newer process then loads. So the kernels are
cached in a folder named by a hash of this package's sources (:func:`kernel_cache`): other sources
never share a folder. The folders live in ``__pycache__`` next to the modules, or under
``NUMBA_CACHE_DIR`` when set; folders of other sources untouched for a day are pruned (a process
compiles its kernels in its first minutes, so none is still writing there).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numba

PACKAGE_DIR = Path(__file__).resolve().parent
PREFIX = "defialloc-kernels-"
STALE_AFTER_S = 24 * 3600.0


def sources_hash() -> str:
    """sha1 over this package's module names and sources (sorted by name)."""
    digest = hashlib.sha1()
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_root() -> Path:
    """Where the kernels' cache folders live: ``NUMBA_CACHE_DIR`` or ``__pycache__`` here."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or PACKAGE_DIR / "__pycache__")


def prune_stale(root: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Delete the cache folders of other sources under ``root`` not written for a day; returns
    them (best effort: a folder another process removed or cannot be removed is skipped)."""
    now = time.time() if now is None else now
    removed = []
    for folder in root.glob(f"{PREFIX}*"):
        if folder == keep or not folder.is_dir():
            continue
        try:
            newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=0.0)
            newest = max(newest, folder.stat().st_mtime)
        except OSError:
            continue
        if now - newest > STALE_AFTER_S:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def kernel_cache() -> Iterator[Path]:
    """Inside this block, kernels decorated with ``cache=True`` cache into the folder of the
    current sources (numba reads ``numba.config.CACHE_DIR`` when a kernel is decorated); the
    process's setting is restored after, so other libraries' kernels cache where they did."""
    root = cache_root()
    folder = root / f"{PREFIX}{sources_hash()[:16]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        prune_stale(root, folder)
    except OSError:  # read-only: numba falls back to its own locations (or compiles in memory)
        pass
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(folder)
    try:
        yield folder
    finally:
        numba.config.CACHE_DIR = previous
