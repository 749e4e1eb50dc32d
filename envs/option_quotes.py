"""The options venue's quotes along a scenario: implied vols, mids, bids and asks of any contract.

At decision time ``t`` the at-the-money implied vol of an option with ``tau`` steps to expiry is

    atm(t, tau) = sqrt(E[realized variance over the next tau steps] x steps per year) x premium[k_t]

(:class:`defialloc.envs.protocols.options.VarianceForecast`) with ``k_t`` the regime at ``t`` and the next
step's variance ``h_{t+1}`` from :func:`variance_series`:

* ``auto`` on synthetic paths: the generator's own conditional expectation (its true GARCH variance
  ``MarketPaths.cond_var[:, t + 1]``, regime multipliers, transition and jumps), so that the
  premium is exactly the ratio of implied to expected realized vol (an informed options market: the
  implied vol reveals the true conditional variance, as real implied vols carry the market's
  information);
* ``garch_filter`` (and ``auto`` on replayed or bootstrapped paths, which have no true state): the
  trader model's causal GARCH(1,1) forecast of the next step's variance (the ``garch_vol`` block's),
  mean-reverting to its unconditional level with persistence ``alpha + beta``, no regime terms.

The strike's vol is the smile :func:`defialloc.envs.protocols.options.surface_vol` around it (the regime's
skew and curvature). Quotes: mid at that vol (Black-76, forward ``F = S exp(r T)``), ask at
``vol + h`` and bid at ``max(vol - h, 0)`` with ``h`` the regime's half-spread in vol, then widened
by ``min_half_spread_of_underlying x S`` each side (bid floored at 0). Everything is vectorized over
envs, assets and contracts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.config import SimulationConfig
from defialloc.envs.features.garch import garch_forecast
from defialloc.envs.features.model import TraderModel
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.synthetic_model import model_of, step_transition
from defialloc.envs.protocols.options import (
    Greeks,
    VarianceForecast,
    black76_greeks_unchecked,
    black76_price_unchecked,
    surface_vol,
)
from defialloc.envs.protocols.options_params import OptionsParams

DAYS_PER_YEAR = 365.0
#: the per-path series the venue adds to a drawn episode (``DrawnEpisodes.protocol_series``)
SERIES = "option_h_next"


@dataclass(frozen=True)
class Quote:
    """Quotes of contracts ``(..., K)`` (USD per unit of the underlying): ``mid``, ``bid``, ``ask``,
    the implied ``vol`` (annual), ``time_years`` to expiry and the ``forward`` (USD)."""

    mid: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    vol: np.ndarray
    time_years: np.ndarray
    forward: np.ndarray


class VenueSurface:
    """The venue's forecast tables and per-regime surface parameters for one config's assets."""

    def __init__(self, config: SimulationConfig, params: OptionsParams) -> None:
        market = config.market
        self.params = params
        self.step_days = float(market.step_days)
        self.steps_per_year = DAYS_PER_YEAR / self.step_days
        self.max_steps = int(params.tenor_steps(self.step_days).max())
        garch = TraderModel.from_market(market, with_regime=False).garch
        self.garch = garch
        phi = garch.alpha + garch.beta
        # the causal filter's view: one regime, no multiplier, no jumps
        self.filter_table = VarianceForecast.build(
            h_bar=garch.h_bar,
            persistence=phi,
            transition=np.ones((3, 1)) @ np.ones((1, 3)) / 3.0,  # any regime maps to the same row
            vol_multiplier=np.ones(3),
            jump_var=np.zeros((3, garch.h_bar.size)),
            max_steps=self.max_steps,
            step_days=self.step_days,
        )
        self.model_table: VarianceForecast | None = None
        if market.source == "synthetic" and params.vol_forecast == "auto":
            self.model_table = _model_table(config, phi, self.max_steps)
        self.premium = params.variance_premium.array()
        self.skew = params.skew.array()
        self.smile = params.smile.array()
        self.half_spread = params.half_spread_vol.array()

    def table_for(self, paths_have_truth: bool) -> VarianceForecast:
        """The forecast table of paths with (synthetic) or without a true state."""
        if paths_have_truth and self.model_table is not None:
            return self.model_table
        return self.filter_table

    def variance_series(self, paths: MarketPaths) -> np.ndarray:
        """``(K, L, N)`` the next step's variance ``h_{t+1}`` as the venue sees it at every point ``t``.

        With the generator's truth (``auto`` on synthetic paths): ``cond_var[:, t + 1]``, and at the
        last point its expectation ``h_bar + phi (h_t - h_bar)``. Otherwise the causal GARCH forecast
        made at ``t`` (:func:`defialloc.envs.features.garch_forecast`, row ``t`` uses prices up to ``t``).
        """
        g = self.garch
        if self.model_table is not None and paths.cond_var is not None:
            h = np.empty(paths.close.shape)
            h[:, :-1] = paths.cond_var[:, 1:]
            last = paths.cond_var[:, -1].astype(np.float64)
            h[:, -1] = g.h_bar + (g.alpha + g.beta) * (last - g.h_bar)
            return h
        r = np.zeros((paths.length, paths.n_paths, paths.n_assets))
        prices = paths.close.transpose(1, 0, 2)
        np.log(prices[1:] / prices[:-1], out=r[1:])
        return np.ascontiguousarray(garch_forecast(r, g).transpose(1, 0, 2))

    # ---------------------------------------------------------------------------- quotes
    def quote(
        self,
        table: VarianceForecast,
        regime: np.ndarray,
        h_next: np.ndarray,
        index: np.ndarray,
        strike: np.ndarray,
        steps: np.ndarray,
        is_call: np.ndarray,
    ) -> Quote:
        """Quotes of contracts ``(B, N, K)`` at the decision time of ``B`` envs.

        Args:
            regime: ``(B,)`` regime codes at ``t``; h_next: ``(B, N)`` next step's variance;
            index: ``(B, N)`` USD index prices; strike: ``(B, N, K)`` USD; steps: ``(B, N, K)`` int
            steps to expiry (>= 1; pass 1 for empty slots); is_call: broadcastable to strike.
        """
        p = self.params
        s = np.minimum(np.maximum(steps, 1), table.max_steps)
        atm = table.annual_vol(regime, h_next, s) * self.premium[regime][:, None, None]
        t_years = steps / self.steps_per_year
        forward = index[..., None] * np.exp(p.rate * t_years)
        k = regime[:, None, None]
        vol = surface_vol(
            atm,
            forward,
            strike,
            t_years,
            self.skew[k],
            self.smile[k],
            p.smile_floor_ratio,
            p.smile_cap_ratio,
        )
        h = self.half_spread[k]
        # one Black-76 evaluation for the mid, the ask (vol + h) and the bid (vol - h)
        vols = np.stack([vol, vol + h, np.maximum(vol - h, 0.0)])
        mid, ask, bid = black76_price_unchecked(
            forward, strike, t_years, vols, np.asarray(p.rate), is_call
        )
        tick = p.min_half_spread_of_underlying * index[..., None]
        ask = ask + tick
        bid = np.maximum(bid - tick, 0.0)
        return Quote(mid, bid, ask, vol, t_years, forward)

    def atm_vol(
        self, table: VarianceForecast, regime: np.ndarray, h_next: np.ndarray, steps: int
    ) -> np.ndarray:
        """``(B, N)`` at-the-money implied vol for ``steps`` steps to expiry (the smile is 1 there)."""
        s = np.full((*h_next.shape, 1), min(max(steps, 1), table.max_steps))
        return table.annual_vol(regime, h_next, s)[..., 0] * self.premium[regime][:, None]

    def spot_greeks(self, quote: Quote, strike: np.ndarray, is_call: np.ndarray) -> Greeks:
        """Per-unit sensitivities to the INDEX (``F = S exp(r T)``): delta ``dV/dS``, gamma
        ``d2V/dS2`` (USD per USD^2), vega per 1.00 of vol, theta per year (sticky strike)."""
        rate = self.params.rate
        g = black76_greeks_unchecked(
            quote.forward, strike, quote.time_years, quote.vol, np.asarray(rate), is_call
        )
        carry = np.exp(rate * quote.time_years)
        return Greeks(g.delta * carry, g.gamma * carry * carry, g.vega, g.theta)


def _model_table(config: SimulationConfig, phi: np.ndarray, max_steps: int) -> VarianceForecast:
    """The generator's expected realized variance (regimes, multipliers, jumps, its GARCH)."""
    market = config.market
    syn = market.synthetic
    model = model_of(market)
    h_bar = (
        np.array([syn.garch[a].omega_daily for a in market.assets]) * market.step_days / (1.0 - phi)
    )
    q = (
        model.p_common.astype(np.float64)[:, None]
        + (1.0 - model.p_common.astype(np.float64)[:, None])
        * model.p_idio.astype(np.float64)[:, None]
    )  # (3, 1): P(the asset jumps in a step)
    m = model.jump_mean.astype(np.float64)[None, :]
    s = model.jump_std.astype(np.float64)[None, :]
    jump_var = q * (m * m + s * s) - (q * m) ** 2
    return VarianceForecast.build(
        h_bar=h_bar,
        persistence=phi,
        transition=step_transition(syn.transition_array(), market.step_days),
        vol_multiplier=syn.vol_multiplier.array(),
        jump_var=jump_var,
        max_steps=max_steps,
        step_days=market.step_days,
    )
