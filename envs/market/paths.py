"""The market-scenario container shared by every market source and the simulator.

A :class:`MarketPaths` holds ``B`` independent scenario paths of ``L`` time points each.
Index ``warmup`` is the first decision time of an episode; indices ``< warmup`` are history the
agent may observe (trailing windows) but never trades in. Every array is indexed
``[path, time, ...]``; prices are USD per unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: the arrays that must be finite and > 0 everywhere (prices, depth, gas)
POSITIVE_FIELDS = (
    "close",
    "high",
    "low",
    "numeraire_usd",
    "depth_multiplier",
    "gas_price_gwei",
    "eth_usd",
)


@dataclass(frozen=True)
class MarketPaths:
    """A batch of market scenarios.

    Attributes:
        asset_names: names of the ``N`` risky (non-numeraire) assets, column order of the price arrays.
        close: ``(B, L, N)`` close (oracle/market) price of each asset in USD at each time point.
        high: ``(B, L, N)`` intra-step high in USD (the max reached between ``t-1`` and ``t``).
        low: ``(B, L, N)`` intra-step low in USD (liquidations check against it).
        numeraire_usd: ``(B, L)`` USD price of the stablecoin numeraire (e.g. USDC); 1.0 unless depegged.
        regime: ``(B, L)`` int8 regime code, an index into ``regime_names``.
        regime_names: names of the regimes, e.g. ``("calm", "bull", "crash")``.
        depth_multiplier: ``(B, L)`` multiplier (> 0) on the pools' baseline depth; < 1 when liquidity dries up.
        gas_price_gwei: ``(B, L)`` gas price in gwei.
        eth_usd: ``(B, L)`` ETH price in USD (gas is paid in ETH).
        warmup: number of history points before the first decision time.
        step_days: length of one step in days (1.0 for daily data).
        dates: optional datetime64[D] dates (replay only; None for synthetic/bootstrap): ``(L,)`` when every
            path shares one window, else ``(B, L)``.
        cond_var: ``(B, L, N)`` float32 true conditional GARCH variance ``h`` ((log return)^2 per step,
            BEFORE the regime's vol multiplier) of the step that ends at each time point (synthetic
            only; None for replay/bootstrap paths). ``cond_var[:, t + 1]`` depends on the shocks up to
            ``t`` only: it is known at decision time ``t``, but only upper references are told it
            (``defialloc.evaluation.rollout.oracle_info``); features and baselines never read it.
    """

    asset_names: tuple[str, ...]
    close: np.ndarray
    high: np.ndarray
    low: np.ndarray
    numeraire_usd: np.ndarray
    regime: np.ndarray
    regime_names: tuple[str, ...]
    depth_multiplier: np.ndarray
    gas_price_gwei: np.ndarray
    eth_usd: np.ndarray
    warmup: int
    step_days: float = 1.0
    dates: np.ndarray | None = field(default=None)
    cond_var: np.ndarray | None = field(default=None)

    @property
    def n_paths(self) -> int:
        return int(self.close.shape[0])

    @property
    def length(self) -> int:
        return int(self.close.shape[1])

    @property
    def n_assets(self) -> int:
        return int(self.close.shape[2])

    def validate(self) -> None:
        """Raise ValueError naming the offending array when shapes or values are inconsistent."""
        b, length, n = self.close.shape
        if n != len(self.asset_names):
            raise ValueError(
                f"close has {n} asset columns but asset_names has {len(self.asset_names)}"
            )
        for name in ("high", "low"):
            arr = getattr(self, name)
            if arr.shape != (b, length, n):
                raise ValueError(f"{name} has shape {arr.shape}, expected {(b, length, n)}")
        for name in ("numeraire_usd", "regime", "depth_multiplier", "gas_price_gwei", "eth_usd"):
            arr = getattr(self, name)
            if arr.shape != (b, length):
                raise ValueError(f"{name} has shape {arr.shape}, expected {(b, length)}")
        for name in POSITIVE_FIELDS:
            arr = getattr(self, name)
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise ValueError(f"{name} must be finite and > 0 everywhere")
        if np.any(self.high < self.close * (1 - 1e-12)) or np.any(
            self.low > self.close * (1 + 1e-12)
        ):
            raise ValueError("high must be >= close >= low at every point")
        if self.cond_var is not None:
            if self.cond_var.shape != (b, length, n):
                raise ValueError(
                    f"cond_var has shape {self.cond_var.shape}, expected {(b, length, n)}"
                )
            if not np.all(np.isfinite(self.cond_var)) or np.any(self.cond_var <= 0):
                raise ValueError("cond_var must be finite and > 0 everywhere")
        if not 0 <= self.warmup < length:
            raise ValueError(f"warmup={self.warmup} must be in [0, {length})")

    def take(self, index: np.ndarray | list[int]) -> MarketPaths:
        """Return the sub-batch of paths ``index`` (same time axis)."""
        idx = np.asarray(index)
        return MarketPaths(
            asset_names=self.asset_names,
            close=self.close[idx],
            high=self.high[idx],
            low=self.low[idx],
            numeraire_usd=self.numeraire_usd[idx],
            regime=self.regime[idx],
            regime_names=self.regime_names,
            depth_multiplier=self.depth_multiplier[idx],
            gas_price_gwei=self.gas_price_gwei[idx],
            eth_usd=self.eth_usd[idx],
            warmup=self.warmup,
            step_days=self.step_days,
            dates=self.dates[idx]
            if self.dates is not None and self.dates.ndim == 2
            else self.dates,
            cond_var=None if self.cond_var is None else self.cond_var[idx],
        )
