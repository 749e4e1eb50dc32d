"""What the options venue shows: the options' part of the protocol block and a policy's view.

Functions of an :class:`defialloc.envs.option_book.OptionBook` at flat decision time ``now`` (envs/indexing.py)
with the index at ``price`` ``(B, N)`` USD and the spot ``units`` ``(B, N)`` held.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.indexing import gather_at
from defialloc.envs.option_book import OptionBook


def option_observation(
    book: OptionBook, spot_units: np.ndarray, now: np.ndarray, price: np.ndarray
) -> np.ndarray:
    """``(B, 5N)`` the options' part of the protocol block: at-the-money implied vol of the
    listed tenor nearest 30 days, call share, put share, and the call's and the put's days to
    expiry / 30 (0 for empty slots); unlisted assets read 0."""
    tenor = book.tenor_steps[
        int(np.argmin(np.abs(book.tenor_steps * book.surface.step_days - 30.0)))
    ]
    regime = gather_at(book.regime, now)
    iv = book.surface.atm_vol(book.table(), regime, gather_at(book.h_next, now), int(tenor))
    calls, puts = book.shares(spot_units)
    t_index = now % book.length
    days = np.where(book.units != 0.0, book.expiry - t_index[:, None, None], 0) * (
        book.surface.step_days / 30.0
    )
    block = np.concatenate([iv, calls, puts, days[..., 0], days[..., 1]], axis=1)
    return block * np.tile(book.listed, 5)


def option_view(
    book: OptionBook, spot_units: np.ndarray, now: np.ndarray, price: np.ndarray
) -> dict[str, np.ndarray]:
    """What a policy may read of the venue at decision time (``MarketView.options``).

    Positions: ``call_units`` / ``put_units`` ``(B, N)`` (signed), ``call_share`` /
    ``put_share`` (over the held units), ``call_delta`` / ``put_delta`` (per unit, 0 without a
    contract), ``call_days`` / ``put_days`` (days to expiry, 0 without). The chain of every
    listed contract as it would open now, ``(B, N, S, T)`` over strikes x tenors:
    ``chain_call_mid`` / ``chain_put_mid`` (USD per unit), ``chain_call_delta`` /
    ``chain_put_delta``, ``chain_iv`` (the calls' implied vol; the puts' is the same).
    Plus ``listed`` ``(N,)`` (1.0 where options are listed)."""
    b, n = book.n_envs, book.n_assets
    n_s, n_t = book.moneyness.size, book.tenor_steps.size
    t_years = book.tenor_steps / book.surface.steps_per_year
    forward = price[..., None] * np.exp(book.params.rate * t_years)  # (B, N, T)
    strike = book.moneyness[:, None] * forward[:, :, None, :]  # (B, N, S, T)
    steps = np.broadcast_to(book.tenor_steps, (b, n, n_s, n_t))
    regime = gather_at(book.regime, now)
    h = gather_at(book.h_next, now)
    out: dict[str, np.ndarray] = {}
    for kind, is_call in (("call", True), ("put", False)):
        q = book.surface.quote(
            book.table(), regime, h, price, strike.reshape(b, n, -1),
            steps.reshape(b, n, -1), is_call,
        )  # fmt: skip
        g = book.surface.spot_greeks(q, strike.reshape(b, n, -1), is_call)
        out[f"chain_{kind}_mid"] = q.mid.reshape(b, n, n_s, n_t)
        out[f"chain_{kind}_delta"] = g.delta.reshape(b, n, n_s, n_t)
        out["chain_iv"] = q.vol.reshape(b, n, n_s, n_t)
    calls, puts = book.shares(spot_units)
    days = np.where(book.units != 0.0, book.expiry - (now % book.length)[:, None, None], 0)
    days = days * book.surface.step_days
    out.update(
        call_units=book.units[..., 0].copy(),
        put_units=book.units[..., 1].copy(),
        call_share=calls,
        put_share=puts,
        call_delta=book.unit_greeks[..., 0, 0].copy(),
        put_delta=book.unit_greeks[..., 1, 0].copy(),
        call_days=days[..., 0],
        put_days=days[..., 1],
        listed=book.listed.astype(np.float64),
    )
    return out


def option_observation_names(asset_names: tuple[str, ...]) -> list[str]:
    """Names of :meth:`observation`'s entries."""
    return [
        f"{kind}_{a}"
        for kind in ("atm_iv_30d", "call_share", "put_share", "call_days_30", "put_days_30")
        for a in asset_names
    ]
