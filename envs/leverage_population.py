"""The borrower population behind liquidation cascades, stepped along with the envs.

Other leveraged borrowers (Aave-like, one collateral asset each, ``K`` health-factor buckets per asset;
model and parameters in ``envs/protocols/borrowers.py`` and docs/leverage.md) are liquidated when a
step's LOW crosses their liquidation price; their liquidators' sales are what the env pushes into
the agent's pools. Their positions depend only on the market path (the agent is too small to move
them, and the forced sales do not feed back into the path's prices), so the sales of a path are
exactly ``population_liquidations`` along it.

Why online rather than precomputed at reset: the population must be stepped through the whole
episode either way (365 steps of ``(B, N, K)`` arrays), and a precompute makes every reset of a
single env (an env ruined mid-batch) pay for all its steps at once in Python overhead (~12-25 ms
per env measured on the dev box), while stepping all envs together costs the same per step as a
batched precompute.

Speed (the engine runs every env step): the parameters are validated once at construction, the
state lives in preallocated bucket-major ``(K, B * N)`` arrays updated in place (per-row
quantities then broadcast along the leading axis, which numpy does at full speed), and the
liquidation calls only get the buckets that are liquidatable. Every step runs the unchecked cores
of ``liquidate_population`` / ``refresh_population`` (the same formulas, in the same order), so
results are bit for bit those of the protocol functions and never depend on the batch.
"""

from __future__ import annotations

import numpy as np

from envs.protocols.borrowers import (
    entry_health_factors,
    forced_sales,
    fresh_positions,
    hit_positions,
    kept_by_liquidators,
    liquidate_hit_buckets,
    refresh_buckets,
)
from envs.protocols.params import PopulationParams, ReserveArrays, check_range


def _env_major(bucket_major: np.ndarray, n_envs: int, n_assets: int) -> np.ndarray:
    """``(B, N, K)`` writable view of a ``(K, B * N)`` array."""
    return bucket_major.reshape(-1, n_envs, n_assets).transpose(1, 2, 0)


