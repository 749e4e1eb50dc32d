"""The env's option positions: covered calls and protective puts, traded, marked and settled.

State per env and asset, two slots (0: the call, 1: the put), arrays ``(B, N, 2)``: signed
``units`` (calls <= 0: written; puts >= 0: bought), ``strike`` (USD) and ``expiry`` (time index of
the path at which the contract settles). Quotes come from :mod:`defialloc.envs.option_quotes`.

Decision time ``t`` (:meth:`OptionBook.execute`, after the spot rebalance and the repay, before the
perps): the target is ``-c_i`` (calls) and ``+p_i`` (puts) times the held units ``u_i`` of each
listed asset after the spot trades (``cover``), so a call written is always covered by units held.

* A slot with a contract keeps it (same strike and expiry) and trades it toward the target when the
  change is worth more than ``no_trade_band x E`` (USD at the index), closes it when the target is
  0, and buys back calls beyond the cover (units sold since) whatever the band.
* An empty slot with a target worth more than the band opens the chosen listed contract: strike
  ``m x F`` (``m`` the listed moneyness, ``F`` the forward at ``t``), expiry ``t + tenor steps``.
  The strike and tenor choices only matter when a contract opens: one held is never switched, it
  runs to expiry and then rolls (the slot is empty at the next decision and opens the choice anew).
* Buys pay the ask, sells receive the bid, each with the fee ``min(fee x S, cap x price)`` per
  unit. The net premium and fees must fit in the cash: buys are scaled down pro rata otherwise
  (never a negative balance). Costs: the fees (``fees``) and the half-spread against the mid
  (``slippage``, measured like the pools' slippage against the market value).

The move ``t -> t + 1`` (:meth:`OptionBook.move`, after the perps): contracts expiring at ``t + 1``
settle in cash against the index close ``S(t+1)``: ``units x max(+-(S - K), 0)`` minus the
settlement fee ``min(fee x S, cap x payoff)`` per unit in the money. A written call's payoff is paid
from cash; what the cash cannot pay, the venue takes in units of the covering asset at ``S(t+1)``
(the collateral of a covered call; value-neutral at the close), and any rest is absorbed by the
venue (``insurance_usd``). Other contracts are marked at the mid at ``t + 1``. Margin (a documented
rule, docs/options.md): written calls beyond the units held (only after a lending liquidation seized
the cover) need ``short_maintenance x S + mark`` per unit in cash, checked at the step's high; when
the cash falls short, those units are bought back at the ask at the high, with the liquidation fee
(``liquidation``: the close-out loss against the close's mark plus the fee).

Identity contribution (per env): ``units_during_move . (mark(t+1) - mid(t))`` of market PnL, where
``mark(t+1)`` is the settlement value of an expiring contract and its mid otherwise; minus the fees,
spread and liquidation costs; plus the venue's absorbed shortfall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.action_kinds import OptionTargets
from defialloc.envs.config import SimulationConfig
from defialloc.envs.indexing import gather_at
from defialloc.envs.leverage_paths import resolve_params_path
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.option_quotes import DAYS_PER_YEAR, SERIES, Quote, VenueSurface
from defialloc.envs.protocols.options import VarianceForecast, intrinsic_value, option_fee
from defialloc.envs.protocols.options_params import load_options_params

IS_CALL = np.array([True, False])  # the two slots


@dataclass
class OptionFills:
    """What :meth:`OptionBook.execute` did, ``(B,)`` USD: new cash (numeraire units), fees, the
    half-spread paid against the mid, and the net premium paid (> 0) or received (< 0)."""

    cash: np.ndarray
    fees_usd: np.ndarray
    spread_usd: np.ndarray
    premium_usd: np.ndarray


@dataclass
class OptionMove:
    """The options' part of a move, per env ``(B,)`` USD unless named: ``cash`` and spot ``units``
    after settlement (units ``(B, N)``: the covering units the venue took), the net payoff received
    at settlement (``settlement_usd``, < 0 when written calls paid out), ``settlement_fee_usd``,
    ``liquidation_usd`` (close-out loss + fee), ``insurance_usd`` (shortfall the venue absorbed),
    ``liquidations`` (count), and for the identity ``units_during_move``, ``mark_before`` (mid at
    ``t``) and ``mark_after`` (settlement value or mid at ``t + 1``), each ``(B, N, 2)``."""

    cash: np.ndarray
    units: np.ndarray
    settlement_usd: np.ndarray
    settlement_fee_usd: np.ndarray
    liquidation_usd: np.ndarray
    insurance_usd: np.ndarray
    liquidations: np.ndarray
    units_during_move: np.ndarray
    mark_before: np.ndarray
    mark_after: np.ndarray


class OptionBook:
    """Option positions of ``n_envs`` portfolios on the venue of ``config.env.options``."""

    def __init__(self, config: SimulationConfig, n_envs: int, asset_names: tuple[str, ...]) -> None:
        env = config.env
        self.params = load_options_params(resolve_params_path(env.options.params_path))
        unknown = [a for a in self.params.underlyings if a not in asset_names]
        self.listed = self.params.listed_mask(asset_names)
        if not self.listed.any():
            raise ValueError(
                f"env.options: none of the venue's underlyings {self.params.underlyings} is among "
                f"the market's assets {list(asset_names)}"
            )
        self.unlisted_underlyings = unknown
        self.surface = VenueSurface(config, self.params)
        self.moneyness = np.array(self.params.strikes)
        self.tenor_steps = self.params.tenor_steps(config.market.step_days)
        self.band = env.action.no_trade_band
        self.n_envs, self.n_assets = n_envs, len(asset_names)
        self.length = length = env.warmup + env.horizon + 1
        self.h_next = np.zeros((n_envs, length, self.n_assets))
        self.regime = np.zeros((n_envs, length), dtype=np.int64)
        self.truth = np.zeros(n_envs, dtype=bool)  # per env: its path has the generator's state
        shape = (n_envs, self.n_assets, 2)
        self.units = np.zeros(shape)
        self.strike = np.ones(shape)
        self.expiry = np.zeros(shape, dtype=np.int64)
        self.mark = np.zeros(shape)  # mid of the held contracts at the current time, USD per unit
        #: per-unit (delta, gamma, vega / vol point, theta / day) of the held contracts now
        self.unit_greeks = np.zeros((*shape, 4))

    # ---------------------------------------------------------------------------- paths
    def generate(self, paths: MarketPaths) -> dict[str, np.ndarray]:
        """The per-path series of ``paths`` (agent-independent, at reset): ``{SERIES: (K, L, N)}``."""
        return {SERIES: self.surface.variance_series(paths)}

    def reset(
        self, index: np.ndarray, series: dict[str, np.ndarray], regime: np.ndarray, truth: bool
    ) -> None:
        """New episodes for envs ``index``: their series and regime codes ``(K, L)``, no positions;
        ``truth``: the paths carry the generator's state (the model forecast applies)."""
        self.h_next[index] = series[SERIES]
        self.regime[index] = regime
        self.truth[index] = truth
        for arr, value in (
            (self.units, 0.0),
            (self.strike, 1.0),
            (self.expiry, 0),
            (self.mark, 0.0),
            (self.unit_greeks, 0.0),
        ):
            arr[index] = value

    def table(self) -> VarianceForecast:
        # every env of a batch runs on the same market source, so one table serves the batch
        return self.surface.table_for(bool(self.truth.all()))

    # ---------------------------------------------------------------------------- quotes
    def quote(
        self, now: np.ndarray, index: np.ndarray, strike: np.ndarray, expiry: np.ndarray
    ) -> Quote:
        """Quotes of contracts ``(B, N, 2)`` (strike USD, expiry time index) at flat time ``now``
        (``(B,)``, envs/indexing.py) with the index at ``index`` ``(B, N)`` USD. Contracts at or past
        expiry quote as one step to go (their slots are empty)."""
        steps = np.maximum(expiry - (now % self.length)[:, None, None], 1)
        h = gather_at(self.h_next, now)
        regime = gather_at(self.regime, now)
        return self.surface.quote(self.table(), regime, h, index, strike, steps, IS_CALL)

    def value_usd(self) -> np.ndarray:
        """``(B,)`` mark value of the positions now (USD)."""
        return (self.units * self.mark).sum(axis=(1, 2))

    def shares(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Current ``(B, N)`` call and put shares of the held spot ``units`` (0 without units)."""
        held = units > 0.0
        safe = np.where(held, units, 1.0)
        calls = np.where(held, -self.units[..., 0] / safe, 0.0)
        puts = np.where(held, self.units[..., 1] / safe, 0.0)
        return calls, puts

    #: entries per asset of the options' part of the protocol block (envs/option_views.py)
    OBS_PER_ASSET = 5

    # ---------------------------------------------------------------------------- execute
    def buyback_reserve(
        self, units_after: np.ndarray, price: np.ndarray, now: np.ndarray
    ) -> np.ndarray:
        """``(B,)`` USD the spot buys must leave in cash: buying back, at the ask plus the fee, the
        written calls beyond the units ``units_after`` ``(B, N)`` the spot trades will leave."""
        naked = np.maximum(-self.units[..., 0] - np.maximum(units_after, 0.0), 0.0)
        if not naked.any():
            return np.zeros(self.n_envs)
        q = self.quote(now, price, self.strike, self.expiry)
        p = self.params
        fee = option_fee(
            naked, price, q.ask[..., 0], p.trading_fee_of_underlying, p.trading_fee_cap_of_price
        )
        return (naked * q.ask[..., 0] + fee).sum(axis=1)

    def execute(
        self,
        spot_units: np.ndarray,
        cash: np.ndarray,
        targets: OptionTargets | None,
        price: np.ndarray,
        num: np.ndarray,
        equity: np.ndarray,
        now: np.ndarray,
    ) -> OptionFills:
        """Trade toward ``targets`` at decision time ``t`` (module docstring); mutates the book.

        ``spot_units`` ``(B, N)`` after the spot trades; ``cash`` ``(B,)`` numeraire units;
        ``price`` ``(B, N)`` USD index; ``num`` ``(B,)``; ``equity`` ``(B,)`` USD before trading.
        """
        b, n = self.n_envs, self.n_assets
        t_index = now % self.length
        if targets is None:
            targets = OptionTargets.none(b, n)
        cover = np.maximum(spot_units, 0.0) * self.listed
        want = np.stack([-targets.call_share * cover, targets.put_share * cover], axis=-1)
        held = self.units
        has = held != 0.0
        notional = price[..., None]
        worth = np.abs(want - held) * notional > self.band * np.maximum(equity, 0.0)[:, None, None]
        uncovered = has[..., 0] & (held[..., 0] < -cover)  # calls beyond the units held
        close = has & (want == 0.0)
        resize = has & (want != 0.0) & worth
        resize[..., 0] |= uncovered & (want[..., 0] != 0.0)
        close[..., 0] |= uncovered & (want[..., 0] == 0.0)
        opening = ~has & (want != 0.0) & worth
        # the chosen listing: strike m x forward at t, expiry t + tenor steps
        tenor = self.tenor_steps[targets.tenor]  # (B,)
        t_years = tenor / self.surface.steps_per_year
        forward = price * np.exp(self.params.rate * t_years)[:, None]
        pick = np.stack(
            [self.moneyness[targets.call_strike], self.moneyness[targets.put_strike]], axis=-1
        )  # (B, 2)
        strike = np.where(opening, forward[..., None] * pick[:, None, :], self.strike)
        expiry = np.where(opening, (t_index + tenor)[:, None, None], self.expiry)
        target = np.where(opening | resize, want, np.where(close, 0.0, held))
        q = self.quote(now, price, strike, expiry)
        delta = target - held
        buy, sell = np.maximum(delta, 0.0), np.maximum(-delta, 0.0)
        p = self.params
        fee_rate, cap = p.trading_fee_of_underlying, p.trading_fee_cap_of_price
        # calls beyond the cover are bought back first; other buys share what cash is left
        forced = np.zeros_like(buy)
        forced[..., 0] = np.minimum(buy[..., 0], np.maximum(-held[..., 0] - cover, 0.0))
        unit_cost = q.ask + option_fee(1.0, notional, q.ask, fee_rate, cap)
        income = (sell * q.bid - option_fee(sell, notional, q.bid, fee_rate, cap)).sum(axis=(1, 2))
        budget = cash * num + income
        need = (forced * unit_cost).sum(axis=(1, 2))
        forced = forced * _fit(budget, need)[:, None, None]
        optional = buy - forced
        budget = budget - (forced * unit_cost).sum(axis=(1, 2))
        optional = optional * _fit(budget, (optional * unit_cost).sum(axis=(1, 2)))[:, None, None]
        buy = forced + optional
        units = held + buy - sell
        fees = option_fee(buy, notional, q.ask, fee_rate, cap) + option_fee(
            sell, notional, q.bid, fee_rate, cap
        )
        spread = buy * (q.ask - q.mid) + sell * (q.mid - q.bid)
        premium = buy * q.ask - sell * q.bid
        fees_usd, premium_usd = fees.sum(axis=(1, 2)), premium.sum(axis=(1, 2))
        cash = np.maximum(cash - (premium_usd + fees_usd) / num, 0.0)  # >= 0 up to rounding
        live = units != 0.0
        self.units = units
        self.strike = np.where(live, strike, 1.0)
        self.expiry = np.where(live, expiry, 0)
        self.mark = np.where(live, q.mid, 0.0)
        self.unit_greeks = self._unit_greeks(q, live)
        return OptionFills(cash, fees_usd, spread.sum(axis=(1, 2)), premium_usd)

    def _unit_greeks(self, q: Quote, live: np.ndarray) -> np.ndarray:
        """``(B, N, 2, 4)`` per-unit delta, gamma, vega per vol point, theta per day of live slots."""
        g = self.surface.spot_greeks(q, self.strike, IS_CALL)
        out = np.stack([g.delta, g.gamma, 0.01 * g.vega, g.theta / DAYS_PER_YEAR], axis=-1)
        return np.where(live[..., None], out, 0.0)

    # ---------------------------------------------------------------------------- move
    def move(
        self,
        spot_units: np.ndarray,
        cash: np.ndarray,
        price1: np.ndarray,
        num1: np.ndarray,
        high1: np.ndarray,
        now1: np.ndarray,
    ) -> OptionMove:
        """Settle, mark and margin-check over the move to ``t + 1`` (module docstring); mutates the
        book. Arguments at ``t + 1``: spot ``(B, N)`` units and USD close, ``high1`` the step's high,
        ``now1`` the flat time index."""
        t1 = now1 % self.length
        held, mark0 = self.units, self.mark
        b, n = self.n_envs, self.n_assets
        zero = np.zeros(b)
        has = held != 0.0
        if not has.any():
            nothing = np.zeros((b, n, 2))
            return OptionMove(
                cash, spot_units, zero, zero, zero, zero, np.zeros(b, dtype=np.int64),
                held, mark0, nothing,
            )  # fmt: skip
        expiring = has & (self.expiry == t1[:, None, None])
        payoff_unit = intrinsic_value(price1[..., None], self.strike, IS_CALL)
        q = self.quote(now1, price1, self.strike, self.expiry)
        mark1 = np.where(expiring, payoff_unit, np.where(has, q.mid, 0.0))
        p = self.params
        payoff = np.where(expiring, held * payoff_unit, 0.0)  # signed, USD
        settle_fee = option_fee(
            np.where(expiring, held, 0.0),
            price1[..., None],
            payoff_unit,
            p.settlement_fee_of_underlying,
            p.settlement_fee_cap_of_value,
        )
        cash_usd = cash * num1 + (np.maximum(payoff, 0.0).sum(axis=(1, 2)))
        owed_asset = (np.maximum(-payoff, 0.0) + settle_fee).sum(axis=2)  # (B, N) to pay
        owed = owed_asset.sum(axis=1)
        from_cash = np.minimum(cash_usd, owed)
        share = np.where(owed > 0.0, 1.0 - from_cash / np.where(owed > 0, owed, 1.0), 0.0)
        spot_units, insurance = _pay_in_units(spot_units, owed_asset * share[:, None], price1)
        cash_usd = cash_usd - from_cash
        units = np.where(expiring, 0.0, held)
        # margin: written calls beyond the units held need cash, checked at the step's high
        liq_cost = zero
        liquidations = np.zeros(b, dtype=np.int64)
        naked = np.maximum(-units[..., 0] - np.maximum(spot_units, 0.0), 0.0)
        if (naked > 0.0).any():
            units, cash_usd, liq_cost, unpaid, liquidations = self._margin_call(
                units, naked, cash_usd, q, high1, now1
            )
            spot_units, lost = _pay_in_units(spot_units, unpaid, price1)
            insurance = insurance + lost
        live = units != 0.0
        self.units = units
        self.strike = np.where(live, self.strike, 1.0)
        self.expiry = np.where(live, self.expiry, 0)
        self.mark = np.where(live, q.mid, 0.0)
        self.unit_greeks = self._unit_greeks(q, live)
        return OptionMove(
            cash_usd / num1,
            spot_units,
            payoff.sum(axis=(1, 2)),
            settle_fee.sum(axis=(1, 2)),
            liq_cost,
            insurance,
            liquidations,
            held,
            mark0,
            mark1,
        )

    def _margin_call(
        self,
        units: np.ndarray,
        naked: np.ndarray,
        cash_usd: np.ndarray,
        q: Quote,
        high1: np.ndarray,
        now1: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Buy back the uncovered calls ``naked`` ``(B, N)`` where the cash misses their maintenance
        margin at the high; returns units, cash USD, liquidation cost, what the cash could not pay
        ``(B, N)`` (per asset, USD) and the count."""
        p = self.params
        adverse = self.quote(now1, high1, self.strike, self.expiry)
        need = (naked * (p.short_maintenance_of_underlying * high1 + adverse.mid[..., 0])).sum(
            axis=1
        )
        breach = (naked.sum(axis=1) > 0.0) & (cash_usd < need)
        zero = np.zeros(self.n_envs)
        if not breach.any():
            return (
                units,
                cash_usd,
                zero,
                np.zeros(naked.shape),
                np.zeros(self.n_envs, dtype=np.int64),
            )
        closed = np.where(breach[:, None], naked, 0.0)
        fee = closed * p.liquidation_fee_of_underlying * high1
        pay = closed * adverse.ask[..., 0] + fee  # (B, N)
        cost = (closed * (adverse.ask[..., 0] - q.mid[..., 0]) + fee).sum(axis=1)
        total = pay.sum(axis=1)
        from_cash = np.minimum(cash_usd, total)
        unpaid = (
            pay
            * np.where(total > 0.0, 1.0 - from_cash / np.where(total > 0, total, 1.0), 0.0)[:, None]
        )
        units = units.copy()
        units[..., 0] = units[..., 0] + closed
        return units, cash_usd - from_cash, cost, unpaid, breach.astype(np.int64)

    def close_out(self, rows: np.ndarray) -> None:
        """Drop every position of envs ``rows`` ``(B,)`` bool (ruin: the account was closed out)."""
        keep = ~rows[:, None, None]
        self.units = np.where(keep, self.units, 0.0)
        # an empty slot reads strike 1 and expiry 0 wherever it was emptied (execute, move, reset)
        self.strike = np.where(keep, self.strike, 1.0)
        self.expiry = np.where(keep, self.expiry, 0)
        self.mark = np.where(keep, self.mark, 0.0)
        self.unit_greeks = np.where(keep[..., None], self.unit_greeks, 0.0)

    # ---------------------------------------------------------------------------- state
    def snapshot(self, index: int) -> dict:
        return {
            "option_units": self.units[index].tolist(),
            "option_strike": self.strike[index].tolist(),
            "option_expiry": self.expiry[index].tolist(),
        }

    def restore(self, index: int, state: dict) -> None:
        """Inverse of :meth:`snapshot`; call :meth:`refresh` after (the marks are quotes)."""
        self.units[index] = np.asarray(state["option_units"])
        self.strike[index] = np.asarray(state["option_strike"])
        self.expiry[index] = np.asarray(state["option_expiry"])

    def refresh(self, now: np.ndarray, price: np.ndarray) -> None:
        """Re-quote the marks and per-unit Greeks of the held contracts at flat time ``now``."""
        q = self.quote(now, price, self.strike, self.expiry)
        live = self.units != 0.0
        self.mark = np.where(live, q.mid, 0.0)
        self.unit_greeks = self._unit_greeks(q, live)


def _pay_in_units(
    spot_units: np.ndarray, owed: np.ndarray, price: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pay ``owed`` ``(B, N)`` USD (what the cash could not) in spot units at the close ``price``:
    first the units of the same asset (a covered call's collateral), then every other unit held, pro
    rata by value; returns the units left and ``(B,)`` the rest the venue absorbs (value-neutral at
    the close: the units leave at the price they are marked at)."""
    if not owed.any():
        return spot_units, np.zeros(owed.shape[0])
    held = np.maximum(spot_units, 0.0)
    own = np.minimum(owed / price, held)
    held = held - own
    rest = (owed - own * price).sum(axis=1)
    worth = (held * price).sum(axis=1)
    frac = np.where(worth > 0.0, np.minimum(rest / np.where(worth > 0.0, worth, 1.0), 1.0), 0.0)
    other = held * frac[:, None]
    return spot_units - own - other, np.maximum(rest - worth, 0.0)


def _fit(budget: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """``(B,)`` share of a purchase costing ``cost`` USD that ``budget`` USD pays (in [0, 1])."""
    return np.where(cost > budget, np.maximum(budget, 0.0) / np.where(cost > 0.0, cost, 1.0), 1.0)
