"""Baselines that use the DeFi levers: ``levered_vol_target`` (borrows) and ``carry`` (perp hedges).

They need the lending market / the perps venue (``configs/leverage.yaml``) and refuse a spot-only
config. Like every baseline they see only the :class:`~defialloc.agents.policy.MarketView` (trailing prices,
current weights, health factor, and the protocol rates quoted at the decision time,
``MarketView.rates``), act through the env (same fees, slippage, gas, interest, funding) and emit
the env's full action (``defialloc.envs.leverage_actions.ActionLayout.compose``). Forecast vols: the EWMA of
:mod:`defialloc.agents.baselines.risk_based` (per step, simple returns).

Notation: ``E`` equity (USD, net of debt), ``l`` leverage = debt / equity, spot weights ``w``
``(N,)`` = risky value / gross assets ``(1 + l) E`` (the action's spot block), ``LT_i`` / ``LTV_i``
the lending reserve's liquidation threshold / loan-to-value, ``s_i`` a one-step forecast vol.

``levered_vol_target``: the ``vol_target`` exposure ``e = target_vol / vol_ann`` (of the base
portfolio ``b``), allowed above 1 by borrowing: ``e <= 1`` holds ``e b`` and cash, no debt;
``e > 1`` holds ``b`` with ``l = e - 1``, capped by :func:`leverage_cap`:

- ``l <= LTw / (hf_floor - LTw)``, ``LTw = sum_i w_i LT_i``: the health factor right after the trade,
  ``HF = (1 + l) LTw / l``, is at least ``hf_floor``;
- ``l <= c / (1 - c)``, ``c = sum_i w_i LT_i max(1 - k_sigma s_i, 0)``: if every asset falls by
  ``k_sigma`` of its forecast vols at once (crashes are correlated: conservative), ``HF >= 1``;
- ``l <= S / (1 - S)``, ``S = ltv_buffer sum_i w_i LTV_i`` (the env's own clip) and
  ``l <= max_leverage`` (the parameter, default the env's ``env.lending.max_leverage``).

The caps are re-checked EVERY step on the current weights, whatever the schedule: when the current
leverage exceeds them (prices fell, vol rose) or the HF is under ``hf_floor``, the debt is cut to
the cap minus ``no_trade_band`` (a hysteresis, so the next small move does not trade again).

``carry``: spot holdings plus a short perp hedge (size ``-h_i x units_i``) on the assets whose
current funding rate, annualized (``funding_rate x 365 / step_days``), pays the short more than
``min_funding_annual`` (an open short is kept while the rate stays above ``exit_funding_annual``:
a hysteresis, as the rate is an AR(1) around its regime's mean and one threshold would flip daily). USDC cash is the perps' cross margin, so the spot book is sized to leave
enough of it: a short of notional ``n_i`` survives an up-move ``x_i = k_sigma s_i`` (maintenance
margin ``mmf_i`` at the moved price) when the cash covers ``sum_i n_i (x_i + mmf_i (1 + x_i))``;
per unit of hedged notional the policy reserves :func:`short_margin_per_notional`
``m_i = max(k s_i + mmf_i (1 + k s_i), margin_buffer IMF_i) + 2 trading_fee`` (the second term is the
env's initial-margin rule, the fee its fee bound). With base weights ``b`` and hedge ratio ``h``
the invested share is ``q = min(1 - cash_weight, 1 / (1 + sum_i b_i h_i m_i))``; the assets whose
funding does not pay stay in the book unhedged. At every step the hedges are scaled down when the
current cash no longer covers them. ``k_sigma`` defaults to 10: the forecast is a diffusive EWMA
vol, and the market's jumps (up to +50 % in a day for the small caps) liquidated shorts sized for
4-6 vols on the validation scenarios. (A pure basis trade, selling the assets whose funding does
not pay, was tried and dropped: the funding rate changes sign every few days, and every flip
round-trips the spot through the pools, which cost ~30 % a year on validation scenarios.)
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from defialloc.agents.baselines.policies import BaselinePolicy, _clean_weights
from defialloc.agents.baselines.risk_based import (
    VolParams,
    VolTargetParams,
    VolTargetPolicy,
    base_weights,
    forecast_cov,
    forecast_vol,
)
from defialloc.agents.policy import MarketView
from defialloc.envs.actions import weights_to_actions
from defialloc.envs.config import SimulationConfig
from defialloc.envs.leverage_actions import ActionLayout
from defialloc.envs.leverage_paths import ProtocolSetup
from defialloc.envs.market.config import DAYS_PER_YEAR


# ---------------------------------------------------------------------------------------- formulas
def leverage_cap(
    weights: np.ndarray,
    sigma: np.ndarray | None,
    *,
    liq_threshold: np.ndarray,
    ltv: np.ndarray,
    ltv_buffer: float,
    hf_floor: float,
    k_sigma: float,
    max_leverage: float,
) -> np.ndarray:
    """``(M,)`` largest debt / equity for spot weights ``(M, N)`` (fractions of gross assets, risky
    only) under the four caps of the module docstring; 0 without a vol forecast (``sigma`` None)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if sigma is None:
        return np.zeros(w.shape[0])
    lt_w = w @ liq_threshold
    hf_gap = hf_floor - lt_w
    hf_cap = np.where(hf_gap > 0.0, lt_w / np.where(hf_gap > 0.0, hf_gap, 1.0), np.inf)
    c = (w * liq_threshold * np.maximum(1.0 - k_sigma * sigma, 0.0)).sum(axis=1)
    move_cap = c / np.maximum(1.0 - c, 1e-12)
    s = ltv_buffer * (w @ ltv)
    ltv_cap = s / np.maximum(1.0 - s, 1e-12)
    return np.clip(np.minimum.reduce([hf_cap, move_cap, ltv_cap]), 0.0, max_leverage)


