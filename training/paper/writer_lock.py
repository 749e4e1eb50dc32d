"""One writer per paper ledger: an exclusive ``flock`` on ``<ledger>.lock`` (Linux, macOS)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class WriterLock:
    """One writer per ledger: an exclusive ``flock`` on ``<ledger>.lock`` holding the writer's pid.

    SQLite alone would let a second paper process append the same bars' decisions in between the
    first one's (its transactions refuse a wrong bar index only after the work is done); the lock
    refuses the second process up front with who holds it. The kernel drops the lock when the
    holder exits, killed or not, so a stale lock file never blocks a restart.
    """

    def __init__(self, ledger: Path) -> None:
        self.path = ledger.with_name(ledger.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"ledger {ledger} is being written by another paper process (pid {holder}); a "
                "ledger has one writer: let that one run (watch it with `defialloc paper-view "
                f"--ledger {ledger}`), or stop it and rerun this command to resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
