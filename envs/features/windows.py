"""Trailing-window statistics along the time axis: prefix sums, IIR filters, rolling std, EWMA correlations.

Every function works on time-major arrays (time first) with sequential prefix operations, so a
row depends only on the rows before it and is bit-identical however many later rows follow (the
paper trader's exactness rests on this).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

# From this many values per time step, a Python loop over time (one or two vectorized ufuncs per
# step) runs a prefix recursion faster than numpy's cumsum along axis 0 of a time-major array (which
# walks each column separately) or scipy's lfilter (~5 ns per value).
_LOOP_MIN_ROW = 256


def _iir(x: np.ndarray, decay: float) -> np.ndarray:
    """``y_t = x_t + decay * y_{t-1}`` (``y_{-1} = 0``) along axis 0 of a C-contiguous float64 array.

    Bit-identical to ``lfilter([1], [1, -decay], x, axis=0)``: both round ``decay * y_{t-1}`` and
    then the sum (up to the sign of exact zeros).
    """
    if x[0].size < _LOOP_MIN_ROW:
        return lfilter([1.0], [1.0, -decay], x, axis=0)
    y = np.empty_like(x)
    y[0] = x[0]
    rows_x, rows_y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    multiply, add = np.multiply, np.add
    for xt, prev, nxt in zip(rows_x[1:], rows_y[:-1], rows_y[1:], strict=True):
        multiply(prev, decay, nxt)
        add(nxt, xt, nxt)
    return y


def _cumsum(x: np.ndarray) -> np.ndarray:
    """``np.cumsum(x, axis=0)`` of a C-contiguous array (the same sequential sums, bit for bit)."""
    if x[0].size < _LOOP_MIN_ROW:
        return np.cumsum(x, axis=0)
    y = np.empty_like(x)
    y[0] = x[0]
    rows_x, rows_y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    add = np.add
    for xt, prev, nxt in zip(rows_x[1:], rows_y[:-1], rows_y[1:], strict=True):
        add(prev, xt, nxt)
    return y


def _window_sum(cum: np.ndarray, window: int, decay: float = 1.0) -> np.ndarray:
    """``cum_t - decay^window * cum_{t-window}`` along axis 0 (``cum_t`` where ``t < window``), in place.

    With ``cum`` a cumulative sum (``decay = 1``) or the IIR filter above, this is the sum over the
    trailing ``window`` steps (EWMA-weighted).
    """
    if window < len(cum):
        tail = cum[:-window] if decay == 1.0 else decay**window * cum[:-window]
        cum[window:] -= tail
    return cum


def _rolling_std(r: np.ndarray, window: int) -> np.ndarray:
    """Population std over the trailing ``window`` entries along axis 0 of time-major ``r``."""
    s1 = _window_sum(_cumsum(r), window)
    s2 = _window_sum(_cumsum(r * r), window)
    s2 /= window
    s1 /= window
    s2 -= np.square(s1, out=s1)
    return np.sqrt(np.maximum(s2, 0.0, out=s2), out=s2)


def _pair_correlations(r: np.ndarray, halflife: float, window: int) -> np.ndarray:
    """Zero-mean EWMA correlations ``(L, ..., N(N-1)/2)`` of the upper-triangle pairs (row-major).

    ``r`` is time-major ``(L, ..., N)``. The pairs are built row by row with slices (pair ``(i, j)``,
    ``j >= i``, is ``r_i * r_j``), not gathered with index arrays: a gather along a short last axis
    cost more than the EWMA itself at 15 assets (same products, same bits).
    """
    n = r.shape[-1]
    starts = np.concatenate(([0], np.cumsum(np.arange(n, 0, -1))[:-1]))  # pair (i, i) of row i
    products = np.empty((*r.shape[:-1], n * (n + 1) // 2))
    for i in range(n):
        np.multiply(r[..., i : i + 1], r[..., i:], out=products[..., starts[i] : starts[i] + n - i])
    decay = 0.5 ** (1.0 / halflife)
    moments = _window_sum(_iir(products, decay), window, decay)
    scale = np.sqrt(np.maximum(np.take(moments, starts, axis=-1), 1e-30))
    out = np.empty((*r.shape[:-1], n * (n - 1) // 2))
    at = 0
    for i in range(n - 1):
        block = out[..., at : at + n - 1 - i]
        np.multiply(scale[..., i : i + 1], scale[..., i + 1 :], out=block)
        np.divide(moments[..., starts[i] + 1 : starts[i] + n - i], block, out=block)
        at += n - 1 - i
    return out


def ewma_correlation(r: np.ndarray, halflife: float, window: int) -> np.ndarray:
    """Zero-mean EWMA correlation matrices ``(B, L, N, N)`` of log returns ``r`` ``(B, L, N)``."""
    n = r.shape[-1]
    corr = np.ones((*r.shape[:2], n, n))
    if n > 1:
        iu, ju = np.triu_indices(n, k=1)
        rt = np.ascontiguousarray(r.transpose(1, 0, 2))
        pairs = _pair_correlations(rt, halflife, window).transpose(1, 0, 2)
        corr[..., iu, ju] = pairs
        corr[..., ju, iu] = pairs
    return corr
