"""Uniswap v2 constant-product pools in floating point, broadcasting over any leading shape.

A pool holds ``reserve_in`` of the token sold and ``reserve_out`` of the token bought; the fee ``fee``
is a fraction of the input (0.003 = 30 bp) that stays in the pool, so ``k = reserve_in * reserve_out``
never decreases. Amounts and reserves are in token units (any consistent unit, e.g. whole tokens);
results match the contract's integer formulas to ~1e-12 relative (the contract's wei rounding is
dropped).

Public functions validate their inputs and raise ``ValueError`` naming the argument, the bad value and
the allowed range. The ``_unchecked`` variants skip validation for the batched simulator's hot path.

The simulator's pools (:class:`defialloc.envs.execution.pools.PoolBook`) hold an asset side in asset units and a
numeraire side in numeraire units for every (fee tier, asset, env); a pool's price is numeraire
reserve / asset reserve (numeraire per asset).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

__all__ = [
    "arbitrage_to_band",
    "check_in_range",
    "fee_terms",
    "get_amount_in",
    "get_amount_out",
    "invariant",
    "marginal_output",
    "marginal_price_after",
    "rescale_depth",
    "spot_price",
]


def check_in_range(
    name: str,
    value: float | np.ndarray,
    low: float = -np.inf,
    high: float = np.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> np.ndarray:
    """Return ``value`` as a float array, or raise ``ValueError`` if any element is outside the range.

    NaN always fails. The message names ``name``, the first bad value (and its index for arrays) and
    the allowed interval, e.g. ``reserve_in must be in (0, inf); got -1.0 at index (2,)``.
    """
    if type(value) is float or type(value) is int:
        lowest = highest = float(value)
        arr = np.asarray(lowest)
    else:
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 0:
            return arr
        # Two reductions instead of elementwise masks (NaN makes min/max NaN, which then fails).
        lowest, highest = float(arr.min()), float(arr.max())
    if (lowest > low if low_open else lowest >= low) and (
        highest < high if high_open else highest <= high
    ):
        return arr
    ok = (arr > low if low_open else arr >= low) & (arr < high if high_open else arr <= high)
    bad_index = tuple(int(i) for i in np.argwhere(~ok)[0])
    bad = arr[bad_index] if arr.ndim else arr
    where = f" at index {bad_index}" if arr.ndim else ""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ValueError(f"{name} must be in {interval}; got {float(bad)!r}{where}")


class FeeTerms(NamedTuple):
    """Fee-derived arrays materialized at the full pool shape (read-only).

    Broadcasting a ``(K,)`` fee against ``(B, N, K)`` reserves costs ~5x a contiguous operation in
    numpy (the inner loop runs over only K elements), so hot-path functions use these instead.
    """

    fee: np.ndarray  # f
    keep: np.ndarray  # g = 1 - f, the share of the input that trades
    inv_keep: np.ndarray  # 1 / g


def _make_fee_terms(fee: np.ndarray, shape: tuple[int, ...]) -> FeeTerms:
    f = np.array(np.broadcast_to(fee, shape), dtype=np.float64, order="C")  # keeps 0-d as 0-d
    g = 1.0 - f
    terms = FeeTerms(f, g, 1.0 / g)
    for arr in terms:
        arr.setflags(write=False)
    return terms


@lru_cache(maxsize=64)
def _cached_fee_terms(
    fee_bytes: bytes, fee_shape: tuple[int, ...], shape: tuple[int, ...]
) -> FeeTerms:
    return _make_fee_terms(np.frombuffer(fee_bytes, dtype=np.float64).reshape(fee_shape), shape)


def fee_terms(fee: np.ndarray | float, shape: tuple[int, ...]) -> FeeTerms:
    """:class:`FeeTerms` of ``fee`` broadcast to ``shape``; cached for small (per-tier) fee arrays."""
    f = np.asarray(fee, dtype=np.float64)
    if f.size <= 64:
        return _cached_fee_terms(f.tobytes(), f.shape, tuple(shape))
    return _make_fee_terms(f, tuple(shape))


def _check_pool(reserve_in: object, reserve_out: object, fee: object) -> tuple[np.ndarray, ...]:
    r_in = check_in_range("reserve_in", reserve_in, 0.0, low_open=True, high_open=True)
    r_out = check_in_range("reserve_out", reserve_out, 0.0, low_open=True, high_open=True)
    f = check_in_range("fee", fee, 0.0, 1.0, high_open=True)
    return r_in, r_out, f


def _amount_out_unchecked(
    amount_in: np.ndarray, reserve_in: np.ndarray, reserve_out: np.ndarray, fee: np.ndarray | float
) -> np.ndarray:
    """:func:`get_amount_out` without validation (hot path)."""
    effective_in = amount_in * (1.0 - fee)
    return effective_in * reserve_out / (reserve_in + effective_in)


def amount_out_keep(
    amount_in: np.ndarray,
    reserve_in: np.ndarray,
    reserve_out: np.ndarray,
    keep: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`_amount_out_unchecked` with ``keep = 1 - fee`` precomputed (same bits), into ``out``.

    Hot path: three full-shape operations on top of the fee product, no temporaries but one.
    """
    effective_in = np.multiply(amount_in, keep)
    out = np.multiply(effective_in, reserve_out, out=out)
    effective_in += reserve_in
    out /= effective_in
    return out


