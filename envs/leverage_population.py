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
batched precompute. A step's liquidation calls only get the envs that have a liquidatable bucket
(the same calls, row by row identical: results never depend on the batch).
"""

from __future__ import annotations

import numpy as np

from envs.protocols.borrowers import (
    BorrowerPopulation,
    init_population,
    liquidate_population,
    refresh_population,
)
from envs.protocols.params import PopulationParams, ReserveArrays


class BorrowerCascades:
    """Population state of ``n_envs`` envs: ``(B, N, K)`` collateral units and debt per bucket.

    ``reserves`` gives each asset's liquidation threshold, bonus and protocol fee; ``depth_usd``
    ``(N,)`` the pool depth (both sides, USD) at depth multiplier 1 that sizes the population.
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
        shape = (n_envs, depth_usd.shape[0], params.n_buckets)
        self.units = np.zeros(shape)
        self.debt = np.zeros(shape)
        self.fresh = np.zeros(shape)
        self.entry_hf = init_population(
            np.ones(1), np.ones(1), reserves.liq_threshold[:1], params
        ).entry_hf

    def reset(
        self, index: np.ndarray, entry_price: np.ndarray, depth_multiplier: np.ndarray
    ) -> None:
        """New populations for envs ``index``, levered at ``entry_price`` ``(b, N)`` with the pools at
        ``depth_multiplier`` ``(b,)`` x their baseline depth."""
        depth = self.depth_usd[None, :] * depth_multiplier[:, None]
        population = init_population(entry_price, depth, self.reserves.liq_threshold, self.params)
        self.units[index] = population.collateral_units
        self.debt[index] = population.debt_usd
        self.fresh[index] = population.fresh_collateral_units

    def step(self, price_low: np.ndarray, price_close: np.ndarray) -> np.ndarray:
        """One ``population_step`` of every env at the step's ``(B, N)`` low and close; returns the
        ``(B, N)`` collateral units the liquidators sell into the pools this step."""
        reserves, params = self.reserves, self.params
        threshold = reserves.liq_threshold
        sales = np.zeros(price_low.shape)
        # the test liquidate_population starts with: HF < 1 <=> C * LT < D
        hit = (self.units * (price_low[..., None] * threshold[:, None]) < self.debt).any(
            axis=(1, 2)
        )
        if hit.any():
            rows = np.flatnonzero(hit)
            sub = BorrowerPopulation(
                self.units[rows], self.debt[rows], self.fresh[rows], self.entry_hf
            )
            result = liquidate_population(
                sub,
                price_low[rows],
                threshold,
                reserves.liq_bonus,
                reserves.liq_protocol_fee,
                params,
            )
            self.units[rows] = result.population.collateral_units
            self.debt[rows] = result.population.debt_usd
            sales[rows] = result.forced_sale_units
        refreshed = refresh_population(
            BorrowerPopulation(self.units, self.debt, self.fresh, self.entry_hf),
            price_close,
            threshold,
            params.refresh_rate_per_step,
        )
        self.units, self.debt = refreshed.collateral_units, refreshed.debt_usd
        return sales