def short_margin_per_notional(
    sigma: np.ndarray,
    k_sigma: float,
    *,
    mmf: np.ndarray,
    imf: np.ndarray,
    margin_buffer: float,
    trading_fee: float,
) -> np.ndarray:
    """``(M, N)`` cash to reserve per unit of short perp notional (module docstring): enough that an
    up-move of ``k_sigma * sigma`` leaves the margin above maintenance, at least the env's
    ``margin_buffer x IMF``, plus twice the taker fee."""
    move = k_sigma * np.asarray(sigma, dtype=np.float64)
    survive = move + mmf * (1.0 + move)
    return np.maximum(survive, margin_buffer * imf) + 2.0 * trading_fee


def _requires(config: SimulationConfig, name: str, lever: str) -> None:
    if not getattr(config.env, lever).enabled:
        what = "lending market" if lever == "lending" else "perps venue"
        raise ValueError(
            f"{name} needs the {what} (env.{lever}.enabled=true), but this config is spot-only "
            f"there; run it on a lending + perps config, e.g. --config configs/leverage.yaml"
        )


# ---------------------------------------------------------------------------------------- levered vol target
class LeveredVolTargetParams(VolTargetParams):
    """Vol target with borrowing, a health-factor floor and a k-sigma liquidation buffer."""

    target_vol: float = Field(default=0.8, gt=0.0, le=5.0, description="annual")
    max_leverage: float | None = Field(
        default=None, ge=0.0, le=50.0, description="debt / equity cap (None: the env's)"
    )
    hf_floor: float = Field(default=1.5, gt=1.0, le=10.0, description="minimum health factor")
    k_sigma: float = Field(
        default=4.0, ge=0.0, le=20.0, description="one-step forecast vols a move must survive"
    )