def _amount_in_unchecked(
    amount_out: np.ndarray, reserve_in: np.ndarray, reserve_out: np.ndarray, fee: np.ndarray | float
) -> np.ndarray:
    """:func:`get_amount_in` without validation (hot path)."""
    return reserve_in * amount_out / ((reserve_out - amount_out) * (1.0 - fee))


def get_amount_out(
    amount_in: float | np.ndarray,
    reserve_in: float | np.ndarray,
    reserve_out: float | np.ndarray,
    fee: float | np.ndarray,
) -> np.ndarray:
    """Output of selling ``amount_in`` into the pool: ``a(1-f)R_out / (R_in + a(1-f))``.

    Args:
        amount_in: input amount in input-token units, ``>= 0``.
        reserve_in, reserve_out: pool reserves in token units, ``> 0``.
        fee: fee fraction in ``[0, 1)`` (0.003 for Uniswap v2).

    All arguments broadcast; the result has the broadcast shape, in output-token units.
    """
    a = check_in_range("amount_in", amount_in, 0.0, high_open=True)
    return _amount_out_unchecked(a, *_check_pool(reserve_in, reserve_out, fee))


def get_amount_in(
    amount_out: float | np.ndarray,
    reserve_in: float | np.ndarray,
    reserve_out: float | np.ndarray,
    fee: float | np.ndarray,
) -> np.ndarray:
    """Input needed to receive ``amount_out``: ``R_in * out / ((R_out - out)(1-f))``.

    The inverse of :func:`get_amount_out` (the contract's +1 wei is dropped in float).
    ``amount_out`` must be in ``[0, reserve_out)``: a pool can never be fully drained.
    """
    out = check_in_range("amount_out", amount_out, 0.0, high_open=True)
    r_in, r_out, f = _check_pool(reserve_in, reserve_out, fee)
    too_big = out >= r_out
    if np.any(too_big):
        bad_out, bad_reserve = np.broadcast_arrays(out, r_out)
        idx = tuple(int(i) for i in np.argwhere(np.broadcast_to(too_big, bad_out.shape))[0])
        raise ValueError(
            f"amount_out must be in [0, reserve_out); got amount_out={float(bad_out[idx])!r} "
            f">= reserve_out={float(bad_reserve[idx])!r}"
        )
    return _amount_in_unchecked(out, r_in, r_out, f)


