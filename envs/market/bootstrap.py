"""Stationary block bootstrap (Politis & Romano, 1994) of historical days, jointly across assets.

A *row* is one historical day ``d`` in ``[start, end]`` (with a previous day in the data):
``log(C_d / C_{d-1})`` of every asset, ``log(H_d / C_d)`` and ``log(L_d / C_d)`` of every asset, the
numeraire's close, ETH's log return and the regime label of ``d`` (causal rule on the full history, see
``envs/market/replay.py``). Resampling whole rows keeps the cross-asset dependence of each day; blocks
keep the serial dependence (volatility clusters) up to their length.

Block structure: a path's first row is uniform; every later step starts a new block at a uniform row with
probability ``1 / mean_block_length`` and otherwise takes the next row (circularly wrapping from the last
row of the window to the first). Block lengths are geometric with mean ``mean_block_length``.

Prices: point 0 is the close of its row's day; later closes compound the resampled returns; high and low
apply the row's ratios to the new close (so ``high >= close >= low``). Depth and gas follow the resampled
regime with the synthetic model's lognormal noise and spikes.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.market.config import REGIME_NAMES, MarketConfig, check_sample_request
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.replay import label_regimes, load_panel
from defialloc.envs.market.synthetic import liquidity_and_gas


def stationary_bootstrap_indices(
    u_restart: np.ndarray, u_pick: np.ndarray, n_rows: int, mean_block: float
) -> np.ndarray:
    """Row indices of stationary-bootstrap paths.

    Args:
        u_restart, u_pick: ``(B, L)`` uniforms; step ``t > 0`` starts a block when ``u_restart < 1/mean_block``
            (step 0 always does), at row ``floor(u_pick * n_rows)``.
        n_rows: number of rows to sample from; ``mean_block``: mean block length (>= 1).

    Returns:
        ``(B, L)`` int64 indices in ``[0, n_rows)``.
    """
    b, length = u_restart.shape
    restart = u_restart < 1.0 / mean_block
    restart[:, 0] = True
    t = np.broadcast_to(np.arange(length), (b, length))
    block_start = np.maximum.accumulate(np.where(restart, t, 0), axis=1)
    first_row = np.minimum((u_pick * n_rows).astype(np.int64), n_rows - 1)
    start_row = np.take_along_axis(first_row, block_start, axis=1)
    return (start_row + (t - block_start)) % n_rows


def bootstrap_paths(cfg: MarketConfig, seeds: np.ndarray, length: int, warmup: int) -> MarketPaths:
    """Resample ``len(seeds)`` paths of ``length`` days from the history in ``[cfg.start, cfg.end]``.

    Path ``b`` uses ``default_rng(seeds[b])`` only: uniforms ``(length, 3)`` (restart, row, gas spike) then
    normals ``(length, 2)`` (depth and gas noise).
    """
    seeds = check_sample_request(seeds, length, warmup)
    panel = load_panel(cfg)
    lo, hi = panel.window(cfg.start, cfg.end)
    lo = max(lo, 1)  # a row needs the previous close
    n_rows = hi - lo
    if n_rows < 2:
        raise ValueError(
            f"bootstrap window start={cfg.start}, end={cfg.end} holds {max(n_rows, 0)} usable days "
            f"(data {panel.dates[0]}..{panel.dates[-1]}); need at least 2"
        )
    b = len(seeds)
    u = np.empty((b, length, 3))
    z = np.empty((b, length, 2))
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        rng.random(out=u[i])
        rng.standard_normal(out=z[i])
    rows = lo + stationary_bootstrap_indices(
        u[:, :, 0], u[:, :, 1], n_rows, cfg.bootstrap.mean_block_length
    )

    log_close = np.log(panel.close)
    log_ret = np.diff(log_close, axis=0, prepend=log_close[:1])
    high_ratio = np.log(panel.high) - log_close
    low_ratio = np.log(panel.low) - log_close
    path_log_close = np.cumsum(log_ret[rows], axis=1)
    path_log_close += (log_close[rows[:, 0]] - log_ret[rows[:, 0]])[:, None, :]
    close = np.exp(path_log_close)
    high = np.maximum(np.exp(path_log_close + high_ratio[rows]), close)
    low = np.minimum(np.exp(path_log_close + low_ratio[rows]), close)
    if "ETH" in cfg.assets:
        eth_usd = close[:, :, list(cfg.assets).index("ETH")]
    else:
        log_eth = np.log(panel.eth_usd)
        eth_ret = np.diff(log_eth, prepend=log_eth[:1])
        eth_usd = np.exp(
            np.cumsum(eth_ret[rows], axis=1) + (log_eth[rows[:, 0]] - eth_ret[rows[:, 0]])[:, None]
        )

    regime = label_regimes(panel.close, cfg.regime_rule)[rows]
    depth, gas = liquidity_and_gas(
        regime, cfg.liquidity, cfg.gas, 1.0, z[:, :, 0], z[:, :, 1], u[:, :, 2]
    )
    return MarketPaths(
        asset_names=tuple(cfg.assets),
        close=close,
        high=high,
        low=low,
        numeraire_usd=panel.numeraire_usd[rows],
        regime=regime,
        regime_names=REGIME_NAMES,
        depth_multiplier=depth,
        gas_price_gwei=gas,
        eth_usd=np.ascontiguousarray(eth_usd),
        warmup=int(warmup),
        step_days=1.0,
    )
