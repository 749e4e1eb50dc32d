"""The borrower population behind liquidation cascades, stepped along with the envs.

Other leveraged borrowers (Aave-like, one collateral asset each, ``K`` health-factor buckets per asset;
model and parameters in ``envs/protocols/borrowers.py`` and docs/leverage.md) are liquidated when a
step's LOW crosses their liquidation price; the share ``pool_share_of_sales`` of their liquidators'
sales is what the env pushes into the agent's pools (the rest trades elsewhere). Their positions
depend only on the market path (the agent is too small to move them, and the forced sales do not
feed back into the path's prices), so the pool sales of a path are exactly
``pool_sales(population_liquidations(...))`` along it.

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

Blocks: numpy broadcasts a per-row ``(R,)`` vector over a ``(K, R)`` array 1.5-2x slower per
element than a same-length contiguous operand when ``R`` is ~1000 (short inner loops), so at large
batches the per-row vectors are tiled ``T`` times and the state is seen as ``(K / T, T * R)``
blocks (:func:`block_size`); element by element the operations are the same.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.protocols.borrowers import (
    entry_health_factors,
    forced_sales,
    fresh_positions,
    inverse_entry_hf,
    kept_by_liquidators,
    liquidate_hit_buckets,
    pool_sales,
    refresh_buckets,
)
from defialloc.envs.protocols.params import PopulationParams, ReserveArrays, check_range

# Inner-loop length (elements) the blocks aim at: long enough for numpy's fast loops, short enough
# for the tiled vectors to stay in cache (measured: 4-16 x 1280 beats both 1 and 48 x 1280).
_BLOCK_ELEMENTS = 16384
# Below this many rows the broadcasts are cheap and tiling would only add calls.
_MIN_TILED_ROWS = 128


def block_size(n_buckets: int, n_rows: int) -> int:
    """Buckets ``T`` per block: the largest divisor of ``K`` with ``T * R <= _BLOCK_ELEMENTS`` (1:
    no tiling, for small batches)."""
    if n_rows < _MIN_TILED_ROWS:
        return 1
    fits = [t for t in range(1, n_buckets + 1) if n_buckets % t == 0]
    return max(t for t in fits if t == 1 or t * n_rows <= _BLOCK_ELEMENTS)


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
        # (K / T, T * R) block views of the same memory and T-fold tiles of per-row vectors
        tile = block_size(n_buckets, rows)
        blocks = (n_buckets // tile, tile * rows)
        self._state_blocks = self._state.reshape(2, *blocks)
        self._units_blocks = self._state_blocks[0]
        self._scratch_blocks = self._scratch.reshape(blocks)
        self._tiles = np.empty((2, tile, rows))
        inv_hf = inverse_entry_hf(self.entry_hf)[:, None]
        if tile > 1:  # a constant (K, R) array in blocks: no per-row vector can broadcast it
            inv_hf = np.broadcast_to(inv_hf, (n_buckets, rows)).reshape(blocks)
        self._inv_hf_blocks = inv_hf
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
        debt = debt_times_hf.reshape(-1) / self.entry_hf[:, None]
        units = np.broadcast_to(units.reshape(-1), debt.shape).reshape(-1)
        self._debt.reshape(-1)[at] = debt.reshape(-1)
        self._units.reshape(-1)[at] = units
        self._fresh.reshape(-1)[at] = units

    def _tiled(self, row: np.ndarray, slot: int) -> np.ndarray:
        """``row`` ``(R,)`` repeated ``T`` times (in tile buffer ``slot``) to broadcast over blocks."""
        if self._tiles.shape[1] == 1:
            return row
        tiles = self._tiles[slot]
        tiles[:] = row
        return tiles.reshape(-1)

    def step(self, price_low: np.ndarray, price_close: np.ndarray) -> np.ndarray:
        """One ``population_step`` of every env at the step's ``(B, N)`` low and close; returns the
        ``(B, N)`` collateral units the liquidators sell into the agent's pools this step: the
        ``pool_share_of_sales`` of the population's forced sales (:func:`pool_sales`)."""
        sales = np.zeros(price_low.shape)
        low = price_low.reshape(-1)
        # the test liquidate_population starts with: HF < 1 <=> C * LT < D
        low_threshold = self._tiled(low * self._threshold_rows, 0)
        np.multiply(self._units_blocks, low_threshold, out=self._scratch_blocks)
        np.less(self._scratch, self._debt, out=self._hit)
        if self._hit.any():  # on nearly every step at B = 256, on a fifth of them at B = 1
            rows = np.flatnonzero(np.logical_or.reduce(self._hit, axis=0))
            sold = self._liquidate(rows, self._hit[:, rows], low)
            sales.reshape(-1)[rows] = pool_sales(sold, self.params)
        rate = self.params.refresh_rate_per_step
        if rate:
            close_threshold = self._tiled(price_close.reshape(-1) * self._threshold_rows, 0)
            refresh_buckets(
                self._state_blocks, self._tiled(self._fresh[0], 1), close_threshold,
                self._inv_hf_blocks, rate, self._scratch_blocks,
            )  # fmt: skip
        return sales

    def _liquidate(self, rows: np.ndarray, hit: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Liquidation calls on the hit buckets (``hit`` ``(K, len(rows))``: the liquidatable
        buckets of ``rows``; ``low`` ``(B * N,)``); updates the state and returns the
        ``(len(rows),)`` forced sales."""
        n_buckets, n_rows = self._hit.shape
        # row-major positions in the (len(rows), K) block, as hit_positions gives them
        pos = np.flatnonzero(hit.T)
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