def spot_price(reserve_in: float | np.ndarray, reserve_out: float | np.ndarray) -> np.ndarray:
    """Fee-free spot price ``R_out / R_in`` (output-token units per input-token unit)."""
    r_in = check_in_range("reserve_in", reserve_in, 0.0, low_open=True, high_open=True)
    r_out = check_in_range("reserve_out", reserve_out, 0.0, low_open=True, high_open=True)
    return r_out / r_in


def marginal_price_after(
    amount_in: float | np.ndarray,
    reserve_in: float | np.ndarray,
    reserve_out: float | np.ndarray,
    fee: float | np.ndarray,
) -> np.ndarray:
    """Fee-free spot price ``(R_out - out) / (R_in + a)`` after selling ``amount_in`` (the fee stays in)."""
    a = check_in_range("amount_in", amount_in, 0.0, high_open=True)
    r_in, r_out, f = _check_pool(reserve_in, reserve_out, fee)
    out = _amount_out_unchecked(a, r_in, r_out, f)
    return (r_out - out) / (r_in + a)


def marginal_output(
    amount_in: float | np.ndarray,
    reserve_in: float | np.ndarray,
    reserve_out: float | np.ndarray,
    fee: float | np.ndarray,
) -> np.ndarray:
    """Derivative ``d out / d amount_in = g R_in R_out / (R_in + g a)^2`` with ``g = 1 - fee``.

    Output-token units per input-token unit; at ``a = 0`` it is ``(1 - fee) * spot_price``. The router
    equalizes this across the pools it uses.
    """
    a = check_in_range("amount_in", amount_in, 0.0, high_open=True)
    r_in, r_out, f = _check_pool(reserve_in, reserve_out, fee)
    g = 1.0 - f
    return g * r_in * r_out / (r_in + g * a) ** 2


def invariant(reserve_in: float | np.ndarray, reserve_out: float | np.ndarray) -> np.ndarray:
    """Constant-product invariant ``k = R_in * R_out`` (product of the two token units)."""
    return np.asarray(reserve_in, dtype=np.float64) * np.asarray(reserve_out, dtype=np.float64)


