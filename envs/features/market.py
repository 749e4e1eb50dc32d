"""The market blocks of the observation for every time point of a batch of paths (one causal function)."""

from __future__ import annotations

import numpy as np

from defialloc.envs.config import MODEL_BLOCKS, ObservationConfig
from defialloc.envs.features.blocks import MARKET_BLOCKS, n_market_features
from defialloc.envs.features.garch import garch_forecast
from defialloc.envs.features.model import TraderModel
from defialloc.envs.features.regime import regime_filter
from defialloc.envs.features.windows import _pair_correlations, _rolling_std

GAS_REFERENCE_GWEI = 30.0


def market_features(
    close: np.ndarray,
    numeraire_usd: np.ndarray,
    depth_multiplier: np.ndarray,
    gas_price_gwei: np.ndarray,
    cfg: ObservationConfig,
    step_days: float = 1.0,
    *,
    model: TraderModel | None = None,
    dtype: type = np.float64,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Market blocks of the observation (those of ``cfg.blocks``, in its order) for every time point.

    Args:
        close: ``(B, L, N)`` USD prices. numeraire_usd, depth_multiplier, gas_price_gwei: ``(B, L)``.
        cfg: the blocks, window sizes and scales. step_days: step length, for annualizing the vols.
        model: the trader's model (:class:`defialloc.envs.features.model.TraderModel`) of the market config;
            required by the ``garch_vol`` and ``regime`` blocks (its ``step_days`` must match).
        dtype: of the result. Every feature is computed in float64; float32 rounds each value once,
            exactly as storing the float64 result in a float32 array would (the env's features).
        out: optional ``(B, L, n_market_features)`` array (any float dtype; ``dtype`` is then
            ignored) to write into, e.g. the env's own feature rows: saves allocating (and page
            faulting) a new array and copying it.

    Returns:
        ``(B, L, n_market_features)``; row ``t`` uses rows ``0 .. t`` only and is valid once
        ``t >= cfg.history_needed - 1``.
    """
    b, length, n = close.shape
    clip = cfg.clip
    shape = (b, length, n_market_features(n, cfg))
    if out is None:
        out = np.empty(shape, dtype=dtype)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    blocks = [x for x in cfg.blocks if x in MARKET_BLOCKS]
    needs_model = [x for x in blocks if x in MODEL_BLOCKS]
    if needs_model:
        _check_model(model, needs_model, n, step_days)
    # time-major (L, B, N): the prefix recursions run over contiguous rows, and each block is
    # clipped (as the whole observation is) before one transposing write
    r = np.zeros((length, b, n))
    prices = close.transpose(1, 0, 2)
    np.log(np.divide(prices[1:], prices[:-1], out=r[1:]), out=r[1:])
    per_year = 365.0 / step_days
    forecast = None
    col = 0
    for name in blocks:
        if name == "returns":
            col = _write_return_lags(out, col, r, cfg)
        elif name == "realized_vol":
            vol = _rolling_std(r, cfg.vol_window)
            vol *= np.sqrt(per_year)
            col = _write_block(out, col, vol, clip)
        elif name == "garch_vol":
            forecast = garch_forecast(r, model.garch) if forecast is None else forecast
            col = _write_block(out, col, np.sqrt(forecast * per_year), clip)
        elif name == "correlations":
            if n > 1:
                pairs = _pair_correlations(r, cfg.corr_halflife, cfg.corr_window)
                col = _write_block(out, col, pairs, clip)
        elif name == "regime":
            forecast = garch_forecast(r, model.garch) if forecast is None else forecast
            col = _write_block(out, col, regime_filter(r, forecast, model.regime), clip)
        else:  # market
            values = (
                np.log(depth_multiplier),
                np.log(gas_price_gwei / GAS_REFERENCE_GWEI),
                (numeraire_usd - 1.0) * 20.0,
            )
            for k, value in enumerate(values):
                out[:, :, col + k] = np.clip(value, -clip, clip, out=value)
            col += 3
    return out


def _check_model(model: TraderModel | None, blocks: list[str], n: int, step_days: float) -> None:
    if model is None:
        raise ValueError(
            f"observation blocks {blocks} need the market's model: pass "
            "model=TraderModel.from_market(config.market) (envs.features.model)"
        )
    if len(model.assets) != n:
        raise ValueError(f"the model has {len(model.assets)} assets; the prices have {n}")
    if abs(model.step_days - step_days) > 1e-12:
        raise ValueError(f"the model's step_days={model.step_days} differs from {step_days}")
    if "regime" in blocks and model.regime is None:
        raise ValueError("the regime block needs a model built with_regime=True")


def _write_block(out: np.ndarray, col: int, block: np.ndarray, clip: float) -> int:
    """Clip the time-major ``(L, B, K)`` ``block`` in place and write it to ``out[:, :, col:col + K]``."""
    np.clip(block, -clip, clip, out=block)
    out[:, :, col : col + block.shape[-1]] = block.transpose(1, 0, 2)
    return col + block.shape[-1]


def _write_return_lags(out: np.ndarray, col: int, r: np.ndarray, cfg: ObservationConfig) -> int:
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
    out[:, :, col : col + w * n] = windows[:, (length - 1) * n :: -n]
    return col + w * n
