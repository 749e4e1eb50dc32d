"""State of the constant-product pools of every env: ``K`` fee tiers per risky asset vs the numeraire.

Reserves are arrays ``(B, N, K)``: ``reserve_asset`` in asset units, ``reserve_num`` in numeraire
units. A pool's price is ``reserve_num / reserve_asset`` (numeraire per asset). Between steps,
external arbitrage brings each pool back within its fee band around the market price, and liquidity
providers scale its depth to the regime's level (``depth_multiplier``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.protocols.amm import arbitrage_to_band, rescale_depth


@dataclass
class PoolBook:
    """Reserves of all pools of a batch of envs, and their static parameters.

    Attributes:
        fees: ``(K,)`` swap fee per tier (fraction).
        depth_shares: ``(K,)`` share of the pair's depth in each tier (sums to 1).
        depth_usd: ``(N,)`` baseline pair depth (both sides, USD) at ``depth_multiplier == 1``.
        reserve_asset, reserve_num: ``(B, N, K)`` reserves.
    """

    fees: np.ndarray
    depth_shares: np.ndarray
    depth_usd: np.ndarray
    reserve_asset: np.ndarray
    reserve_num: np.ndarray

    @classmethod
    def empty(
        cls, n_envs: int, fees: np.ndarray, depth_shares: np.ndarray, depth_usd: np.ndarray
    ) -> PoolBook:
        shape = (n_envs, depth_usd.shape[0], fees.shape[0])
        return cls(fees, depth_shares, depth_usd, np.ones(shape), np.ones(shape))

    def target_liquidity(
        self, price_usd: np.ndarray, numeraire_usd: np.ndarray, depth_multiplier: np.ndarray
    ) -> np.ndarray:
        """``sqrt(k)`` of each pool ``(B, N, K)`` when its two sides are each worth half its depth in USD."""
        side_usd = 0.5 * self.depth_usd[None, :, None] * self.depth_shares[None, None, :]
        side_usd = side_usd * depth_multiplier[:, None, None]
        return side_usd / np.sqrt(price_usd * numeraire_usd[:, None])[..., None]

    def set_at_market(
        self,
        index: np.ndarray,
        price_usd: np.ndarray,
        numeraire_usd: np.ndarray,
        depth_multiplier: np.ndarray,
    ) -> None:
        """Place the pools of envs ``index`` exactly at the market price with the regime's depth."""
        liquidity = self.target_liquidity(price_usd, numeraire_usd, depth_multiplier)
        price_num = (price_usd / numeraire_usd[:, None])[..., None]
        self.reserve_asset[index] = liquidity / np.sqrt(price_num)
        self.reserve_num[index] = liquidity * np.sqrt(price_num)

    def realign(
        self, price_usd: np.ndarray, numeraire_usd: np.ndarray, depth_multiplier: np.ndarray
    ) -> None:
        """Arbitrage every pool back into its fee band around the market, then rescale its depth."""
        price_num = (price_usd / numeraire_usd[:, None])[..., None]
        ra, rn = arbitrage_to_band(self.reserve_asset, self.reserve_num, price_num, self.fees)[:2]
        liquidity = self.target_liquidity(price_usd, numeraire_usd, depth_multiplier)
        self.reserve_asset, self.reserve_num = rescale_depth(ra, rn, liquidity)