class BorrowerCascades:
    """Population state of ``n_envs`` envs: ``(B, N, K)`` collateral units and debt per bucket.

    ``reserves`` gives each asset's liquidation threshold, bonus and protocol fee; ``depth_usd``
    ``(N,)`` the pool depth (both sides, USD) at depth multiplier 1 that sizes the population.

    ``units``, ``debt`` and ``fresh`` (fresh bucket sizes) are writable ``(B, N, K)`` views of the
    bucket-major state (snapshot/restore read and write them). Fresh sizes are equal across the
    ``K`` buckets of an (env, asset) row (``init_population`` splits a row's collateral equally), so
    the refresh reads them once per row.
    """

    def __init__(
        self,
        params: PopulationParams,
        reserves: ReserveArrays,
        n_envs: int,
        depth_usd: np.ndarray,
    ) -> None:
        self.params = params
        self.reserves = reserves
        self.depth_usd = depth_usd
        n_assets, n_buckets = depth_usd.shape[0], params.n_buckets
        rows = n_envs * n_assets
        # (units, debt) x (K, B * N): one gather/scatter moves both for the hit buckets
        self._state = np.zeros((2, n_buckets, rows))
        self._fresh = np.zeros((n_buckets, rows))
        self._scratch = np.empty((n_buckets, rows))
        self._hit = np.empty((n_buckets, rows), dtype=bool)
        self._units, self._debt = self._state
        self.units = _env_major(self._units, n_envs, n_assets)
        self.debt = _env_major(self._debt, n_envs, n_assets)
        self.fresh = _env_major(self._fresh, n_envs, n_assets)
        self.entry_hf = entry_health_factors(params)
        self._entry_hf_column = self.entry_hf[:, None]
        # validated once here (what liquidate/refresh_population check on every call), then tiled
        # to one entry per (env, asset) row of the flattened (B * N,) layout
        threshold = check_range("liq_threshold", reserves.liq_threshold, 0.0, 1.0)
        bonus = check_range("bonus", reserves.liq_bonus, 0.0, 1.0, upper_open=True)
        fee = check_range("protocol_fee_share", reserves.liq_protocol_fee, 0.0, 1.0)
        self._threshold = threshold
        self._threshold_rows = np.tile(threshold, n_envs)
        self._lb_rows = np.tile(1.0 + bonus, n_envs)
        self._kept_rows = np.tile(kept_by_liquidators(bonus, fee), n_envs)
        self._env_ids = np.arange(n_envs)
        self._bucket_offsets = np.arange(n_buckets)[:, None] * rows

    def reset(
        self, index: np.ndarray, entry_price: np.ndarray, depth_multiplier: np.ndarray
    ) -> None:
        """New populations for envs ``index``, levered at ``entry_price`` ``(b, N)`` with the pools at
        ``depth_multiplier`` ``(b,)`` x their baseline depth."""
        depth = self.depth_usd[None, :] * depth_multiplier[:, None]
        units, debt_times_hf = fresh_positions(entry_price, depth, self._threshold, self.params)
        n_assets = self.depth_usd.shape[0]
        envs = self._env_ids[index]
        cols = (envs[:, None] * n_assets + np.arange(n_assets)).reshape(-1)
        # flat positions in the (K, B * N) arrays: one 1-D scatter each (fancy indexing along the
        # second axis is 5x slower for a full reset)
        at = (self._bucket_offsets + cols).reshape(-1)
        debt = debt_times_hf.reshape(-1) / self._entry_hf_column
        units = np.broadcast_to(units.reshape(-1), debt.shape).reshape(-1)
        self._debt.reshape(-1)[at] = debt.reshape(-1)
        self._units.reshape(-1)[at] = units
        self._fresh.reshape(-1)[at] = units

    def step(self, price_low: np.ndarray, price_close: np.ndarray) -> np.ndarray:
        """One ``population_step`` of every env at the step's ``(B, N)`` low and close; returns the
        ``(B, N)`` collateral units the liquidators sell into the pools this step."""
        sales = np.zeros(price_low.shape)
        low = price_low.reshape(-1)
        # the test liquidate_population starts with: HF < 1 <=> C * LT < D
        np.multiply(self._units, low * self._threshold_rows, out=self._scratch)
        np.less(self._scratch, self._debt, out=self._hit)
        if self._hit.any():  # on nearly every step at B = 256, on a quarter of them at B = 1
            rows, pos = hit_positions(self._hit.T)
            sales.reshape(-1)[rows] = self._liquidate(rows, pos, low)
        rate = self.params.refresh_rate_per_step
        if rate:
            close_threshold = price_close.reshape(-1) * self._threshold_rows
            refresh_buckets(
                self._state, self._fresh[0], close_threshold, self._entry_hf_column, rate,
                self._scratch,
            )  # fmt: skip
        return sales

    def _liquidate(self, rows: np.ndarray, pos: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Liquidation calls on the hit buckets (``rows``/``pos`` of :func:`hit_positions`, ``low``
        ``(B * N,)``); updates the state and returns the ``(len(rows),)`` forced sales."""
        n_buckets, n_rows = self._hit.shape
        slot, bucket = np.divmod(pos, n_buckets)
        row = rows[slot]
        at = bucket * n_rows + row  # flat position in a (K, B * N) array
        state = self._state.reshape(2, -1)
        units, debt = state[:, at]
        state[0, at], state[1, at], seized, repaid, bad = liquidate_hit_buckets(
            units, debt, low[row], self._threshold_rows[row], self._lb_rows[row], pos,
            rows.size, self.params,
        )  # fmt: skip
        if not repaid.any() and not bad.any():
            return seized  # liquidate_population's calm result: nothing was seized
        return forced_sales(seized, self._kept_rows[rows], self.params)
