"""What the protocols do while the market moves from ``t`` to ``t + 1`` (after the pools are realigned).

Order, per env (all vectorized over the batch):

1. interest: the debt compounds at the numeraire's borrow rate of time ``t``
   (``D * exp(r dt)``), supplied collateral units grow at their supply rate (``u * (1 + r dt)``),
   and so does idle numeraire cash at the numeraire's supply rate (``env.lending.
   cash_earns_supply_rate``, on by default: holding cash is the supplied-USDC yield, so supplying
   risky assets is not paid more than the numeraire's own lenders are);
   ``interest_usd`` = paid minus earned, valued at ``t + 1`` prices. Rates over ``[t, t + 1]`` are the
   ones at ``t`` (Aave's rate is set by the reserve state at the start of the interval), so the agent
   observes the rate it will pay.
2. perps: PnL ``size * (mark(t+1) - mark(t))`` is settled to cash; funding over the step is
   ``rate(t) * size * index(t)`` (``funding_usd`` = paid minus received; ``rate > 0``: longs pay).
3. cascades: the borrower population is liquidated at the step's raw low (it depends only on
   prices: envs/leverage_population.py) and the ``pool_share_of_sales`` share of its liquidators'
   sales goes into the agent's pools (the rest trades elsewhere); the
   intra-step low used for the agent's checks is deepened to
   ``low_eff = low * (pool price after / before the forced sales)`` (liquidity-weighted pool price
   of each pair).
4. lending liquidation at ``low_eff`` (Aave close factor, bonus, protocol fee:
   ``liquidation_from_params``); the liquidator sells what it keeps through the pools.
4b. arbitrage closes every dislocation the forced sales left before the agent's next decision
   (on-chain it does so within the block): the pools get back exactly the reserves they had before
   the forced sales (at the ``t + 1`` market price, inside their fee band). The forced sellers bear
   the price impact of their own sales, and the agent trades against the same pools as without a
   cascade (no free lunch: buying from a pool a cascade pushed under the market, or even from one
   left at the low edge of its fee band, would pay the agent for other borrowers' liquidations).
   The cascade's only trace is ``low_eff``, the deeper low the agent's own positions are checked at.
   ``liquidation_penalty_usd`` = seized units x close(t+1) - debt repaid, so the accounting
   identity holds exactly with the position valued at the step's close.
5. perp margin check at the adverse price (``low_eff`` for longs, high for shorts, times the new
   ``1 + basis``): below maintenance margin, the whole book is closed there with the liquidation fee
   (``perp_liquidation``); the close-out loss versus the close (``size * (mark(t+1) - mark_adv)``)
   and the fee are liquidation costs. Equity below zero is absorbed by the venue's insurance fund
   (``insurance_usd``) and cash stays >= 0.

6. options (with ``env.options``; :meth:`defialloc.envs.option_book.OptionBook.move`): contracts expiring at
   ``t + 1`` settle in cash against the close, the others are marked at the venue's mid, and calls
   written beyond the units held are margin-checked at the high (bought back when short).

Identity (to rounding), per env: ``V(t+1) = V(t) - fees - slippage - gas - interest - funding -
liquidation + insurance + market PnL``, with market PnL = holdings during the move x price change
(numeraire included, debt revalued) + perp size x mark change.

Debt left on a position whose collateral is all gone stays owed (the agent's equity carries it; Aave
v3.0-3.2 kept such debt on the books). If the whole account's equity ends the move below zero
(:func:`write_off_negative_equity`), the account is closed out: every position goes to zero, the
shortfall is recorded as ``bad_debt_usd`` (absorbed by the lending protocol, like the perps'
``insurance_usd``) and the recorded value is exactly zero, never negative; the episode ends (ruin).
The identity gains ``+ bad_debt``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.envs.execution.pools import PoolBook
from defialloc.envs.indexing import gather_at
from defialloc.envs.leverage import LeverageEngine
from defialloc.envs.option_book import OptionMove
from defialloc.envs.protocols.lending import liquidation_from_params
from defialloc.envs.protocols.perps import perp_liquidation


@dataclass
class MoveOutcome:
    """Per-env ``(B,)`` results of the protocols during one move (USD unless named otherwise).

    ``units_during_move``/``cash_during_move``/``debt_during_move`` (numeraire units) and
    ``perp_size_during_move`` are the positions that earned the market PnL of the move;
    ``low_effective`` ``(B, N)`` the low the agent was checked at, ``cascade_sale_units`` ``(B, N)``
    what the population's liquidators sold into the pools.
    """

    units: np.ndarray
    cash: np.ndarray
    interest_usd: np.ndarray
    funding_usd: np.ndarray
    liquidation_penalty_usd: np.ndarray
    perp_liquidation_usd: np.ndarray
    insurance_usd: np.ndarray
    liquidations: np.ndarray
    low_effective: np.ndarray
    cascade_sale_units: np.ndarray
    units_during_move: np.ndarray
    cash_during_move: np.ndarray
    debt_during_move: np.ndarray
    perp_size_during_move: np.ndarray
    #: the pools took forced sales this move (and got their pre-sale reserves back afterwards)
    forced_sales: bool = False
    #: ``(B,)`` USD of negative equity written off at the end of the move (see the module docstring)
    bad_debt_usd: np.ndarray | None = None
    #: the options' settlement, marks and margin call (None without the options venue)
    options: OptionMove | None = None

    @property
    def liquidation_usd(self) -> np.ndarray:
        """Lending penalty + perp close-out + option margin-call close-out, USD ``(B,)``."""
        total = self.liquidation_penalty_usd + self.perp_liquidation_usd
        return total if self.options is None else total + self.options.liquidation_usd


def sell_into_pools(pools: PoolBook, rows: np.ndarray, sell_units: np.ndarray) -> np.ndarray:
    """Sell ``sell_units`` ``(len(rows), N)`` of each asset for the numeraire in the pools of envs
    ``rows``, split optimally across the fee tiers (a liquidator's router, no gas).

    Only the pairs with something to sell are routed. Returns ``(len(rows), N)`` the ratio of each
    pair's liquidity-weighted price (sum of numeraire / sum of asset reserves over its tiers) after
    the sale to before it (1 where nothing was sold).
    """
    ratio = np.ones(sell_units.shape)
    sub, asset = np.nonzero(sell_units > 0.0)
    if sub.size:
        ratio[sub, asset] = pools.sell_asset(rows[sub], asset, sell_units[sub, asset])
    return ratio


def protocol_move(
    engine: LeverageEngine,
    units: np.ndarray,
    cash: np.ndarray,
    now: np.ndarray,
    price0: np.ndarray,
    price1: np.ndarray,
    num1: np.ndarray,
    low1: np.ndarray,
    high1: np.ndarray,
    pools: PoolBook,
) -> MoveOutcome:
    """Apply steps 1-5 of the module docstring; mutates ``engine.debt``, ``engine.perp_size`` and
    ``pools``; returns the new spot units and cash with the step's protocol flows.

    Shapes: ``units``/``price*``/``low1``/``high1`` ``(B, N)``; ``cash``/``num1``/``now`` ``(B,)``;
    ``now`` is the flat decision-time index into the ``(B, L, ...)`` paths (envs/indexing.py; the
    move ends at ``now + 1``).
    """
    b = engine.n_envs
    paths, setup = engine.paths, engine.setup
    zero = np.zeros(b)
    held = (units, cash, engine.debt, engine.perp_size)
    debt = engine.debt
    interest = zero
    if engine.lending_on:
        debt = debt * gather_at(paths.debt_growth, now)
        grown = units * gather_at(paths.supply_growth, now)
        interest = (debt - held[2]) * num1 - ((grown - units) * price1).sum(axis=1)
        units = grown
        if engine.cfg.lending.cash_earns_supply_rate:
            grown_cash = cash * gather_at(paths.cash_growth, now)
            interest = interest - (grown_cash - cash) * num1
            cash = grown_cash

    low_eff, sales = low1, zero[:, None]
    before_sales = None  # the pools' reserves before any forced sale of this move (step 4b)
    if engine.cascades is not None:
        sales = engine.cascades.step(low1, price1)
        hit = np.flatnonzero(sales.any(axis=1))
        if hit.size:
            before_sales = pools.reserves.copy()
            low_eff = low1.copy()
            low_eff[hit] = low1[hit] * sell_into_pools(pools, hit, sales[hit])

    penalty = zero
    liquidations = np.zeros(b, dtype=np.int64)
    if engine.lending_on:
        reserves = setup.reserves
        assert reserves is not None and setup.lending is not None
        debt_usd = debt * num1
        underwater = (units * low_eff * reserves.liq_threshold).sum(axis=1) < debt_usd
        if underwater.any():
            idx = np.flatnonzero(underwater)
            # the spot router can leave -1e-13 units after a full sell; the protocol math rejects negatives
            bag = np.maximum(units[idx], 0.0)
            result = liquidation_from_params(
                debt_usd[idx], bag, low_eff[idx], reserves, setup.lending, validate=False
            )
            seized = result.collateral_seized_units
            units = units.copy()
            units[idx] = units[idx] - seized
            repaid_units = result.debt_repaid_usd / num1[idx]
            left = debt[idx] - repaid_units
            debt = debt.copy()
            # an ulp of debt left by a full close would read as a finite, huge HF
            debt[idx] = np.where(left <= 1e-12 * debt[idx], 0.0, left)
            penalty = zero.copy()
            penalty[idx] = (seized * price1[idx]).sum(axis=1) - result.debt_repaid_usd
            liquidations[idx] += result.liquidated
            if before_sales is None:
                before_sales = pools.reserves.copy()
            sell_into_pools(pools, idx, result.liquidator_received_units)
    engine.debt = debt
    if before_sales is not None:  # step 4b: arbitrage closes the dislocation before the decision
        pools.reserves = before_sales

    funding = perp_cost = insurance = zero
    if engine.perps_on:
        cash, funding, perp_cost, insurance = _settle_perps(
            engine, cash, now, price0, num1, low_eff, high1, liquidations
        )
    option_move = None
    if engine.options is not None:
        option_move = engine.options.move(units, cash, price1, num1, high1, now + 1)
        units, cash = option_move.units, option_move.cash
        insurance = insurance + option_move.insurance_usd
        liquidations = liquidations + option_move.liquidations
    return MoveOutcome(
        units,
        cash,
        interest,
        funding,
        penalty,
        perp_cost,
        insurance,
        liquidations,
        low_eff,
        sales if sales.shape == units.shape else np.zeros(units.shape),
        *held,
        forced_sales=before_sales is not None,
        options=option_move,
    )


def write_off_negative_equity(
    engine: LeverageEngine,
    move: MoveOutcome,
    value_usd: np.ndarray,
) -> np.ndarray:
    """Close out every account whose equity ``value_usd`` ``(B,)`` (USD at ``t + 1``) is below zero.

    The lending protocol recovers what the account holds (all of it: collateral, cash and perp
    margin count, so no part of the wallet is shielded from its own debt) and absorbs the rest:
    ``move.bad_debt_usd = -value`` on those rows, every position (``move.units``, ``move.cash``,
    ``engine.debt``, ``engine.perp_size``, the options) is set to zero, and the returned value is exactly 0 there
    (never negative). Perps are marked and settled already, so closing them moves no value.
    """
    bad = value_usd < 0.0
    move.bad_debt_usd = np.where(bad, -value_usd, 0.0)
    if not bad.any():
        return value_usd
    move.units = np.where(bad[:, None], 0.0, move.units)
    move.cash = np.where(bad, 0.0, move.cash)
    engine.debt = np.where(bad, 0.0, engine.debt)
    engine.perp_size = np.where(bad[:, None], 0.0, engine.perp_size)
    if engine.options is not None:
        engine.options.close_out(bad)
    return np.where(bad, 0.0, value_usd)


def _settle_perps(
    engine: LeverageEngine,
    cash: np.ndarray,
    now: np.ndarray,
    price0: np.ndarray,
    num1: np.ndarray,
    low_eff: np.ndarray,
    high1: np.ndarray,
    liquidations: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Funding, PnL settlement and the margin check; returns cash, funding, liquidation cost, insurance."""
    setup, paths = engine.setup, engine.paths
    assert setup.perps is not None and setup.mmf is not None
    size = engine.perp_size
    mark0, mark1 = gather_at(paths.mark, now), gather_at(paths.mark, now + 1)
    funding = (gather_at(paths.funding, now) * size * price0).sum(axis=1)
    margin_usd = cash * num1 - funding
    equity_close = margin_usd + (size * (mark1 - mark0)).sum(axis=1)
    cash = equity_close / num1
    zero = np.zeros(engine.n_envs)
    if not size.any():
        return cash, funding, zero, zero
    adverse_index = np.where(size < 0.0, high1, low_eff)
    mark_adverse = adverse_index * (1.0 + gather_at(paths.basis, now + 1))
    equity_adverse = margin_usd + (size * (mark_adverse - mark0)).sum(axis=1)
    maintenance = (setup.mmf * np.abs(size) * adverse_index).sum(axis=1)
    breach = (equity_adverse < maintenance) & (size != 0.0).any(axis=1)
    if not breach.any():
        return cash, funding, zero, zero
    idx = np.flatnonzero(breach)
    result = perp_liquidation(
        equity_adverse[idx],
        size[idx],
        adverse_index[idx],
        setup.mmf,
        setup.perps.liquidation_fee,
        validate=False,
    )
    cash = cash.copy()
    cash[idx] = result.equity_after_usd / num1[idx]
    cost, insurance = zero.copy(), zero.copy()
    cost[idx] = (size[idx] * (mark1[idx] - mark_adverse[idx])).sum(axis=1) + result.fee_usd
    insurance[idx] = result.insurance_loss_usd
    new_size = size.copy()
    new_size[idx] = size[idx] - result.closed_size_units
    engine.perp_size = new_size
    liquidations[idx] += result.liquidated
    return cash, funding, cost, insurance
