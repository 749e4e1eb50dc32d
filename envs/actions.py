"""Mapping from the policy's Box action to target portfolio weights.

The spot action is a vector ``a`` in ``[-1, 1]^(N+1)``: one entry per risky asset, then one for cash
(the numeraire). It maps to target weights by *clipped linear normalization*::

    x_i = (clip(a_i, -1, 1) + 1) / 2          # each in [0, 1]
    w_i = x_i / sum_j x_j                     # on the simplex over N assets + cash
    w   = cash only                           # when sum_j x_j == 0 (every output at -1)

Why not a softmax: over outputs bounded to [-1, 1], a softmax caps any single weight at
e^2 / (e^2 + N), about 0.6 for five assets, so concentrated portfolios and all-cash are unreachable.
Here an asset at +1 with every other output at -1 gets weight exactly 1, ``a = 0`` gives equal
weights, and the map is piecewise smooth. Target weights that differ from the current ones by less
than the no-trade band are left alone (the band saves fees and gas on small rebalances).
"""

from __future__ import annotations

import numpy as np

ZERO_MASS = 1e-12


def validate_actions(actions: np.ndarray, n_envs: int, action_dim: int) -> np.ndarray:
    """Return ``actions`` as a float64 ``(n_envs, action_dim)`` array or raise a clear ValueError."""
    try:
        arr = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError):  # numpy's "could not convert string to float: 'buy'"
        shown = repr(actions) if len(repr(actions)) <= 80 else repr(actions)[:77] + "..."
        raise ValueError(
            f"action must be numbers in [-1, 1] ({action_dim} per env: one per asset, then "
            f"cash); got {type(actions).__name__} {shown}"
        ) from None
    if arr.ndim == 1 and n_envs == 1:
        arr = arr[None, :]
    if arr.shape != (n_envs, action_dim):
        raise ValueError(
            f"action has shape {np.shape(actions)}; expected ({action_dim},) for one env "
            f"or ({n_envs}, {action_dim}) for {n_envs} envs"
        )
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(
            f"action contains NaN or inf at index {bad}; actions must be finite in [-1, 1]"
        )
    return arr


def actions_to_weights(actions: np.ndarray) -> np.ndarray:
    """Map ``(..., N+1)`` actions in [-1, 1] to ``(..., N+1)`` target weights (last = cash).

    Values outside [-1, 1] are clipped first (SB3 clips Gaussian samples the same way).
    """
    # np.clip's Python-level wrapper costs more than these two ufuncs (hot path: every env step)
    x = np.maximum(np.minimum(actions, 1.0), -1.0)
    x += 1.0
    x *= 0.5
    mass = x.sum(axis=-1, keepdims=True)
    empty = mass <= ZERO_MASS
    if not empty.any():
        return np.divide(x, mass, out=x)
    weights = x / np.where(empty, 1.0, mass)
    cash_only = np.zeros_like(weights)
    cash_only[..., -1] = 1.0
    return np.where(empty, cash_only, weights)


def weights_to_actions(weights: np.ndarray) -> np.ndarray:
    """A right inverse of :func:`actions_to_weights`: an action that yields exactly ``weights``.

    The largest weight is sent to +1 and the others scaled proportionally, so any point of the simplex
    is reachable from inside the Box (used by tests and by fixed-weight baseline policies).
    """
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < -1e-12) or not np.allclose(w.sum(axis=-1), 1.0, atol=1e-9):
        raise ValueError("weights must be non-negative and sum to 1 along the last axis")
    top = np.max(w, axis=-1, keepdims=True)
    return np.clip(2.0 * w / top - 1.0, -1.0, 1.0)


def apply_no_trade_band(target: np.ndarray, current: np.ndarray, band: float) -> np.ndarray:
    """Boolean ``(..., N)`` mask of risky assets worth trading: ``|target - current| > band``.

    ``target`` and ``current`` are ``(..., N+1)`` weights including cash; cash is never traded
    directly (it is what the trades of the other assets leave).
    """
    return np.abs(target[..., :-1] - current[..., :-1]) > band


def spot_safe_action(n_assets: int) -> np.ndarray:
    """``(N+1,)`` spot action meaning all numeraire: every risky output at -1, cash at +1."""
    action = np.full(n_assets + 1, -1.0)
    action[-1] = 1.0
    return action


def all_numeraire(target: np.ndarray) -> np.ndarray:
    """``(B,)`` bool: the target weights ``(B, N+1)`` are all numeraire (every risky weight 0).

    Such a target closes every position, dust under the no-trade band included: "go to cash" must
    mean flat, whoever asks for it (the env's kill-switch, the policy-side wrapper, the policy).
    With lending/perps a zero risky target also means no debt and no perps (the leverage target is
    clipped to 0 without collateral and the perp sizes are ``-h x target units``).
    """
    return ~target[:, :-1].any(axis=1)
