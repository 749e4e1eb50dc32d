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


def _lagged(x: np.ndarray, lag: int, axis: int = 1) -> np.ndarray:
    """``x`` shifted forward in time by ``lag`` along ``axis`` (zeros where undefined)."""
    if lag == 0:
        return x
    out = np.zeros_like(x)
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    src[axis], dst[axis] = slice(None, -lag), slice(lag, None)
    out[tuple(dst)] = x[tuple(src)]
    return out


def _rolling_std(r: np.ndarray, window: int) -> np.ndarray:
    """Population std over the trailing ``window`` entries along axis 1, via cumulative sums."""
    c1 = np.cumsum(r, axis=1)
    c2 = np.cumsum(r * r, axis=1)
    s1 = c1 - _lagged(c1, window)
    s2 = c2 - _lagged(c2, window)
    var = np.maximum(s2 / window - (s1 / window) ** 2, 0.0)
    return np.sqrt(var)


def _ewma_window_sum(x: np.ndarray, decay: float, window: int, axis: int = 1) -> np.ndarray:
    """``sum_{k < window} decay^k x[t-k]`` along ``axis``, as an IIR filter minus its delayed tail."""
    infinite = lfilter([1.0], [1.0, -decay], x, axis=axis)
    return infinite - decay**window * _lagged(infinite, window, axis)


def _pair_correlations(r: np.ndarray, halflife: float, window: int) -> np.ndarray:
    """Zero-mean EWMA correlations ``(B, L, N(N-1)/2)`` of the upper-triangle pairs (row-major)."""
    b, length, n = r.shape
    iu, ju = np.triu_indices(n, k=0)
    # time on the last (contiguous) axis: the IIR filter runs several times faster there
    rt = np.ascontiguousarray(r.transpose(0, 2, 1))
    products = rt[:, iu] * rt[:, ju]
    moments = _ewma_window_sum(products, 0.5 ** (1.0 / halflife), window, axis=-1)
    diag_pos = np.flatnonzero(iu == ju)
    scale = np.sqrt(np.maximum(moments[:, diag_pos], 1e-30))
    pos_of = {i: k for k, i in enumerate(iu[diag_pos])}
    off = np.flatnonzero(iu != ju)
    si = np.array([pos_of[i] for i in iu[off]], dtype=np.int64)
    sj = np.array([pos_of[j] for j in ju[off]], dtype=np.int64)
    corr = moments[:, off] / (scale[:, si] * scale[:, sj])
    return corr.transpose(0, 2, 1)


def ewma_correlation(r: np.ndarray, halflife: float, window: int) -> np.ndarray:
    """Zero-mean EWMA correlation matrices ``(B, L, N, N)`` of log returns ``r`` ``(B, L, N)``."""
    n = r.shape[-1]
    corr = np.ones((*r.shape[:2], n, n))
    if n > 1:
        iu, ju = np.triu_indices(n, k=1)
        pairs = _pair_correlations(r, halflife, window)
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
) -> np.ndarray:
    """Market block of the observation for every time point.

    Args:
        close: ``(B, L, N)`` USD prices. numeraire_usd, depth_multiplier, gas_price_gwei: ``(B, L)``.
        cfg: window sizes and scales. step_days: step length, for annualizing the vol.

    Returns:
        ``(B, L, n_market_features)`` float64; row ``t`` is valid once ``t >= cfg.history_needed - 1``.
    """
    b, length, n = close.shape
    w = cfg.return_window
    out = np.zeros((b, length, n_market_features(n, cfg)))
    r = np.zeros((b, length, n))
    np.log(close[:, 1:] / close[:, :-1], out=r[:, 1:])
    scaled = r / cfg.return_scale
    for k in range(w):
        out[:, k:, k * n : (k + 1) * n] = scaled[:, : length - k]
    col = w * n
    out[:, :, col : col + n] = _rolling_std(r, cfg.vol_window) * np.sqrt(365.0 / step_days)
    col += n
    n_pairs = n * (n - 1) // 2
    if n_pairs:
        out[:, :, col : col + n_pairs] = _pair_correlations(r, cfg.corr_halflife, cfg.corr_window)
    col += n_pairs
    out[:, :, col] = np.log(depth_multiplier)
    out[:, :, col + 1] = np.log(gas_price_gwei / GAS_REFERENCE_GWEI)
    out[:, :, col + 2] = (numeraire_usd - 1.0) * 20.0
    np.clip(out, -cfg.clip, cfg.clip, out=out)
    return out
