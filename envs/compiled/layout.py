"""Where every number the compiled step reads or writes lives: packed per-env tables and their columns.

The kernels take few, large arrays (numba's dispatcher costs ~0.2-0.4 us per array argument, so a
step that passed each state and path array separately would spend more time being called than
computing for a single env). Everything a step touches is therefore packed:

``fstate`` ``(B, S)`` float64, one row per env (all the float state):
    ``[cash, peak, value, debt, hf_now, ema_mean, ema_sq]`` (scalars, :data:`S_SCALARS`), then
    ``units`` ``(N,)``, ``perp_size`` ``(N,)``, the pools' reserves ``(2, K, N)`` (side-major:
    asset units then numeraire units, tier, asset) and the borrower population ``(3, N, Kb)``
    (collateral units, debt USD, fresh bucket sizes; only with cascades, else ``Kb = 0``), then
    with the options venue the option book ``(N, 2)`` each (slot 0 the call, 1 the put): signed
    units, strikes USD, marks USD per unit, and the per-unit Greeks ``(N, 2, 4)``.
``istate`` ``(B, 4 [+ 2N])`` int64: ``t``, the flat decision-time index ``env * L + warmup + t``, the
    kill-switch's remaining steps, the override flag of the current execute, and with options the
    contracts' expiries ``(N, 2)`` (time index of the path).
``mtab`` ``(B, L, C)`` float64, the market and protocol series of every env's path, one row per
    time point (a step reads one contiguous row): close, low, high ``(N,)`` each, numeraire USD,
    depth multiplier, gas gwei, ETH USD; with lending borrow rate, cash supply rate, debt growth,
    cash growth, supply rate ``(N,)``, supply growth ``(N,)``; with perps basis, mark, funding
    ``(N,)`` each; with options the venue's next-step variance ``(N,)`` and the regime code.
``rec`` ``(B, R)`` float64, what one execute and one move leave for the next call and for ``info``
    (value before the trade, its costs, turnover, the override flag; the weights before and after;
    the positions during the move, the effective low and the population's pool sales; with options
    the move's option flows and the contracts held through it, their marks before and after).

The Python-side attributes the rest of the code reads (``sim.units``, ``sim.close``,
``sim.pools.reserves``, ``engine.debt``, ``engine.paths.mark``, ...) are numpy views into these
tables, so resets and restores written for the numpy simulator fill them in place.
"""

from __future__ import annotations

from dataclasses import dataclass

# fstate scalar columns
S_CASH, S_PEAK, S_VALUE, S_DEBT, S_HF, S_EMA_MEAN, S_EMA_SQ = range(7)
S_SCALARS = 7
# istate columns
I_T, I_NOW, I_REMAINING, I_OVERRIDE = range(4)
I_COLUMNS = 4
# mtab scalar columns after the three (N,) price blocks
M_NUM, M_DEPTH, M_GAS, M_ETH = range(4)
# protocol scalar columns (offsets from Layout.m_protocol)
P_BORROW, P_CASH_SUPPLY, P_DEBT_GROWTH, P_CASH_GROWTH = range(4)
P_SCALARS = 4
# rec scalar columns (the pending execution)
(
    E_VALUE_BEFORE,
    E_FEES,
    E_SLIPPAGE,
    E_GAS,
    E_TURNOVER,
    E_KILL,
    E_CASH_DURING,
    E_DEBT_DURING,
    E_OPT_FEES,
    E_OPT_SPREAD,
    E_OPT_PREMIUM,
) = range(11)
E_SCALARS = 11
# the option move's scalars (offsets from Layout.e_opt_move)
O_SETTLEMENT, O_SETTLE_FEE, O_LIQUIDATION, O_INSURANCE, O_VALUE = range(5)
O_SCALARS = 5
# rows of the float results of a move (res_f)
(
    R_REWARD,
    R_VALUE,
    R_FEES,
    R_SLIPPAGE,
    R_GAS,
    R_TURNOVER,
    R_INTEREST,
    R_FUNDING,
    R_LIQUIDATION,
    R_PENALTY,
    R_INSURANCE,
    R_BAD_DEBT,
    R_HF,
    R_DEBT_USD,
    R_COLLATERAL,
    R_PERP_NOTIONAL,
    R_DELTA_USD,
    R_GAMMA_USD,
    R_VEGA_USD,
    R_THETA_USD,
) = range(20)
R_ROWS = 20
# rows of the flag results (res_b)
B_TERMINATED, B_TRUNCATED, B_KILL = range(3)
B_ROWS = 3


