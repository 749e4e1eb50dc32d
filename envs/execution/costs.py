"""Named trading-cost objects: what one rebalance cost, by kind, and the gas model that prices it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import GasConfig
from defialloc.envs.protocols.gas import usd_per_gas_unit


@dataclass
class TradeCosts:
    """Costs of one step's trades per env, all ``(B,)`` arrays in USD.

    ``fees_usd``: swap fees (input amount x fee tier, valued at the market price of the input).
    ``slippage_usd``: market value given minus market value received, minus fees; it includes price
    impact and the pool's offset from the market within its fee band (so it can be slightly negative).
    ``gas_usd``: gas paid for every swap order and pool touched.
    """

    fees_usd: np.ndarray
    slippage_usd: np.ndarray
    gas_usd: np.ndarray

    @classmethod
    def zeros(cls, n_envs: int) -> TradeCosts:
        return cls(np.zeros(n_envs), np.zeros(n_envs), np.zeros(n_envs))

    @property
    def total_usd(self) -> np.ndarray:
        return self.fees_usd + self.slippage_usd + self.gas_usd

    def as_dict(self, index: int) -> dict[str, float]:
        return {
            "fees": float(self.fees_usd[index]),
            "slippage": float(self.slippage_usd[index]),
            "gas": float(self.gas_usd[index]),
        }


class GasModel:
    """Gas cost of swap orders: ``(overhead + units_per_pool * pools) * gwei * 1e-9 * ETH_usd``."""

    def __init__(self, cfg: GasConfig) -> None:
        self.enabled = cfg.enabled
        self.overhead_units = cfg.router_overhead_units
        self.units_per_pool = cfg.units_per_pool

    def usd_per_unit(self, gas_price_gwei: np.ndarray, eth_usd: np.ndarray) -> np.ndarray:
        """USD price of one gas unit per env ``(B,)`` (zero when gas is disabled).

        Not validated (hot path): the market path that supplies the gas price and the ETH price is.
        """
        if not self.enabled:
            return np.zeros_like(gas_price_gwei)
        return usd_per_gas_unit(gas_price_gwei, eth_usd)

    def orders_usd(
        self, n_orders: np.ndarray, n_pools: np.ndarray, usd_per_unit: np.ndarray
    ) -> np.ndarray:
        """USD gas of ``n_orders`` swap orders touching ``n_pools`` pools in all, per env ``(B,)``."""
        return (self.overhead_units * n_orders + self.units_per_pool * n_pools) * usd_per_unit
