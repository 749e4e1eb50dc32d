"""What a live venue feed can refuse, and retries with exponential backoff for transient failures.

Every refusal is a ``ValueError`` subclass (the CLI prints its message and exits 2, nothing of the
bar is written) whose message names the venue, the market, the bar and what was expected.
:func:`call_with_retries` takes the clock and the sleep as arguments, so a test measures the
backoff on a fake clock instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class FeedError(ValueError):
    """A venue feed cannot deliver a usable bar."""


class UnknownExchange(FeedError):
    """``--feed ccxt:<name>`` names an exchange ccxt does not have."""


class UnknownSymbol(FeedError):
    """The exchange lists no market for an asset the policy trades."""


class StaleCandle(FeedError):
    """The venue's newest candle is older than a bar that closed long enough ago."""


class GapInVenueData(FeedError):
    """The venue has later candles but not the one a bar needs."""


class MissingFunding(FeedError):
    """A hedged policy needs a perp funding rate (or mark) the venue does not give for a bar."""


class VenueUnreachable(FeedError):
    """The venue did not answer after every retry."""


@dataclass(frozen=True)
class Backoff:
    """``tries`` attempts; after failure ``k`` (0-based) wait ``min(first_seconds x factor^k,
    max_seconds)``: with the defaults 1, 2, 4, 8 s between five tries (15 s in all)."""

    tries: int = 5
    first_seconds: float = 1.0
    factor: float = 2.0
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.tries < 1 or self.first_seconds < 0 or self.factor < 1 or self.max_seconds < 0:
            raise ValueError(
                f"backoff tries={self.tries} must be >= 1, first_seconds={self.first_seconds} and "
                f"max_seconds={self.max_seconds} >= 0, factor={self.factor} >= 1"
            )

    def delays(self) -> list[float]:
        """The waits between the tries, in seconds (``tries - 1`` of them)."""
        return [
            min(self.first_seconds * self.factor**k, self.max_seconds)
            for k in range(self.tries - 1)
        ]


def call_with_retries(
    fn: Callable[[], T],
    what: str,
    backoff: Backoff,
    transient: tuple[type[BaseException], ...],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> T:
    """``fn()``, retried after the ``transient`` errors with ``backoff``'s waits; after the last
    try a :class:`VenueUnreachable` says what was asked, how often, for how long and the last error."""
    started = clock()
    delays = backoff.delays()
    last: BaseException | None = None
    for attempt in range(backoff.tries):
        try:
            return fn()
        except transient as exc:
            last = exc
            if attempt < len(delays):
                sleep(delays[attempt])
    waited = clock() - started
    cause = getattr(last, "__cause__", None)
    detail = f"{type(last).__name__}: {last}" + (
        f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    )
    raise VenueUnreachable(
        f"{what}: no answer after {backoff.tries} tries over {waited:.0f} s (waits "
        f"{', '.join(f'{d:g}' for d in delays)} s); last error: {detail}. "
        "Check the network and the venue's status, then rerun the same command to resume"
    )
