"""GARCH(1,1) one-step-ahead variance forecasts, run causally along time-major paths."""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from defialloc.envs.features.model import GarchModel
from defialloc.envs.features.windows import _LOOP_MIN_ROW


def iir_columns(x: np.ndarray, decay: np.ndarray, cap: np.ndarray | None = None) -> np.ndarray:
    """``y_t = x_t + decay * y_{t-1}`` (``y_{-1} = 0``), then ``min(y_t, cap)``, along axis 0.

    Args:
        x: ``(L, ..., K)`` C-contiguous float64, time first. decay, cap: ``(K,)`` per last-axis column.

    Without a cap, small rows run as one ``lfilter`` per column and wide rows as a loop over time on
    flat rows (tiled constants); both round ``decay * y_{t-1}`` and then the sum, so they agree bit
    for bit (and a row never depends on the batch it is computed in).
    """
    y = np.empty_like(x)
    if cap is None and x[0].size < _LOOP_MIN_ROW:
        for k, d in enumerate(decay):
            y[..., k] = lfilter([1.0], [1.0, -float(d)], x[..., k], axis=0)
        return y
    width = x[0].size
    rows_x, rows_y = x.reshape(len(x), width), y.reshape(len(y), width)
    rows_y[0] = rows_x[0]
    reps = width // len(decay)
    tiled = np.tile(decay, reps)
    multiply, add, minimum = np.multiply, np.add, np.minimum
    if cap is None:
        for xt, prev, nxt in zip(rows_x[1:], rows_y[:-1], rows_y[1:], strict=True):
            multiply(prev, tiled, nxt)
            add(nxt, xt, nxt)
        return y
    tiled_cap = np.tile(cap, reps)
    minimum(rows_y[0], tiled_cap, out=rows_y[0])
    for xt, prev, nxt in zip(rows_x[1:], rows_y[:-1], rows_y[1:], strict=True):
        multiply(prev, tiled, nxt)
        add(nxt, xt, nxt)
        minimum(nxt, tiled_cap, out=nxt)
    return y


def garch_forecast(r: np.ndarray, garch: GarchModel) -> np.ndarray:
    """One-step-ahead GARCH(1,1) variance forecasts ``(L, ..., N)`` along time-major log returns.

    Args:
        r: ``(L, ..., N)`` log returns per step, time first; ``r[t]`` is the return of the step that
            ends at point ``t`` (``r[0]``, before the first point, is ignored).
        garch: per-asset parameters per step.

    Returns:
        float64 ``f`` with ``f[t]`` the forecast made at ``t`` of the variance of the return of step
        ``t + 1``, (log return)^2 per step: ``f[0] = h_bar`` (no return seen yet), then
        ``f[t] = min(omega + alpha r[t]^2 + beta f[t-1], h_cap)``. Zero-mean residuals: the drift
        (~0.1 % a day) is negligible next to the vol (~3-5 % a day). Row ``t`` uses ``r[1..t]`` only.
    """
    x = np.square(r)
    x *= garch.alpha
    x += garch.omega
    x[0] = garch.h_bar
    f = iir_columns(x, garch.beta)
    if (f > garch.h_cap).any():  # rare (the cap is 25 x h_bar by default): redo with the cap
        f = iir_columns(x, garch.beta, garch.h_cap)
    return f
