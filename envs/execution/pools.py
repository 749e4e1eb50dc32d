"""State of the constant-product pools of every env: ``K`` fee tiers per risky asset vs the numeraire.

A pool's reserves are ``asset`` (asset units) and ``num`` (numeraire units); its price is
``num / asset`` (numeraire per asset). Between steps, external arbitrage brings each pool back within
its fee band around the market price, and liquidity providers scale its depth to the regime's level
(``depth_multiplier``).

Layout: :attr:`PoolBook.reserves` is one ``(2, K, N, B)`` array, side-major (asset side, then
numeraire side), then fee tier, asset and env innermost. Per-tier operations then run over long
contiguous ``(N, B)`` planes, per-order masks ``(N, B)`` broadcast over the leading axes for free,
sums over tiers or assets are row additions, and the side axis lets one ``np.where`` orient both
sides of every pool for an order (input side first). The ``(B, N, K)`` layout costs several times
more per operation because its inner axis has only K elements. :attr:`PoolBook.reserve_asset` /
:attr:`PoolBook.reserve_num` keep offering ``(B, N, K)`` views for code outside the hot path.
"""

from __future__ import annotations

import numpy as np

from defialloc.envs.execution.router import route_pool_major
from defialloc.envs.protocols.amm import FeeTerms, band_multipliers, fee_terms


