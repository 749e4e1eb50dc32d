"""Progress output that fits its medium: a tqdm bar on a terminal, a plain line now and then elsewhere.

A tqdm bar redraws itself with carriage returns; written into a pipe or a CI log that is one line of
hundreds of frames. :func:`progress_bar` returns tqdm only when the stream is a terminal; otherwise a
:class:`LineProgress` that prints one complete line (``backtest: 1,200/5,000 steps (24%), 12 s,
equal_weight``) at most every ``interval_s`` seconds, and one at the end. tqdm stays for the
terminal (a well-kept library); the line printer is a few lines written here because tqdm has no
mode that prints whole lines at a minimum interval.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: seconds between two progress lines outside a terminal
LINE_INTERVAL_S = 10.0


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is an interactive terminal."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class NullProgress:
    """Progress that prints nothing (``progress=False``)."""

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, text: str) -> None:
        return None

    def close(self) -> None:
        return None


class LineProgress:
    """Whole lines, at most one per ``interval_s`` seconds (plus the final one), no ``\\r``.

    Args:
        total: units of work (e.g. steps).
        desc: what is progressing (``"backtest"``).
        unit: the unit's name (plural ``s`` is added).
        stream: where lines go (default stderr).
        interval_s: least seconds between two lines.
        clock: monotonic seconds (a fake one in tests).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "step",
        stream: TextIO | None = None,
        interval_s: float = LINE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.stream = stream or sys.stderr
        self.interval_s, self.clock = float(interval_s), clock
        self.n = 0
        self.postfix = ""
        self.start = clock()
        self.last = self.start
        self.closed = False

    def _line(self) -> str:
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        elapsed = self.clock() - self.start
        return f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}s{share}, {elapsed:.0f} s{extra}"

    def _emit(self) -> None:
        print(self._line(), file=self.stream, flush=True)
        self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if self.clock() - self.last >= self.interval_s:
            self._emit()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed and self.total:
            self._emit()
        self.closed = True


def progress_bar(
    total: int,
    desc: str,
    *,
    enabled: bool = True,
    unit: str = "step",
    stream: TextIO | None = None,
    interval_s: float = LINE_INTERVAL_S,
) -> Any:
    """tqdm on a terminal, :class:`LineProgress` elsewhere, :class:`NullProgress` when disabled."""
    if not enabled:
        return NullProgress()
    stream = stream or sys.stderr
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream)
    return LineProgress(total, desc, unit, stream, interval_s)
