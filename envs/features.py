"""Observation features: one causal function of the price history, shared by the env and the paper trader.

Market features are computed for every time point of a batch of paths at once (at reset), so a
step only gathers a row. The paper trader calls the same :func:`market_features` on its trailing
history and takes the last row: there is no second copy of feature code.

Layout of one observation (float32), for ``N`` assets, return window ``W``:

=====================  ==================  ===============================================
block                  size                value
=====================  ==================  ===============================================
log returns            ``W * N``           ``log(p_t-k / p_t-k-1) / return_scale``, lag-major
                                           (lag 0 = the step that just closed, all assets,
                                           then lag 1, ...)
realized vol           ``N``               annualized std of log returns over ``vol_window``
EWMA correlations      ``N (N - 1) / 2``   upper triangle (row-major) of the zero-mean EWMA
                                           correlation over ``corr_window`` steps
pool depth             1                   ``log(depth_multiplier)`` (0 = normal liquidity)
gas                    1                   ``log(gas_price_gwei / 30)``
numeraire peg          1                   ``(numeraire_usd - 1) * 20`` (a 5% depeg -> -1)
current weights        ``N + 1``           the portfolio's weights now, cash last
drawdown               1                   ``1 - value / running peak``
=====================  ==================  ===============================================

Every feature is clipped to ``[-clip, clip]``. Row ``t`` uses prices up to and including ``t`` only.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from envs.config import ObservationConfig

GAS_REFERENCE_GWEI = 30.0


def feature_names(asset_names: tuple[str, ...], cfg: ObservationConfig) -> list[str]:
    """Names of the observation entries, in order (market block then portfolio block)."""
    n = len(asset_names)
    names = [f"ret_lag{k}_{a}" for k in range(cfg.return_window) for a in asset_names]
    names += [f"vol_{a}" for a in asset_names]
    names += [f"corr_{asset_names[i]}_{asset_names[j]}" for i in range(n) for j in range(i + 1, n)]
    names += ["log_depth", "log_gas", "numeraire_peg"]
    names += [f"weight_{a}" for a in asset_names] + ["weight_cash", "drawdown"]
    return names


def n_market_features(n_assets: int, cfg: ObservationConfig) -> int:
    return cfg.return_window * n_assets + n_assets + n_assets * (n_assets - 1) // 2 + 3


def observation_size(n_assets: int, cfg: ObservationConfig) -> int:
    return n_market_features(n_assets, cfg) + n_assets + 2


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

    ``r`` is time-major ``(L, ..., N)``.
    """
    n = r.shape[-1]
    iu, ju = np.triu_indices(n, k=0)  # diagonal included: the pairs' scales
    products = np.take(r, iu, axis=-1)
    products *= np.take(r, ju, axis=-1)
    decay = 0.5 ** (1.0 / halflife)
    moments = _window_sum(_iir(products, decay), window, decay)
    diag = np.flatnonzero(iu == ju)  # position of pair (i, i) is diag[i]
    off = np.flatnonzero(iu != ju)
    scale = np.sqrt(np.maximum(np.take(moments, diag, axis=-1), 1e-30))
    denom = np.take(scale, iu[off], axis=-1)
    denom *= np.take(scale, ju[off], axis=-1)
    return np.divide(np.take(moments, off, axis=-1), denom, out=denom)


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


def market_features(
    close: np.ndarray,
    numeraire_usd: np.ndarray,
    depth_multiplier: np.ndarray,
    gas_price_gwei: np.ndarray,
    cfg: ObservationConfig,
    step_days: float = 1.0,
    *,
    dtype: type = np.float64,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Market block of the observation for every time point.

    Args:
        close: ``(B, L, N)`` USD prices. numeraire_usd, depth_multiplier, gas_price_gwei: ``(B, L)``.
        cfg: window sizes and scales. step_days: step length, for annualizing the vol.
        dtype: of the result. Every feature is computed in float64; float32 rounds each value once,
            exactly as storing the float64 result in a float32 array would (the env's features).
        out: optional ``(B, L, n_market_features)`` array (any float dtype; ``dtype`` is then
            ignored) to write into, e.g. the env's own feature rows: saves allocating (and page
            faulting) a new array and copying it.

    Returns:
        ``(B, L, n_market_features)``; row ``t`` is valid once ``t >= cfg.history_needed - 1``.
    """
    b, length, n = close.shape
    clip = cfg.clip
    shape = (b, length, n_market_features(n, cfg))
    if out is None:
        out = np.empty(shape, dtype=dtype)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    # time-major (L, B, N): the prefix recursions run over contiguous rows, and each block is
    # clipped (as the whole observation is) before one transposing write
    r = np.zeros((length, b, n))
    prices = close.transpose(1, 0, 2)
    np.log(np.divide(prices[1:], prices[:-1], out=r[1:]), out=r[1:])
    col = _write_return_lags(out, r, cfg)
    vol = _rolling_std(r, cfg.vol_window)
    vol *= np.sqrt(365.0 / step_days)
    col = _write_block(out, col, vol, clip)
    if n > 1:
        col = _write_block(
            out, col, _pair_correlations(r, cfg.corr_halflife, cfg.corr_window), clip
        )
    for k, value in enumerate(
        (
            np.log(depth_multiplier),
            np.log(gas_price_gwei / GAS_REFERENCE_GWEI),
            (numeraire_usd - 1.0) * 20.0,
        )
    ):
        out[:, :, col + k] = np.clip(value, -clip, clip, out=value)
    return out


def _write_block(out: np.ndarray, col: int, block: np.ndarray, clip: float) -> int:
    """Clip the time-major ``(L, B, K)`` ``block`` in place and write it to ``out[:, :, col:col + K]``."""
    np.clip(block, -clip, clip, out=block)
    out[:, :, col : col + block.shape[-1]] = block.transpose(1, 0, 2)
    return col + block.shape[-1]


def _write_return_lags(out: np.ndarray, r: np.ndarray, cfg: ObservationConfig) -> int:
    """Write the scaled, clipped log returns ``r`` ``(L, B, N)`` at lags ``0 .. W-1`` (lag-major).

    Row ``t`` of the block is ``r[t], r[t-1], ..., r[t-W+1]`` (zeros before time 0): ``W * N``
    consecutive values of each path's time-reversed returns, so the whole block is one strided view
    of them and one copy with contiguous runs of ``W * N`` values.
    """
    length, b, n = r.shape
    w = cfg.return_window
    reversed_ = np.zeros((b, length + w - 1, n))  # per path: time reversed, then W - 1 zero rows
    np.divide(r[::-1].transpose(1, 0, 2), cfg.return_scale, out=reversed_[:, :length])
    np.clip(reversed_, -cfg.clip, cfg.clip, out=reversed_)
    flat = reversed_.reshape(b, -1)
    windows = np.lib.stride_tricks.sliding_window_view(flat, w * n, axis=1)
    # the window of time t starts at the reversed row L - 1 - t
    out[:, :, : w * n] = windows[:, (length - 1) * n :: -n]
    return w * n