class PoolBook:
    """Reserves of all pools of a batch of envs, and their static parameters.

    Attributes:
        fees: ``(K,)`` swap fee per tier (fraction).
        depth_shares: ``(K,)`` share of the pair's depth in each tier (sums to 1).
        depth_usd: ``(N,)`` baseline pair depth (both sides, USD) at ``depth_multiplier == 1``.
        reserves: ``(2, K, N, B)`` C-contiguous: ``[0]`` asset units, ``[1]`` numeraire units (see
            the module docstring). Replaced by a new array when the pools move.
        terms: fee terms at ``(K, N, B)`` (read-only), for the hot paths; ``flat_terms`` the same
            at ``(K, N * B)``.
    """

    def __init__(
        self,
        fees: np.ndarray,
        depth_shares: np.ndarray,
        depth_usd: np.ndarray,
        reserve_asset: np.ndarray,
        reserve_num: np.ndarray,
    ) -> None:
        """Reserves ``reserve_asset``/``reserve_num`` are given ``(B, N, K)`` (copied)."""
        self.fees = np.asarray(fees, dtype=np.float64)
        self.depth_shares = np.asarray(depth_shares, dtype=np.float64)
        self.depth_usd = np.asarray(depth_usd, dtype=np.float64)
        sides = (
            np.asarray(r, dtype=np.float64).transpose(2, 1, 0) for r in (reserve_asset, reserve_num)
        )
        self.reserves = np.ascontiguousarray(np.stack(tuple(sides)))
        shape = self.reserves.shape[1:]
        self.terms: FeeTerms = fee_terms(self.fees[:, None, None], shape)
        self.flat_terms = FeeTerms(*(t.reshape(shape[0], -1) for t in self.terms))
        # np.maximum(x, 1.0) takes numpy's slow scalar-broadcast path; an array of ones does not
        self._one = np.ones(shape)
        self._one.setflags(write=False)
        # Per-tier side value at depth multiplier 1, (K, N, 1) USD: 0.5 * depth * share.
        self._side_usd = (0.5 * self.depth_usd[None, :, None]) * self.depth_shares[:, None, None]
        # the same at the full (K, N, B) shape: a (K, N, 1) operand broadcast over B is ~2x slower
        self._side_full = np.ascontiguousarray(np.broadcast_to(self._side_usd, shape))
        self._side_full.setflags(write=False)
        self._terms_by_count: dict[int, FeeTerms] = {}  # sell_asset's, by order count

    @classmethod
    def empty(
        cls, n_envs: int, fees: np.ndarray, depth_shares: np.ndarray, depth_usd: np.ndarray
    ) -> PoolBook:
        shape = (n_envs, depth_usd.shape[0], fees.shape[0])
        return cls(fees, depth_shares, depth_usd, np.ones(shape), np.ones(shape))

    # ------------------------------------------------------------------ views
    @property
    def asset(self) -> np.ndarray:
        """``(K, N, B)`` asset reserves (a view of :attr:`reserves`)."""
        return self.reserves[0]

    @property
    def num(self) -> np.ndarray:
        """``(K, N, B)`` numeraire reserves (a view of :attr:`reserves`)."""
        return self.reserves[1]

    @property
    def reserve_asset(self) -> np.ndarray:
        """``(B, N, K)`` view of the asset reserves; item writes go to the book."""
        return self.reserves[0].transpose(2, 1, 0)

    @reserve_asset.setter
    def reserve_asset(self, value: np.ndarray) -> None:
        self.reserves[0] = np.asarray(value).transpose(2, 1, 0)

    @property
    def reserve_num(self) -> np.ndarray:
        """``(B, N, K)`` view of the numeraire reserves; item writes go to the book."""
        return self.reserves[1].transpose(2, 1, 0)

    @reserve_num.setter
    def reserve_num(self, value: np.ndarray) -> None:
        self.reserves[1] = np.asarray(value).transpose(2, 1, 0)

    # ------------------------------------------------------------------ market moves
    def target_liquidity(
        self, price_usd: np.ndarray, numeraire_usd: np.ndarray, depth_multiplier: np.ndarray
    ) -> np.ndarray:
        """``sqrt(k)`` of each pool ``(B, N, K)`` when its two sides are each worth half its depth in USD.

        ``price_usd`` ``(B, N)``, ``numeraire_usd`` and ``depth_multiplier`` ``(B,)``.
        """
        return self._liquidity(price_usd, numeraire_usd, depth_multiplier).transpose(2, 1, 0)

    def _liquidity(
        self, price_usd: np.ndarray, numeraire_usd: np.ndarray, depth_multiplier: np.ndarray
    ) -> np.ndarray:
        """:meth:`target_liquidity` pool-major, ``(K, N, B)`` (C-contiguous)."""
        root_price = np.multiply(price_usd.T, numeraire_usd, out=_plane(price_usd))
        np.sqrt(root_price, out=root_price)
        liquidity = np.multiply(self._side_usd, depth_multiplier)
        liquidity /= root_price
        return liquidity

    def set_at_market(
        self,
        index: np.ndarray,
        price_usd: np.ndarray,
        numeraire_usd: np.ndarray,
        depth_multiplier: np.ndarray,
    ) -> None:
        """Place the pools of envs ``index`` exactly at the market price with the regime's depth.

        ``price_usd`` ``(len(index), N)``, ``numeraire_usd`` and ``depth_multiplier`` ``(len(index),)``.
        """
        liquidity = self._liquidity(price_usd, numeraire_usd, depth_multiplier)
        root_price = np.divide(price_usd.T, numeraire_usd, out=_plane(price_usd))
        np.sqrt(root_price, out=root_price)
        self.reserves[0][:, :, index] = liquidity / root_price
        self.reserves[1][:, :, index] = liquidity * root_price

    def sell_asset(self, env: np.ndarray, asset: np.ndarray, amount: np.ndarray) -> np.ndarray:
        """Sell ``amount[i]`` units of asset ``asset[i]`` for the numeraire in env ``env[i]``'s pools.

        Each order is split optimally across the pair's fee tiers with no gas (a liquidator's
        router; the same fills as :func:`~defialloc.envs.execution.router.route_order`), and the reserves move
        in place. ``env``, ``asset``, ``amount``: ``(n,)``, distinct ``(env, asset)`` pairs, amounts
        ``>= 0`` in asset units. Returns ``(n,)`` the pair's liquidity-weighted price (sum of
        numeraire / sum of asset reserves over its tiers) after the sale over before it.
        """
        before = self.reserves[:, :, asset, env]  # (2, K, n)
        split, out = route_pool_major(
            amount, before[0], before[1], self._order_terms(amount.size), None
        )
        after = np.empty_like(before)
        np.add(before[0], split, out=after[0])
        np.subtract(before[1], out, out=after[1])
        self.reserves[:, :, asset, env] = after
        weighted = before.sum(1)
        after_sum = after.sum(1)
        return after_sum[1] / after_sum[0] / (weighted[1] / weighted[0])

    def _order_terms(self, n_orders: int) -> FeeTerms:
        """Fee terms at ``(K, n_orders)`` for :meth:`sell_asset`, cached per order count."""
        terms = self._terms_by_count.get(n_orders)
        if terms is None:
            terms = fee_terms(self.fees[:, None], (self.fees.shape[0], n_orders))
            self._terms_by_count[n_orders] = terms
        return terms

    def realign(
        self, price_usd: np.ndarray, numeraire_usd: np.ndarray, depth_multiplier: np.ndarray
    ) -> None:
        """Arbitrage every pool back into its fee band around the market, then rescale its depth.

        ``price_usd`` ``(B, N)`` USD, ``numeraire_usd`` and ``depth_multiplier`` ``(B,)``. Replaces
        :attr:`reserves` by a new array (arrays taken before stay as they were).
        """
        asset, num = self.reserves
        price_num = np.divide(price_usd.T, numeraire_usd, out=_plane(price_usd))  # (N, B)
        asset_value = np.multiply(asset, price_num)  # numeraire units
        mult = band_multipliers(asset_value, num, self.terms, self._one)
        moved = np.multiply(self.reserves, mult, out=mult)
        # liquidity providers rescale sqrt(k) to the target depth, keeping the pool price
        scale = np.multiply(moved[0], moved[1], out=asset_value)
        np.sqrt(scale, out=scale)
        # the target sqrt(k), as _liquidity computes it at the full shape (the same products)
        root_price = np.multiply(price_usd.T, numeraire_usd, out=price_num)
        np.sqrt(root_price, out=root_price)
        liquidity = np.multiply(self._side_full, depth_multiplier)
        liquidity /= root_price
        np.divide(liquidity, scale, out=scale)
        moved *= scale
        self.reserves = moved


def _plane(per_env: np.ndarray) -> np.ndarray:
    """An empty C-contiguous ``(N, B)`` array for a ``(B, N)`` input (its transpose)."""
    return np.empty(per_env.shape[::-1])