def arbitrage_to_band(
    reserve_asset: np.ndarray,
    reserve_num: np.ndarray,
    market_price: np.ndarray | float,
    fee: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """External arbitrage: one profit-maximizing swap per pool against the market price.

    A pool at price ``P = reserve_num / reserve_asset`` (numeraire per asset) can be arbitraged
    against the market price ``p`` only outside its no-arbitrage band ``[p (1-f), p / (1-f)]``:
    below it the arbitrageur buys the asset from the pool, above it sells the asset into it. Like a
    real arbitrage bot it makes the single swap that maximizes its profit ``p * out(a) - a`` (priced
    at ``p``): ``out'(a) = 1/q`` gives ``a = (sqrt(g q k) - R_in) / g`` (``g = 1 - f``; ``q`` the
    market price of the output in input units). The fee stays in the pool, so ``k`` never decreases.

    Where the pool ends (documented equivalent of "back within the band"): with
    ``s = sqrt(g p / P)`` (cheap pool) the new price is ``P' = p (1 - f / s)``, and with
    ``s = sqrt(g P / p)`` (dear pool) ``P' = p / (1 - f / s)``: inside the band, on its edge for an
    infinitesimal dislocation (``s -> 1``) and closer to ``p`` the larger the dislocation. (Trading in
    infinitesimal steps would stop exactly on the edge and earn slightly less.) Pools inside the band
    are untouched.

    In multipliers: the input reserve is scaled by ``u = 1 + (s - 1) / g`` and the output reserve
    divided by ``s``, with ``s = sqrt(g z)``, ``z = max(P/p, p/P)``; no trade when ``g z <= 1``.

    Args:
        reserve_asset, reserve_num: reserves, e.g. ``(B, N, K)``, ``> 0``.
        market_price: market price in numeraire per asset, broadcastable (e.g. ``(B, N, 1)``), ``> 0``.
        fee: fee fraction per pool, broadcastable (e.g. ``(K,)``), in ``[0, 1)``.

    Returns:
        ``(reserve_asset, reserve_num, arb_profit_num)``: new reserves (broadcast shape) and the
        arbitrageur's profit valued at the market price, in numeraire units (``>= 0``).

    Not validated (hot path); use :func:`check_in_range` on untrusted inputs.
    """
    if np.ndim(reserve_asset) == 0 and np.ndim(reserve_num) == 0:
        # in-place ufuncs need arrays; numpy turns 0-d results into scalars
        result = arbitrage_to_band(
            np.reshape(reserve_asset, (1,)), np.reshape(reserve_num, (1,)), market_price, fee
        )
        return tuple(np.reshape(part, np.shape(part)[1:]) for part in result)  # type: ignore[return-value]
    if reserve_asset.shape == reserve_num.shape:
        shape = reserve_asset.shape
    else:
        shape = np.broadcast_shapes(reserve_asset.shape, reserve_num.shape)
    asset_value = reserve_asset * market_price  # numeraire units
    asset_mult, num_mult = band_multipliers(asset_value, reserve_num, fee_terms(fee, shape))
    new_asset = reserve_asset * asset_mult
    new_num = reserve_num * num_mult
    # profit = (R_a - R_a') p + (R_n - R_n'), written without a second broadcast of p
    profit_num = asset_value * (1.0 - asset_mult)
    profit_num += reserve_num * (1.0 - num_mult)
    return new_asset, new_num, profit_num


def band_multipliers(
    asset_value: np.ndarray,
    reserve_num: np.ndarray,
    terms: FeeTerms,
    one: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Reserve multipliers of :func:`arbitrage_to_band`'s swap, stacked ``[asset, numeraire]`` (hot path).

    Args:
        asset_value: asset reserves valued at the market price (numeraire units).
        reserve_num: numeraire reserves, broadcastable with ``asset_value``.
        terms: fee terms at the pools' shape.
        one: ``1.0``, or an all-ones array of the result shape (``np.maximum`` with a Python scalar
            runs ~2.5x slower than with an array).

    Returns:
        ``(2, ...)`` new array: ``[0]`` multiplies the asset reserves, ``[1]`` the numeraire
        reserves; both are exactly 1 for pools inside their band. Not validated.
    """
    ratio = reserve_num / asset_value  # P / p
    s = np.divide(1.0, ratio)
    np.maximum(ratio, s, out=s)
    s *= terms.keep
    np.maximum(s, one, out=s)
    np.sqrt(s, out=s)
    # A cheap pool's asset side shrinks by s and its numeraire side grows by u = 1 + (s - 1) / g;
    # a dear pool the other way round. As 1/s <= 1 <= u, each side's multiplier is
    # max(1/s, u * grows) with grows 1.0 on the side that grows, else 0.0 (exact: u * 1 = u,
    # u * 0 = 0): branch-free, where np.where on the side, a coin flip per pool, mispredicts.
    mult = np.empty((2, *s.shape))
    np.greater_equal(ratio, 1.0, out=mult[0])  # dear: the asset side grows
    np.less(ratio, 1.0, out=mult[1])  # cheap: the numeraire side grows
    u = np.subtract(s, 1.0, out=ratio)
    u *= terms.inv_keep
    u += 1.0
    mult *= u
    np.divide(1.0, s, out=s)
    return np.maximum(mult, s, out=mult)


def rescale_depth(
    reserve_asset: np.ndarray, reserve_num: np.ndarray, target_liquidity: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Scale both reserves so ``sqrt(k)`` equals ``target_liquidity``, keeping the pool price.

    Models liquidity providers adding or removing liquidity pro rata as the regime changes depth.
    ``target_liquidity`` is ``sqrt(asset units * numeraire units)``, broadcastable, ``> 0``.
    Returns the new ``(reserve_asset, reserve_num)``. Not validated (hot path).
    """
    scale = target_liquidity / np.sqrt(reserve_asset * reserve_num)
    return reserve_asset * scale, reserve_num * scale
