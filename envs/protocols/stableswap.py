"""Curve StableSwap invariant for ``n`` coins in floating point, vectorized over a leading batch axis.

Invariant (balances ``x_1..x_n`` in a common unit, e.g. USD-pegged coins in whole-coin units;
invariant ``D`` in the same unit; ``Ann = A n``):

    Ann sum(x) + D = Ann D + D^(n+1) / (n^n prod(x))

``A`` is the amplification *as the contracts store and report it* (``A()``), which is the
whitepaper's ``A`` times ``n^(n-1)``; the whitepaper writes the same invariant as
``A_wp n^n sum(x) + D = A_wp D n^n + D^(n+1) / (n^n prod(x))``. The reference checks (3 coins,
1M each, 1e5 in -> 99,900.110864 at A = 100) use the contract convention.

The curve is constant-sum (price 1) near balance and tends to constant product as the pool empties
on one side; a larger ``A`` keeps the price near 1 over a wider range. Both solvers follow the
Curve 3pool contract (Newton iterations from ``D = sum(x)`` and ``y = D``), in float; they iterate
until every batch element has converged to ~1e-14 relative, at most ``MAX_ITERATIONS`` times (the
contract's 255).

Shapes: balances ``x`` are ``(..., n)``; ``A``, ``dx`` and results broadcast over ``(...)``.
Coin indices ``i``, ``j`` are Python ints shared by the batch.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.protocols.amm import check_in_range

__all__ = ["MAX_AMPLIFICATION", "MAX_ITERATIONS", "get_D", "get_dy", "get_y"]

MAX_ITERATIONS = 255
MAX_AMPLIFICATION = 1e6  # Curve's MAX_A
_RTOL = 1e-14


def _check_balances(x: object) -> np.ndarray:
    balances = check_in_range("x", x, 0.0, low_open=True, high_open=True)
    if balances.ndim == 0 or balances.shape[-1] < 2:
        raise ValueError(
            f"x must have a trailing coin axis of length n >= 2; got shape {balances.shape}"
        )
    return balances


def _check_amplification(amplification: object) -> np.ndarray:
    return check_in_range("A", amplification, 1.0, MAX_AMPLIFICATION)


def _check_index(name: str, index: object, n_coins: int) -> int:
    if (
        isinstance(index, bool)
        or not isinstance(index, int | np.integer)
        or not 0 <= index < n_coins
    ):
        raise ValueError(f"{name} must be an int in [0, {n_coins - 1}]; got {index!r}")
    return int(index)


def _get_d_unchecked(x: np.ndarray, amplification: np.ndarray) -> np.ndarray:
    n_coins = x.shape[-1]
    total = x.sum(-1)
    ann = amplification * n_coins
    d = total.copy()
    for _ in range(MAX_ITERATIONS):
        # D_P = D^(n+1) / (n^n prod x), as a product of ratios so it cannot overflow
        d_p = d * np.prod(d[..., None] / (n_coins * x), axis=-1)
        d_prev = d
        d = (ann * total + n_coins * d_p) * d / ((ann - 1.0) * d + (n_coins + 1) * d_p)
        if np.all(np.abs(d - d_prev) <= _RTOL * d):
            return d
    raise RuntimeError(
        f"get_D did not converge in {MAX_ITERATIONS} Newton iterations (x={x!r}, A={amplification!r})"
    )


def get_D(x: np.ndarray, A: float | np.ndarray) -> np.ndarray:  # noqa: N802, N803 (Curve's names)
    """Invariant ``D`` of pools with balances ``x`` ``(..., n)`` (``> 0``) and amplification ``A``.

    ``A`` is a scalar or ``(...)``, in ``[1, 1e6]``. Returns ``(...)`` in balance units; a balanced
    pool has ``D = sum(x)``.
    """
    balances = _check_balances(x)
    return _get_d_unchecked(balances, _check_amplification(A))


def _get_y_unchecked(
    i: int, j: int, x_new_i: np.ndarray, x: np.ndarray, amplification: np.ndarray
) -> np.ndarray:
    n_coins = x.shape[-1]
    d = _get_d_unchecked(x, amplification)
    ann = amplification * n_coins
    others = np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, np.shape(x_new_i) + (1,))))
    others[..., i] = x_new_i
    others = np.delete(others, j, axis=-1)
    # c = D^(n+1) / (n^n prod_{k != j} x_k * Ann * n), b = S' + D / Ann
    c = d * np.prod(d[..., None] / (n_coins * others), axis=-1) * d / (ann * n_coins)
    b = others.sum(-1) + d / ann
    y = np.broadcast_to(d, c.shape).copy()
    for _ in range(MAX_ITERATIONS):
        y_prev = y
        y = (y * y + c) / (2.0 * y + b - d)
        if np.all(np.abs(y - y_prev) <= _RTOL * y):
            return y
    raise RuntimeError(f"get_y did not converge in {MAX_ITERATIONS} Newton iterations")


def _check_pair(x: np.ndarray, i: int, j: int) -> tuple[np.ndarray, int, int]:
    """Balances ``(..., n)`` and two distinct coin indices of a swap, checked."""
    balances = _check_balances(x)
    n_coins = balances.shape[-1]
    i = _check_index("i", i, n_coins)
    j = _check_index("j", j, n_coins)
    if i == j:
        raise ValueError(f"i and j must be different coins; got i = j = {i}")
    return balances, i, j


def get_y(
    i: int, j: int, x_new_i: float | np.ndarray, x: np.ndarray, A: float | np.ndarray
) -> np.ndarray:  # noqa: N803
    """Balance of coin ``j`` that keeps ``D`` unchanged when coin ``i``'s balance becomes ``x_new_i``.

    Args:
        i, j: coin indices, distinct ints in ``[0, n)``.
        x_new_i: new balance of coin ``i``, scalar or ``(...)``, ``> 0``.
        x: current balances ``(..., n)``, ``> 0``; ``D`` is computed from them.
        A: amplification, scalar or ``(...)``, in ``[1, 1e6]``.

    Returns ``(...)``, the new balance of coin ``j`` (fee-free).
    """
    balances, i, j = _check_pair(x, i, j)
    new_i = check_in_range("x_new_i", x_new_i, 0.0, low_open=True, high_open=True)
    return _get_y_unchecked(i, j, new_i, balances, _check_amplification(A))


def get_dy(
    i: int,
    j: int,
    dx: float | np.ndarray,
    x: np.ndarray,
    A: float | np.ndarray,  # noqa: N803
    fee: float | np.ndarray = 0.0,
) -> np.ndarray:
    """Coins ``j`` received for selling ``dx`` of coin ``i``, after the fee.

    ``dy = (x_j - y) (1 - fee)`` with ``y = get_y(i, j, x_i + dx, x, A)``: as in the contract the fee
    is taken on the output (3pool: ``fee = 0.0004``); the contract's 1-wei rounding is dropped.
    ``dx`` is scalar or ``(...)``, ``>= 0``; ``fee`` in ``[0, 1)``. Returns ``(...)`` in coin-``j`` units.
    """
    balances, i, j = _check_pair(x, i, j)
    amount = check_in_range("dx", dx, 0.0, high_open=True)
    f = check_in_range("fee", fee, 0.0, 1.0, high_open=True)
    y = _get_y_unchecked(i, j, balances[..., i] + amount, balances, _check_amplification(A))
    # a tiny dx can give y a hair above x_j by rounding; the output is never negative
    return np.maximum(balances[..., j] - y, 0.0) * (1.0 - f)