class LeveredVolTargetPolicy(VolTargetPolicy):
    """``vol_target`` that may borrow up to the caps of the module docstring (lending env only)."""

    name = "levered_vol_target"
    params_model = LeveredVolTargetParams
    needs_config = True

    def __init__(
        self, n_assets: int, config: SimulationConfig, name: str | None = None, **params: Any
    ) -> None:
        super().__init__(n_assets, name=name, **params)
        _requires(config, self.name, "lending")
        lend = config.env.lending
        setup = ProtocolSetup.load(tuple(config.market.assets), lend.params_path, None)
        assert setup.reserves is not None
        self.liq_threshold, self.ltv = setup.reserves.liq_threshold, setup.reserves.ltv
        self.ltv_buffer, self.env_max_leverage = lend.ltv_buffer, lend.max_leverage
        p: LeveredVolTargetParams = self.params  # type: ignore[assignment]
        if p.max_leverage is not None and p.max_leverage > lend.max_leverage:
            raise ValueError(
                f"{self.name}.max_leverage={p.max_leverage} exceeds env.lending.max_leverage="
                f"{lend.max_leverage}; use a value in [0, {lend.max_leverage}] or leave it unset"
            )
        self.max_leverage = lend.max_leverage if p.max_leverage is None else p.max_leverage
        self.layout = ActionLayout.for_config(config.env, n_assets)

    def cap(self, risky: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
        """:func:`leverage_cap` with this policy's parameters and the env's reserves."""
        p: LeveredVolTargetParams = self.params  # type: ignore[assignment]
        return leverage_cap(
            risky,
            sigma,
            liq_threshold=self.liq_threshold,
            ltv=self.ltv,
            ltv_buffer=self.ltv_buffer,
            hf_floor=p.hf_floor,
            k_sigma=p.k_sigma,
            max_leverage=self.max_leverage,
        )

    def plan(self, view: MarketView) -> tuple[np.ndarray, np.ndarray]:
        """Spot weights ``(B, N+1)`` (fractions of gross assets, cash last) and leverage ``(B,)``."""
        raw = np.nan_to_num(np.asarray(view.weights, dtype=np.float64), nan=0.0)
        if raw.shape[1] != self.n_assets + 1:
            raise ValueError(
                f"{self.name} was built for {self.n_assets} assets but the view has "
                f"{raw.shape[1] - 1} (weights are assets + cash)"
            )
        b = raw.shape[0]
        # view weights are value / equity: they sum to 1 + debt / equity
        lev_now = np.maximum(raw.sum(axis=1) - 1.0, 0.0)
        current = _clean_weights(raw)
        base, scale, sigma = self.exposure(view, np.arange(b))
        invest = np.minimum(scale, 1.0)
        target = self._with_cash(np.where((scale > 1.0)[:, None], base, base * invest[:, None]))
        target_lev = np.where(scale > 1.0, np.minimum(scale - 1.0, self.cap(base, sigma)), 0.0)
        band = max(self.params.no_trade_band, 1e-12)
        due = np.asarray(view.step) % self.params.rebalance_every == 0
        moved = np.abs(target[:, :-1] - current[:, :-1]).max(axis=1) >= band
        trade = due & (moved | (np.abs(target_lev - lev_now) >= band))
        # safety, every step: cut the debt when the current book breaks a cap or the HF floor
        cap_now = self.cap(current[:, :-1], sigma)
        hf = view.health_factor
        p: LeveredVolTargetParams = self.params  # type: ignore[assignment]
        low_hf = np.zeros(b, dtype=bool) if hf is None else np.asarray(hf) < p.hf_floor
        unsafe = ~trade & (lev_now > 0.0) & ((lev_now > cap_now + 1e-9) | low_hf)
        held_lev = np.where(unsafe, np.maximum(cap_now - band, 0.0), lev_now)
        weights = np.where(trade[:, None], target, current)
        lev = np.clip(np.where(trade, target_lev, held_lev), 0.0, self.env_max_leverage)
        return weights, lev

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        weights, lev = self.plan(view)
        return self.layout.compose(weights_to_actions(weights), lev, 0.0, self.env_max_leverage)


# ---------------------------------------------------------------------------------------- carry
class CarryParams(VolParams):
    """Spot plus short perps on the assets whose funding pays the short (perps env only)."""

    rebalance_every: int = Field(default=1, ge=1, le=100_000, description="steps between checks")
    no_trade_band: float = Field(default=0.05, ge=0.0, le=0.5, description="max |dw| to trade")
    base: Literal["equal", "inverse_vol"] = "equal"
    min_funding_annual: float = Field(
        default=0.05, ge=0.0, le=5.0, description="annualized funding to open a short"
    )
    exit_funding_annual: float = Field(
        default=0.0, ge=-5.0, le=5.0, description="annualized funding under which a short closes"
    )
    hedge_ratio: float = Field(default=1.0, gt=0.0, le=1.0, description="short / spot units")
    k_sigma: float = Field(
        default=10.0, ge=0.0, le=30.0, description="one-step forecast vols a short must survive"
    )

    @model_validator(mode="after")
    def _exit_below_entry(self) -> CarryParams:
        if self.exit_funding_annual > self.min_funding_annual:
            raise ValueError(
                f"exit_funding_annual={self.exit_funding_annual} must be <= min_funding_annual="
                f"{self.min_funding_annual} (a hysteresis band: open above the one, close below "
                "the other)"
            )
        return self


class CarryPolicy(BaselinePolicy):
    """Spot book + funding-paid short perp hedges, sized to survive a ``k_sigma`` up-move."""

    name = "carry"
    params_model = CarryParams
    needs_config = True

    def __init__(
        self, n_assets: int, config: SimulationConfig, name: str | None = None, **params: Any
    ) -> None:
        super().__init__(n_assets, name=name, **params)
        _requires(config, self.name, "perps")
        env = config.env
        setup = ProtocolSetup.load(tuple(config.market.assets), None, env.perps.params_path)
        assert setup.perps is not None and setup.imf is not None and setup.mmf is not None
        self.imf, self.mmf = setup.imf, setup.mmf
        self.trading_fee = setup.perps.trading_fee
        self.margin_buffer = env.perps.margin_buffer
        self.env_max_leverage = env.lending.max_leverage
        self.layout = ActionLayout.for_config(env, n_assets)
        #: ``(B, N)`` the hedge ratios asked for at the previous decision (0 after a reset)
        self._prev_hedge = np.zeros((0, n_assets))

    def plan(self, view: MarketView) -> tuple[np.ndarray, np.ndarray]:
        """Spot weights ``(B, N+1)`` (cash last) and hedge ratios ``(B, N)`` in ``[0, 1]``.

        Remembers the hedges it asks for (reset by :meth:`reset`): a step that lowers a hedge
        does not buy spot (see the comment in the code)."""
        p: CarryParams = self.params  # type: ignore[assignment]
        if view.rates is None or "funding_rate" not in view.rates:
            raise ValueError(
                f"{self.name} needs MarketView.rates['funding_rate'] (filled by "
                "evaluation.rollout.run_policy on a perps config)"
            )
        current = _clean_weights(view.weights)
        b, n = current.shape[0], self.n_assets
        cov = forecast_cov(np.asarray(view.prices), p.ewma_halflife)
        sigma = None if cov is None else forecast_vol(cov)
        funding_annual = np.asarray(view.rates["funding_rate"]) * DAYS_PER_YEAR / view.step_days
        prev = self._prev_hedge
        if prev.shape != funding_annual.shape:  # a view without a reset (e.g. a unit test)
            prev = np.zeros(funding_annual.shape)
        # hysteresis: open above min_funding_annual, keep while above exit_funding_annual (the
        # funding rate is an AR(1) around its regime mean: one threshold would flip it daily);
        # no vol forecast yet: no hedge (its liquidation distance would be unknown)
        keep = (prev > 0.0) & (funding_annual > p.exit_funding_annual)
        paid = ((funding_annual > p.min_funding_annual) | keep) & (sigma is not None)
        hedge = p.hedge_ratio * paid
        margin = short_margin_per_notional(
            np.zeros((b, n)) if sigma is None else sigma,
            p.k_sigma,
            mmf=self.mmf,
            imf=self.imf,
            margin_buffer=self.margin_buffer,
            trading_fee=self.trading_fee,
        )
        base = base_weights(p.base, sigma, b, n, 1.0, p.max_weight)
        invested = np.minimum(self.budget, 1.0 / (1.0 + (base * hedge * margin).sum(axis=1)))
        target = self._with_cash(base * invested[:, None])
        due = np.asarray(view.step) % p.rebalance_every == 0
        moved = np.abs(target[:, :-1] - current[:, :-1]).max(axis=1) >= max(p.no_trade_band, 1e-12)
        weights = np.where((due & moved)[:, None], target, current)
        # the env trades spot before perps: a step that shrinks a short must not spend its margin
        # on spot buys, or the cash left cannot pay the closing fee and the old short stays on
        # with no margin behind it; such a step only sells, and the next one buys
        unwinding = (hedge < prev - 1e-12).any(axis=1)
        if unwinding.any():
            risky = np.where(
                unwinding[:, None], np.minimum(weights[:, :-1], current[:, :-1]), weights[:, :-1]
            )
            weights = self._with_cash(risky)
        # every step: shrink the hedges to what the cash after the trade can carry
        need = (weights[:, :-1] * hedge * margin).sum(axis=1)
        fit = np.where(need > weights[:, -1], weights[:, -1] / np.where(need > 0, need, 1.0), 1.0)
        hedge = hedge * np.clip(fit, 0.0, 1.0)[:, None]
        self._prev_hedge = hedge
        return weights, hedge

    def reset(self, n_envs: int) -> None:
        self._prev_hedge = np.zeros((n_envs, self.n_assets))

    def act(self, observation: np.ndarray, view: MarketView) -> np.ndarray:
        weights, hedge = self.plan(view)
        return self.layout.compose(weights_to_actions(weights), 0.0, hedge, self.env_max_leverage)
