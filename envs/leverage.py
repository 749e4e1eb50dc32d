"""Leverage at decision time: borrowing, repaying and perp orders (the engine behind the simulator).

The action layout and the leverage target's feasibility clip are in :mod:`defialloc.envs.leverage_actions`.

Execution order at ``t`` (:meth:`LeverageEngine.execute`): borrow (so the buys can spend it, an
atomic flash-loan-style leverage loop), spot rebalance through the pools, repay from cash (a borrow
that leaves the debt above the post-trade LTV capacity repays the excess, as the atomic transaction
would revert otherwise), then perp orders at the mark price with the taker fee on the traded
notional (no perp slippage model). Borrow and repay pay their gas (``GAS_UNITS``). Debt and perp
changes smaller than ``no_trade_band * E`` are skipped, like spot trades. Risky holdings are held
as supplied collateral (aTokens, earning the supply rate); supply/withdraw are assumed zapped into
the swaps (no separate gas). Cash is idle numeraire in the perp margin account (earns nothing).

With the options venue on, the option orders go between the spot rebalance and the repay
(:meth:`defialloc.envs.option_book.OptionBook.execute`: covered calls on the units held after the spot
trades); the spot buys leave in cash what buying back the calls their sells uncover costs. What happens during the market move is in :mod:`defialloc.envs.leverage_move`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.action_kinds import ActionTargets
from defialloc.envs.actions import all_numeraire
from defialloc.envs.config import ConfigError, SimulationConfig
from defialloc.envs.execution.costs import GasModel, TradeCosts
from defialloc.envs.execution.pools import PoolBook
from defialloc.envs.execution.rebalance import execute_rebalance
from defialloc.envs.indexing import gather_at
from defialloc.envs.leverage_actions import (
    ActionLayout,
    clip_leverage_to_ltv,
    health_factor_fast,
    max_feasible_leverage,
)
from defialloc.envs.leverage_paths import ProtocolPaths, ProtocolSetup
from defialloc.envs.leverage_population import BorrowerCascades
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.option_book import OptionBook, OptionFills
from defialloc.envs.option_quotes import SERIES as OPTION_SERIES
from defialloc.envs.option_views import option_observation, option_observation_names
from defialloc.envs.protocols.gas import GAS_UNITS

HF_CAP = 10.0  # observation: log(min(HF, 10)); "no debt" reads as very safe
RATE_SCALE = 10.0  # observation: annualized rates x 10 (a 10 %/yr rate -> 1.0)


@dataclass
class StepCosts(TradeCosts):
    """Every cost of a step per env, ``(B,)`` USD: trading costs plus carry and liquidations.

    ``interest_usd``: debt interest paid minus supply interest earned (USD at ``t + 1`` prices).
    ``funding_usd``: perp funding paid minus received. ``liquidation_usd``: lending liquidation
    penalties (seized value at the close minus debt repaid) plus perp liquidation fees and the
    close-out loss of positions closed at the intra-step extreme instead of the close.
    """

    interest_usd: np.ndarray
    funding_usd: np.ndarray
    liquidation_usd: np.ndarray

    @property
    def total_usd(self) -> np.ndarray:
        return (
            self.fees_usd
            + self.slippage_usd
            + self.gas_usd
            + self.interest_usd
            + self.funding_usd
            + self.liquidation_usd
        )

    def as_dict(self, index: int) -> dict[str, float]:
        out = super().as_dict(index)
        out["interest"] = float(self.interest_usd[index])
        out["funding"] = float(self.funding_usd[index])
        out["liquidation"] = float(self.liquidation_usd[index])
        return out


@dataclass
class LeveredFills:
    """What :meth:`LeverageEngine.execute` did: new spot state, costs, spot turnover (USD traded),
    the spot assets sent to the router ``mask`` ``(B, N)``, the leverage target after the LTV
    clip ``leverage`` ``(B,)`` (debt / equity) and the option fills (None without the options venue)."""

    units: np.ndarray
    cash: np.ndarray
    costs: TradeCosts
    traded_usd: np.ndarray
    mask: np.ndarray | None = None
    leverage: np.ndarray | None = None
    options: OptionFills | None = None


class LeverageEngine:
    """Lending, perps and cascade state of ``n_envs`` portfolios (debt, perp sizes, protocol paths).

    State: ``debt`` ``(B,)`` in numeraire units (variable debt incl. accrued interest) and
    ``perp_size`` ``(B, N)`` signed units. Spot units and cash stay in the simulator.
    """

    def __init__(self, config: SimulationConfig, n_envs: int, asset_names: tuple[str, ...]) -> None:
        env = config.env
        self.lending_on = env.lending.enabled
        self.perps_on = env.perps.enabled
        self.options_on = env.options.enabled
        self.cascades_on = env.cascades_enabled
        self.cfg = env
        self.n_envs, self.n_assets = n_envs, len(asset_names)
        needs_lending_params = self.lending_on or self.cascades_on
        self.setup = ProtocolSetup.load(
            asset_names,
            env.lending.params_path if needs_lending_params else None,
            env.perps.params_path if self.perps_on else None,
        )
        if self.lending_on:
            self._check_max_leverage()
        self.layout = ActionLayout.for_config(env, self.n_assets)
        self.paths = ProtocolPaths(
            self.setup,
            n_envs,
            env.warmup + env.horizon + 1,
            lending=self.lending_on,
            perps=self.perps_on,
            step_days=config.market.step_days,
        )
        self.cascades: BorrowerCascades | None = None
        if self.cascades_on:
            assert self.setup.lending is not None and self.setup.reserves is not None
            depth = np.array([env.amm.pair_depth_usd(a) for a in asset_names])
            self.cascades = BorrowerCascades(
                self.setup.lending.population, self.setup.reserves, n_envs, depth
            )
        self.debt = np.zeros(n_envs)
        self.perp_size = np.zeros((n_envs, self.n_assets))
        self.hf_now = np.full(n_envs, np.inf)
        self.options: OptionBook | None = None
        if self.options_on:
            self.options = OptionBook(config, n_envs, asset_names)
        self.obs_size = (
            3 * int(self.lending_on)
            + 2 * self.n_assets * int(self.perps_on)
            + OptionBook.OBS_PER_ASSET * self.n_assets * int(self.options_on)
        )

    def _check_max_leverage(self) -> None:
        lend = self.cfg.lending
        reserves = self.setup.reserves
        assert reserves is not None
        cap = max_feasible_leverage(reserves.ltv, lend.ltv_buffer)
        if lend.max_leverage > cap:
            best = int(np.argmax(reserves.ltv))
            raise ConfigError(
                f"env.lending.max_leverage={lend.max_leverage} exceeds the {cap:.4f} the LTVs allow: "
                f"env.lending.ltv_buffer={lend.ltv_buffer} x the highest LTV "
                f"{reserves.ltv[best]} ({reserves.symbols[best]}) gives S={lend.ltv_buffer * reserves.ltv[best]:.4f} "
                f"and leverage <= S / (1 - S); lower max_leverage to <= {cap:.4f}"
            )

    def generate_series(self, paths: MarketPaths, seeds: np.ndarray) -> dict[str, np.ndarray]:
        """The agent-independent series of ``paths`` drawn from ``seeds``: the lending and perps
        series (:class:`ProtocolPaths`) and the options venue's variance forecasts."""
        series = self.paths.generate(paths, seeds)
        if self.options is not None:
            series.update(self.options.generate(paths))
        return series

    def reset(
        self,
        index: np.ndarray,
        paths: MarketPaths,
        seeds: np.ndarray,
        series: dict[str, np.ndarray] | None = None,
    ) -> None:
        """New episodes for envs ``index`` on ``paths``; ``series``: their protocol series when
        already drawn (:meth:`generate_series`), drawn here otherwise."""
        series = self.generate_series(paths, seeds) if series is None else series
        self.paths.assign(index, {k: v for k, v in series.items() if k != OPTION_SERIES})
        if self.options is not None:
            truth = paths.cond_var is not None and self.options.surface.model_table is not None
            self.options.reset(index, series, paths.regime, truth)
        if self.cascades is not None:
            w = paths.warmup
            self.cascades.reset(index, paths.close[:, w], paths.depth_multiplier[:, w])
        self.debt[index] = 0.0
        self.perp_size[index] = 0.0
        self.hf_now[index] = np.inf

    def snapshot(self, index: int) -> dict:
        """JSON-serializable protocol state of env ``index`` (debt, perps, borrower population)."""
        state: dict = {"debt": float(self.debt[index]), "perp_size": self.perp_size[index].tolist()}
        if self.cascades is not None:
            state["population_units"] = self.cascades.units[index].tolist()
            state["population_debt"] = self.cascades.debt[index].tolist()
            state["population_fresh"] = self.cascades.fresh[index].tolist()
        if self.options is not None:
            state.update(self.options.snapshot(index))
        return state

    def restore(self, index: int, state: dict) -> None:
        """Inverse of :meth:`snapshot` (the protocol paths must already be generated by a reset)."""
        self.debt[index] = float(state["debt"])
        self.perp_size[index] = np.asarray(state["perp_size"])
        if self.cascades is not None:
            self.cascades.units[index] = np.asarray(state["population_units"])
            self.cascades.debt[index] = np.asarray(state["population_debt"])
            self.cascades.fresh[index] = np.asarray(state["population_fresh"])
        if self.options is not None:
            self.options.restore(index, state)

    # ------------------------------------------------------------------ views
    def health_factor(self, units: np.ndarray, price: np.ndarray, num: np.ndarray) -> np.ndarray:
        """``(B,)`` HF at ``price``; ``inf`` without debt (or without lending)."""
        if not self.lending_on:
            return np.full(self.n_envs, np.inf)
        return health_factor_fast(units, price, self.setup.reserves.liq_threshold, self.debt * num)  # type: ignore[union-attr]

    def refresh_health(self, units: np.ndarray, price: np.ndarray, num: np.ndarray) -> np.ndarray:
        """Recompute :attr:`hf_now`, the HF at the decision time's close (after every reset/advance);
        the kill-switch, the observation and the info all read this one array."""
        self.hf_now = self.health_factor(units, price, num)
        return self.hf_now

    def observation(
        self,
        units: np.ndarray,
        price: np.ndarray,
        num: np.ndarray,
        value: np.ndarray,
        now: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Protocol block ``(B, obs_size)``: ``[log min(HF, 10), debt / equity, borrow rate x 10]`` if
        lending, then ``[perp notional_i / equity]`` and ``[funding rate_i annualized x 10]`` if perps.

        ``now``: ``(B,)`` flat decision-time index into the ``(B, L, ...)`` paths (envs/indexing.py).
        ``out``: optional ``(B, obs_size)`` array to write into (e.g. the observation's own columns).
        """
        out = np.empty((self.n_envs, self.obs_size)) if out is None else out
        equity = np.where(value > 0.0, value, np.inf)
        col = 0
        if self.lending_on:
            out[:, 0] = np.log(np.maximum(np.minimum(self.hf_now, HF_CAP), 1e-6))
            out[:, 1] = self.debt * num / equity
            out[:, 2] = gather_at(self.paths.borrow_rate, now) * RATE_SCALE
            col = 3
        if self.perps_on:
            n, per_year = self.n_assets, 365.0 / self.paths.step_days
            out[:, col : col + n] = self.perp_size * price / equity[:, None]
            out[:, col + n : col + 2 * n] = (
                gather_at(self.paths.funding, now) * per_year * RATE_SCALE
            )
            col += 2 * n
        if self.options is not None:
            out[:, col:] = option_observation(self.options, units, now, price)
        return out

    def observation_names(self, asset_names: tuple[str, ...]) -> list[str]:
        """Names of the protocol block's entries, in order (appended after envs/features.py's)."""
        names = ["log_health_factor", "leverage", "borrow_rate_x10"] if self.lending_on else []
        if self.perps_on:
            names += [f"perp_exposure_{a}" for a in asset_names]
            names += [f"funding_rate_ann_x10_{a}" for a in asset_names]
        if self.options is not None:
            names += option_observation_names(asset_names)
        return names

    # ------------------------------------------------------------------ execute
    def _gas_usd(self, units: float, gwei: np.ndarray, eth: np.ndarray) -> np.ndarray:
        """USD gas of ``units`` gas units per env (``gas_cost_usd`` without its range checks)."""
        if not self.cfg.gas.enabled:
            return np.zeros_like(gwei)
        return units * (gwei * 1e-9) * eth

    def execute(
        self,
        units: np.ndarray,
        cash: np.ndarray,
        targets: ActionTargets,
        price: np.ndarray,
        num: np.ndarray,
        equity: np.ndarray,
        now: np.ndarray,
        pools: PoolBook,
        gas: GasModel,
        gwei: np.ndarray,
        eth: np.ndarray,
    ) -> LeveredFills:
        """Borrow, rebalance spot, repay and trade perps toward ``targets`` at ``t``.

        ``targets``: what the action asks for (:class:`defialloc.envs.action_kinds.ActionTargets`: weights,
        debt / equity before the LTV clip, hedge ratios); the leverage is clipped here to what the
        weights' LTVs allow. ``now``: ``(B,)`` flat decision-time index into the ``(B, L, ...)``
        paths (envs/indexing.py).

        A target whose risky weights are all 0 (e.g. the kill-switch's safe target) is all
        numeraire: the leverage target is clipped to 0 (no collateral), the perp targets are 0, and
        every spot position, debt and perp is closed regardless of the no-trade band (and every
        option: nothing is held to cover or protect). Mutates
        ``pools``, ``self.debt`` and ``self.perp_size``; returns the new spot units and cash.
        """
        band = self.cfg.action.no_trade_band
        w = targets.weights
        eq = np.maximum(equity, 0.0)
        if self.lending_on:
            lev = clip_leverage_to_ltv(
                targets.leverage,
                w,
                self.setup.reserves.ltv,
                self.cfg.lending.ltv_buffer,  # type: ignore[union-attr]
            )
        else:
            lev = np.zeros(self.n_envs)
        flat = all_numeraire(w)  # close every position, debt and perp (not only past the band)
        target_usd = w[:, :-1] * ((1.0 + lev) * eq)[:, None]
        zero = np.zeros(self.n_envs)
        borrow_gas = repay_gas = zero
        if self.lending_on:
            target_debt_usd = lev * eq
            gap_usd = target_debt_usd - self.debt * num
            move_debt = (np.abs(gap_usd) > band * eq) | (
                (target_debt_usd <= 0.0) & (self.debt > 0.0)
            )
            borrow_usd = np.where(move_debt & (gap_usd > 0.0), gap_usd, 0.0)
            borrow_gas = np.where(
                borrow_usd > 0.0, self._gas_usd(GAS_UNITS["aave_borrow"], gwei, eth), 0.0
            )
            # a borrow must at least pay its own gas (cash never goes negative)
            ok = (borrow_usd > 0.0) & (cash * num + borrow_usd >= borrow_gas)
            borrow_usd = np.where(ok, borrow_usd, 0.0)
            borrow_gas = np.where(ok, borrow_gas, 0.0)
            cash = np.maximum(cash + (borrow_usd - borrow_gas) / num, 0.0)  # >= 0 up to rounding
            self.debt = self.debt + borrow_usd / num

        mask = np.abs(target_usd - units * price) > band * eq[:, None]
        mask |= flat[:, None] & (units > 0.0)
        reserve = None  # numeraire units the buys leave for buying back calls the sells uncover
        if self.options is not None:
            after = np.where(mask, target_usd / price, units)  # sells are exact, buys may shrink
            sells = (np.maximum(units - after, 0.0) * price).sum(axis=1)
            need = self.options.buyback_reserve(after, price, now)
            reserve = np.minimum(need, cash * num + 0.9 * sells) / num
        fills = execute_rebalance(
            units,
            cash,
            target_usd / price,
            mask,
            price,
            num,
            pools,
            gas,
            gwei,
            eth,
            extra_cash=None if reserve is None else -reserve,
        )
        units = units + fills.asset_delta
        cash = cash + fills.cash_delta
        option_fills = None
        if self.options is not None:  # before the repay: covering the calls comes first
            option_fills = self.options.execute(units, cash, targets.options, price, num, eq, now)
            cash = option_fills.cash

        if self.lending_on and move_debt.any():
            cash, repay_gas = self._repay(
                units, cash, price, num, gwei, eth, move_debt, gap_usd, target_debt_usd, borrow_usd
            )
        perp_fee = perp_gas = zero
        if self.perps_on and (targets.hedge.any() or self.perp_size.any()):
            cash, perp_fee, perp_gas = self._trade_perps(
                cash, target_usd, targets.hedge, price, num, eq, now, gwei, eth
            )
        option_fee = option_spread = zero
        if option_fills is not None:
            option_fee, option_spread = option_fills.fees_usd, option_fills.spread_usd
        costs = TradeCosts(
            fills.costs.fees_usd + perp_fee + option_fee,
            fills.costs.slippage_usd + option_spread,
            fills.costs.gas_usd + borrow_gas + repay_gas + perp_gas,
        )
        return LeveredFills(units, cash, costs, fills.traded_usd, mask, lev, option_fills)

    def _repay(
        self,
        units: np.ndarray,
        cash: np.ndarray,
        price: np.ndarray,
        num: np.ndarray,
        gwei: np.ndarray,
        eth: np.ndarray,
        move_debt: np.ndarray,
        gap_usd: np.ndarray,
        target_debt_usd: np.ndarray,
        borrow_usd: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Repay toward the target from cash after the sells; returns ``(cash, repay gas USD)``."""
        debt = self.debt
        want = np.where(move_debt & (gap_usd < 0.0), np.minimum(-gap_usd / num, debt), 0.0)
        want = np.where(move_debt & (target_debt_usd <= 0.0), debt, want)
        # the leverage loop is atomic: Aave would revert a borrow above the post-trade capacity
        capacity_usd = (units * price * self.setup.reserves.ltv).sum(axis=1)  # type: ignore[union-attr]
        excess = np.where(borrow_usd > 0.0, np.maximum(debt * num - capacity_usd, 0.0) / num, 0.0)
        want = np.minimum(np.maximum(want, excess), debt)
        gas_usd = np.where(want > 0.0, self._gas_usd(GAS_UNITS["aave_repay"], gwei, eth), 0.0)
        repay = np.maximum(np.minimum(want, cash - gas_usd / num), 0.0)
        paid = repay > 0.0
        gas_usd = np.where(paid, gas_usd, 0.0)
        self.debt = np.where(paid & (repay >= debt), 0.0, debt - repay)
        # repaying all the cash can leave -1e-12 of rounding
        return np.maximum(cash - repay - gas_usd / num, 0.0), gas_usd

    def _trade_perps(
        self,
        cash: np.ndarray,
        target_usd: np.ndarray,
        hedge_a: np.ndarray,
        price: np.ndarray,
        num: np.ndarray,
        eq: np.ndarray,
        now: np.ndarray,
        gwei: np.ndarray,
        eth: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Move the perp book toward ``-h * target units`` within the margin; returns cash, fee, gas."""
        perps = self.setup.perps
        assert perps is not None and self.setup.imf is not None
        old = self.perp_size
        mark = gather_at(self.paths.mark, now)
        # a zero spot target (all numeraire) gives a zero perp target: the book is closed below
        want = -np.maximum(np.minimum(hedge_a, 1.0), -1.0) * target_usd / price
        trade = (np.abs(want - old) * mark > self.cfg.action.no_trade_band * eq[:, None]) | (
            (want == 0.0) & (old != 0.0)
        )
        new = np.where(trade, want, old)
        initial_margin = self.cfg.perps.margin_buffer * (self.setup.imf * np.abs(new) * price).sum(
            axis=1
        )
        cash_usd = cash * num
        # |new - old| <= |new| + |old| bounds the fee of any scaled-down book
        fee_bound = perps.trading_fee * ((np.abs(old) + np.abs(new)) * mark).sum(axis=1)
        room = cash_usd - fee_bound
        short = initial_margin > room
        if short.any():
            fit = room / np.where(initial_margin > 0, initial_margin, 1.0)
            scale = np.where(short, np.maximum(np.minimum(fit, 1.0), 0.0), 1.0)
            new = new * scale[:, None]
        traded = np.abs(new - old)
        fee = perps.trading_fee * (traded * mark).sum(axis=1)
        units_per_order = self.cfg.perps.gas_units_per_order
        if units_per_order and self.cfg.gas.enabled:
            gas_usd = self._gas_usd(1.0, gwei, eth) * (units_per_order * (traded > 0.0).sum(axis=1))
        else:  # an off-chain order book (the default venue): no gas
            gas_usd = np.zeros(self.n_envs)
        ok = fee + gas_usd <= cash_usd
        if ok.all():
            self.perp_size = new
        else:
            self.perp_size = np.where(ok[:, None], new, old)
            fee = np.where(ok, fee, 0.0)
            gas_usd = np.where(ok, gas_usd, 0.0)
        return np.maximum(cash - (fee + gas_usd) / num, 0.0), fee, gas_usd