@dataclass(frozen=True)
class Layout:
    """Column offsets of the packed tables for ``n`` assets, ``k`` fee tiers and ``kb`` population
    buckets (0 without cascades); ``lending``/``perps``/``options`` say which protocol columns exist."""

    n: int
    k: int
    kb: int
    lending: bool
    perps: bool
    options: bool = False

    # ---------------------------------------------------------------- fstate
    @property
    def units(self) -> int:
        return S_SCALARS

    @property
    def perp(self) -> int:
        return S_SCALARS + self.n

    @property
    def reserves(self) -> int:
        return S_SCALARS + 2 * self.n

    @property
    def population(self) -> int:
        return self.reserves + 2 * self.k * self.n

    @property
    def opt_units(self) -> int:
        """Option units ``(N, 2)`` (then strikes, marks ``(N, 2)`` and Greeks ``(N, 2, 4)``)."""
        return self.population + 3 * self.n * self.kb

    @property
    def opt_strike(self) -> int:
        return self.opt_units + 2 * self.n

    @property
    def opt_mark(self) -> int:
        return self.opt_strike + 2 * self.n

    @property
    def opt_greeks(self) -> int:
        return self.opt_mark + 2 * self.n

    @property
    def state_columns(self) -> int:
        return self.opt_units + 14 * self.n * int(self.options)

    # ---------------------------------------------------------------- istate
    @property
    def i_expiry(self) -> int:
        """The option contracts' expiries ``(N, 2)``."""
        return I_COLUMNS

    @property
    def istate_columns(self) -> int:
        return I_COLUMNS + 2 * self.n * int(self.options)

    # ---------------------------------------------------------------- mtab
    @property
    def m_close(self) -> int:
        return 0

    @property
    def m_low(self) -> int:
        return self.n

    @property
    def m_high(self) -> int:
        return 2 * self.n

    @property
    def m_scalars(self) -> int:
        """First of the ``M_*`` columns (numeraire, depth, gas, ETH)."""
        return 3 * self.n

    @property
    def m_protocol(self) -> int:
        """First of the ``P_*`` columns (lending scalars)."""
        return 3 * self.n + 4

    @property
    def m_supply_rate(self) -> int:
        return self.m_protocol + P_SCALARS

    @property
    def m_supply_growth(self) -> int:
        return self.m_supply_rate + self.n

    @property
    def m_basis(self) -> int:
        return self.m_protocol + (P_SCALARS + 2 * self.n if self.lending else 0)

    @property
    def m_mark(self) -> int:
        return self.m_basis + self.n

    @property
    def m_funding(self) -> int:
        return self.m_mark + self.n

    @property
    def m_opt_h(self) -> int:
        """The options venue's next-step variance ``(N,)`` (then the regime code)."""
        return self.m_basis + (3 * self.n if self.perps else 0)

    @property
    def m_regime(self) -> int:
        return self.m_opt_h + self.n

    @property
    def path_columns(self) -> int:
        return self.m_opt_h + (self.n + 1) * int(self.options)

    # ---------------------------------------------------------------- rec
    @property
    def e_current(self) -> int:
        """Weights before the trade ``(N + 1,)`` (spot intent)."""
        return E_SCALARS

    @property
    def e_target(self) -> int:
        """Target weights acted on ``(N + 1,)``."""
        return E_SCALARS + self.n + 1

    @property
    def e_mask(self) -> int:
        """Assets submitted ``(N,)`` (1.0 / 0.0)."""
        return E_SCALARS + 2 * (self.n + 1)

    @property
    def e_units_during(self) -> int:
        return self.e_mask + self.n

    @property
    def e_perp_during(self) -> int:
        return self.e_units_during + self.n

    @property
    def e_low_eff(self) -> int:
        return self.e_perp_during + self.n

    @property
    def e_sales(self) -> int:
        return self.e_low_eff + self.n

    @property
    def e_opt_move(self) -> int:
        """The option move's scalars (``O_*``), then the units held through the move, their marks
        at ``t`` and after the move, ``(N, 2)`` each."""
        return self.e_sales + self.n

    @property
    def e_opt_during(self) -> int:
        return self.e_opt_move + O_SCALARS

    @property
    def e_opt_mark_before(self) -> int:
        return self.e_opt_during + 2 * self.n

    @property
    def e_opt_mark_after(self) -> int:
        return self.e_opt_mark_before + 2 * self.n

    @property
    def rec_columns(self) -> int:
        return self.e_opt_move + (O_SCALARS + 6 * self.n) * int(self.options)
