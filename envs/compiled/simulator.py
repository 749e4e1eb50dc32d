"""The runtime simulator: :class:`defialloc.envs.simulator.PortfolioSimulator`'s step, compiled.

:class:`CompiledSimulator` keeps the numpy simulator's interface, episode drawing, resets,
snapshots and ``info`` (all inherited), and replaces its step (``execute``, ``advance``, ``step``,
``observe``) by the fused numba kernels of :mod:`defialloc.envs.compiled.kernels_batch`. Its state and path
arrays are views into the packed tables of :mod:`defialloc.envs.compiled.layout`, so the inherited numpy
code writes them in place. The numpy step stays as the reference the equivalence test compares
against (``tests/test_compiled_step.py``: 10,000 random steps with everything on, to 1e-12).
"""

from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np

from defialloc.envs.actions import validate_actions
from defialloc.envs.compiled import kernels_batch as kb
from defialloc.envs.compiled.layout import (
    B_KILL,
    B_ROWS,
    B_TERMINATED,
    B_TRUNCATED,
    E_CASH_DURING,
    E_DEBT_DURING,
    E_FEES,
    E_GAS,
    E_KILL,
    E_OPT_FEES,
    E_OPT_PREMIUM,
    E_OPT_SPREAD,
    E_SLIPPAGE,
    E_TURNOVER,
    E_VALUE_BEFORE,
    I_NOW,
    I_OVERRIDE,
    I_REMAINING,
    I_T,
    M_DEPTH,
    M_ETH,
    M_GAS,
    M_NUM,
    O_INSURANCE,
    O_LIQUIDATION,
    O_SETTLE_FEE,
    O_SETTLEMENT,
    O_VALUE,
    P_BORROW,
    P_CASH_GROWTH,
    P_CASH_SUPPLY,
    P_DEBT_GROWTH,
    R_BAD_DEBT,
    R_COLLATERAL,
    R_DEBT_USD,
    R_DELTA_USD,
    R_FEES,
    R_FUNDING,
    R_GAS,
    R_HF,
    R_INSURANCE,
    R_INTEREST,
    R_LIQUIDATION,
    R_PENALTY,
    R_PERP_NOTIONAL,
    R_REWARD,
    R_ROWS,
    R_SLIPPAGE,
    R_TURNOVER,
    R_VALUE,
    S_CASH,
    S_DEBT,
    S_EMA_MEAN,
    S_EMA_SQ,
    S_HF,
    S_PEAK,
    S_VALUE,
    Layout,
)
from defialloc.envs.compiled.params import (
    IP_KIND,
    IP_OPT_MODEL,
    IP_OPT_TABLE,
    KIND_CODES,
    pack_params,
)
from defialloc.envs.compiled.population import CompiledCascades
from defialloc.envs.compiled.scratch import work_columns
from defialloc.envs.config import SimulationConfig
from defialloc.envs.execution.costs import TradeCosts
from defialloc.envs.indexing import flat_time_index
from defialloc.envs.leverage import StepCosts
from defialloc.envs.option_book import OptionFills
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.step_records import Execution, StepResult

#: the Greek totals' step fields, in the order of their rows from ``R_DELTA_USD``
GREEK_TOTALS = ("delta_usd", "gamma_usd", "vega_usd", "theta_usd")


class CompiledSimulator(PortfolioSimulator):
    """``n_envs`` portfolios stepped by compiled kernels (same results as the numpy reference)."""

    def __init__(self, config: SimulationConfig, n_envs: int) -> None:
        super().__init__(config, n_envs)
        engine = self.protocols
        kb_buckets = 0
        if engine is not None and engine.cascades is not None:
            kb_buckets = engine.cascades.params.n_buckets
        self._book = None if engine is None else engine.options
        self._model_table = False  # the options venue's generator table (_fill_regimes)
        self.layout = layout = Layout(
            self.n_assets,
            len(self.pools.fees),
            kb_buckets,
            engine is not None and engine.lending_on,
            engine is not None and engine.perps_on,
            self._book is not None,
        )
        b = n_envs
        self._fstate = np.zeros((b, layout.state_columns))
        self._istate = np.zeros((b, layout.istate_columns), dtype=np.int64)
        self._mtab = np.ones((b, self.path_length, layout.path_columns))
        self._rec = np.zeros((b, layout.rec_columns))
        self._bind_views()
        self._fill_regimes(np.arange(n_envs))
        if engine is not None and engine.cascades is not None:
            engine.cascades = CompiledCascades.over(engine.cascades, self._fstate, layout)
        self._fp, self._ip = pack_params(self, layout)
        self._ip_kinds: dict[tuple[str, bool], np.ndarray] = {}
        self._work = np.zeros((numba.config.NUMBA_NUM_THREADS, work_columns(layout.n, layout.k)))
        self._no_actions = np.zeros((b, self.action_dim))
        self._parallel = n_envs >= kb.PARALLEL_MIN_ENVS
        self._move = SimpleNamespace(
            units_during_move=self._rec[
                :, layout.e_units_during : layout.e_units_during + layout.n
            ],
            cash_during_move=self._rec[:, E_CASH_DURING],
            debt_during_move=self._rec[:, E_DEBT_DURING],
            perp_size_during_move=self._rec[
                :, layout.e_perp_during : layout.e_perp_during + layout.n
            ],
            low_effective=self._rec[:, layout.e_low_eff : layout.e_low_eff + layout.n],
            cascade_sale_units=self._rec[:, layout.e_sales : layout.e_sales + layout.n],
            options=self._option_move_views(),
        )
        self._issued: Execution | None = None

    def _option_move_views(self) -> SimpleNamespace | None:
        """The option move's record (``OptionMove``'s fields that ``info`` reads), views into ``rec``."""
        if self._book is None:
            return None
        lay, rec = self.layout, self._rec

        def contracts(at: int) -> np.ndarray:
            return _contracts(rec, at, self.n_assets)

        mv = lay.e_opt_move
        return SimpleNamespace(
            settlement_usd=rec[:, mv + O_SETTLEMENT],
            settlement_fee_usd=rec[:, mv + O_SETTLE_FEE],
            liquidation_usd=rec[:, mv + O_LIQUIDATION],
            insurance_usd=rec[:, mv + O_INSURANCE],
            units_during_move=contracts(lay.e_opt_during),
            mark_before=contracts(lay.e_opt_mark_before),
            mark_after=contracts(lay.e_opt_mark_after),
        )

    # ------------------------------------------------------------------ packed views
    def _views(self) -> list[tuple[object, str, np.ndarray]]:
        """``(owner, attribute, view)`` of every array the inherited code reads or writes."""
        lay, b, n = self.layout, self.n_envs, self.n_assets
        fs, ist, mt = self._fstate, self._istate, self._mtab
        scal = lay.m_scalars
        views: list[tuple[object, str, np.ndarray]] = [
            (self, "units", fs[:, lay.units : lay.units + n]),
            (self, "cash", fs[:, S_CASH]),
            (self, "peak", fs[:, S_PEAK]),
            (self, "value", fs[:, S_VALUE]),
            (self, "t", ist[:, I_T]),
            (self, "_now", ist[:, I_NOW]),
            (self.kill_switch, "remaining", ist[:, I_REMAINING]),
            (self.rewards, "ema_mean", fs[:, S_EMA_MEAN]),
            (self.rewards, "ema_sq", fs[:, S_EMA_SQ]),
            (
                self.pools,
                "reserves",
                fs[:, lay.reserves : lay.population].reshape(b, 2, lay.k, n).transpose(1, 2, 3, 0),
            ),
            (self, "close", mt[:, :, lay.m_close : lay.m_close + n]),
            (self, "low", mt[:, :, lay.m_low : lay.m_low + n]),
            (self, "high", mt[:, :, lay.m_high : lay.m_high + n]),
            (self, "numeraire", mt[:, :, scal + M_NUM]),
            (self, "depth", mt[:, :, scal + M_DEPTH]),
            (self, "gas_gwei", mt[:, :, scal + M_GAS]),
            (self, "eth", mt[:, :, scal + M_ETH]),
        ]
        engine = self.protocols
        if engine is not None:
            views += [
                (engine, "debt", fs[:, S_DEBT]),
                (engine, "perp_size", fs[:, lay.perp : lay.perp + n]),
                (engine, "hf_now", fs[:, S_HF]),
            ]
            paths, prot = engine.paths, lay.m_protocol
            if lay.lending:
                views += [
                    (paths, "borrow_rate", mt[:, :, prot + P_BORROW]),
                    (paths, "cash_supply_rate", mt[:, :, prot + P_CASH_SUPPLY]),
                    (paths, "debt_growth", mt[:, :, prot + P_DEBT_GROWTH]),
                    (paths, "cash_growth", mt[:, :, prot + P_CASH_GROWTH]),
                    (paths, "supply_rate", mt[:, :, lay.m_supply_rate : lay.m_supply_rate + n]),
                    (
                        paths,
                        "supply_growth",
                        mt[:, :, lay.m_supply_growth : lay.m_supply_growth + n],
                    ),
                ]
            if lay.perps:
                views += [
                    (paths, "basis", mt[:, :, lay.m_basis : lay.m_basis + n]),
                    (paths, "mark", mt[:, :, lay.m_mark : lay.m_mark + n]),
                    (paths, "funding", mt[:, :, lay.m_funding : lay.m_funding + n]),
                ]
        book = self._book
        if book is not None:
            views += [
                (book, "units", _contracts(fs, lay.opt_units, n)),
                (book, "strike", _contracts(fs, lay.opt_strike, n)),
                (book, "mark", _contracts(fs, lay.opt_mark, n)),
                (book, "unit_greeks", _contracts(fs, lay.opt_greeks, n, 4)),
                (book, "expiry", _contracts(ist, lay.i_expiry, n)),
                (book, "h_next", mt[:, :, lay.m_opt_h : lay.m_opt_h + n]),
            ]
        return views

    def _bind_views(self) -> None:
        """Copy the current arrays into the packed tables and point the attributes at them."""
        self._bound = self._views()
        tables = (self._fstate, self._istate, self._mtab)
        for owner, name, view in self._bound:
            if not any(np.shares_memory(view, table) for table in tables):  # a reshape that copied
                raise AssertionError(f"{name}: not a view into the packed tables")
            view[...] = getattr(owner, name)
            setattr(owner, name, view)

    def _rebind(self) -> None:
        """Re-point attributes that inherited code replaced by new arrays (values copied in)."""
        for owner, name, view in self._bound:
            current = getattr(owner, name)
            if current is not view:
                view[...] = current
                setattr(owner, name, view)

    def sync_time_index(self) -> None:
        self._now[...] = flat_time_index(self.n_envs, self.path_length, self._tau())

    # ------------------------------------------------------------------ resets
    def reset_envs(self, index, seeds, paths=None, drawn=None) -> None:  # noqa: ANN001
        super().reset_envs(index, seeds, paths=paths, drawn=drawn)
        self._rebind()
        self._fill_regimes(index)

    def _fill_regimes(self, index: np.ndarray) -> None:
        """The options venue's regime codes of envs ``index`` into their path table (float column),
        and which forecast table the batch's paths take (``OptionBook.table``; set at reset only)."""
        if self._book is not None:
            self._mtab[index, :, self.layout.m_regime] = self._book.regime[index]
            self._model_table = bool(self._book.truth.all())

    def restore(self, index: int, state: dict) -> None:
        super().restore(index, state)
        self._rebind()

    # ------------------------------------------------------------------ step
    def _kernels(self, name: str):  # noqa: ANN202
        return getattr(kb, f"{name}_{'parallel' if self._parallel else 'serial'}")

    def _prepare(self, actions: np.ndarray) -> tuple[np.ndarray, bool]:
        """``(B, width)`` float64 actions and whether they are spot-only (shape checked here,
        finiteness by the kernel)."""
        try:
            arr = np.asarray(actions, dtype=np.float64)
        except (TypeError, ValueError):  # text or ragged input: the reference's clear message
            validate_actions(actions, self.n_envs, self.action_dim)
            raise
        if arr.ndim == 1 and self.n_envs == 1:
            arr = arr[None, :]
        width = arr.shape[-1] if arr.ndim == 2 else -1
        spot_only = width == self.n_assets + 1 < self.action_dim
        if arr.shape != (self.n_envs, self.n_assets + 1 if spot_only else self.action_dim):
            validate_actions(actions, self.n_envs, self.action_dim)  # raises with the shapes
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        return arr, spot_only

    def _override(self, override: np.ndarray | None) -> None:
        if override is None:
            self._istate[:, I_OVERRIDE] = 0
        else:
            self._istate[:, I_OVERRIDE] = np.asarray(override, dtype=bool)

    def _raise_bad(self, code: int, actions: np.ndarray | None) -> None:
        if code > 0:
            validate_actions(actions, self.n_envs, actions.shape[-1])  # type: ignore[union-attr]
        ended = np.flatnonzero(self.t >= self.horizon).tolist()
        raise RuntimeError(f"envs {ended} are at the end of their path; reset them first")

    def execute(
        self,
        actions: np.ndarray | None,
        *,
        override: np.ndarray | None = None,
        hold: bool = False,
        action_kind: str | None = None,
    ) -> Execution:
        """:meth:`PortfolioSimulator.execute`, compiled (same arguments and record)."""
        if hold:
            kb.hold_all(self._fstate, self._rec)
        else:
            if actions is None:
                raise ValueError(
                    "actions is None: only a hold step (hold=True) trades without actions"
                )
            arr, spot_only = self._prepare(actions)
            self._override(override)
            code = self._kernels("execute")(
                arr, spot_only, self._fstate, self._istate, self._mtab, self._work, self._fp,
                self._ip_for(action_kind), self._rec,
            )  # fmt: skip
            if code:
                self._raise_bad(code, arr)
        self._pending = self._issued = self._execution(hold)
        return self._pending

    def _execution(self, hold: bool) -> Execution:
        """The last execute's record (copies of ``rec``'s columns)."""
        rec, lay = self._rec, self.layout
        costs = TradeCosts(rec[:, E_FEES].copy(), rec[:, E_SLIPPAGE].copy(), rec[:, E_GAS].copy())
        done = Execution(
            rec[:, E_VALUE_BEFORE].copy(),
            costs,
            rec[:, E_TURNOVER].copy(),
            rec[:, E_KILL] != 0.0,
        )
        if self._book is not None and not hold:
            done.options = OptionFills(
                self.cash.copy(),
                rec[:, E_OPT_FEES].copy(),
                rec[:, E_OPT_SPREAD].copy(),
                rec[:, E_OPT_PREMIUM].copy(),
            )
        if self.protocols is None and not hold:
            n = self.n_assets
            done.current_weights = rec[:, lay.e_current : lay.e_current + n + 1].copy()
            done.target_weights = rec[:, lay.e_target : lay.e_target + n + 1].copy()
            done.trade_mask = rec[:, lay.e_mask : lay.e_mask + n] != 0.0
        return done

    def _load_pending(self, done: Execution) -> None:
        """Put an execution record that did not come from the last execute (a restored paper
        ledger's) where the kernels read it."""
        rec = self._rec
        rec[:, E_VALUE_BEFORE] = done.value_before
        rec[:, E_FEES] = done.costs.fees_usd
        rec[:, E_SLIPPAGE] = done.costs.slippage_usd
        rec[:, E_GAS] = done.costs.gas_usd
        rec[:, E_TURNOVER] = done.turnover
        rec[:, E_KILL] = np.asarray(done.kill_switch, dtype=bool)
        fills = done.options
        rec[:, E_OPT_FEES] = 0.0 if fills is None else fills.fees_usd
        rec[:, E_OPT_SPREAD] = 0.0 if fills is None else fills.spread_usd
        rec[:, E_OPT_PREMIUM] = 0.0 if fills is None else fills.premium_usd

    def _results(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        b = self.n_envs
        return (
            np.empty((R_ROWS, b)),
            np.empty((B_ROWS, b), dtype=bool),
            np.empty(b, dtype=np.int8),
            np.zeros(b, dtype=np.int64),
        )

    def advance(self) -> StepResult:
        """:meth:`PortfolioSimulator.advance`, compiled."""
        if self._pending is None:
            raise RuntimeError("advance() needs an execute() first")
        done, self._pending = self._pending, None
        if done is not self._issued:
            self._load_pending(done)
        self._issued = None
        res_f, res_b, res_r, liq = self._results()
        code = self._kernels("advance")(
            self._fstate, self._istate, self._mtab, self.regime, self._work, self._fp,
            self._ip_for(None),
            self._rec, res_f, res_b, res_r, liq,
        )  # fmt: skip
        if code:
            self._pending = done
            self._raise_bad(code, None)
        return self._step_result(res_f, res_b, res_r, liq)

    def step(
        self,
        actions: np.ndarray | None,
        *,
        override: np.ndarray | None = None,
        hold: bool = False,
        action_kind: str | None = None,
    ) -> StepResult:
        """Execute (or hold) and advance every env in one compiled pass (see :meth:`step_observe`)."""
        return self.step_observe(actions, override=override, hold=hold, action_kind=action_kind)[0]

    def _ip_for(self, action_kind: str | None) -> np.ndarray:
        """The int parameters with the actions read as ``action_kind`` (None: the config's kind;
        baselines pass ``"target"``) and the options venue's forecast table of the batch's paths
        (``OptionBook.table``: the generator's where every path carries its state)."""
        truth = self._book is not None and self._model_table
        if (action_kind is None or action_kind == self.action_map.kind) and not truth:
            return self._ip
        kind = self.action_map.kind if action_kind is None else action_kind
        if kind not in KIND_CODES:
            raise ValueError(f"action_kind={action_kind!r} must be one of {sorted(KIND_CODES)}")
        ip = self._ip_kinds.get((kind, truth))
        if ip is None:
            ip = self._ip.copy()
            ip.setflags(write=True)
            ip[IP_KIND] = KIND_CODES[kind]
            if truth:
                ip[IP_OPT_TABLE] = ip[IP_OPT_MODEL]
            ip.setflags(write=False)
            self._ip_kinds[(kind, truth)] = ip
        return ip

    def step_observe(
        self,
        actions: np.ndarray | None,
        *,
        override: np.ndarray | None = None,
        hold: bool = False,
        action_kind: str | None = None,
    ) -> tuple[StepResult, np.ndarray]:
        """:meth:`step` and the observation after it ``(B, obs_dim)`` float32, in one kernel call."""
        if hold:
            arr, spot_only, mode = self._no_actions, False, 1
        else:
            if actions is None:
                raise ValueError(
                    "actions is None: only a hold step (hold=True) trades without actions"
                )
            arr, spot_only = self._prepare(actions)
            self._override(override)
            mode = 0
        res_f, res_b, res_r, liq = self._results()
        obs = np.empty((self.n_envs, self.obs_dim), dtype=np.float32)
        code = self._kernels("step")(
            arr, mode, spot_only, self._fstate, self._istate, self._mtab, self.regime,
            self.features, self._work, self._fp, self._ip_for(action_kind), self._rec, res_f,
            res_b, res_r, liq, obs,
        )  # fmt: skip
        if code:
            self._raise_bad(code, arr)
        self._pending = self._issued = None
        return self._step_result(res_f, res_b, res_r, liq), obs

    def _step_result(
        self, res_f: np.ndarray, res_b: np.ndarray, res_r: np.ndarray, liq: np.ndarray
    ) -> StepResult:
        if self.protocols is None:
            costs = TradeCosts(res_f[R_FEES], res_f[R_SLIPPAGE], res_f[R_GAS])
        else:
            fees = res_f[R_FEES]
            if self._book is not None:  # the settlement fees join the fees
                fees = fees + self._rec[:, self.layout.e_opt_move + O_SETTLE_FEE]
            costs = StepCosts(
                fees,
                res_f[R_SLIPPAGE],
                res_f[R_GAS],
                res_f[R_INTEREST],
                res_f[R_FUNDING],
                res_f[R_LIQUIDATION],
            )
        result = StepResult(
            res_f[R_REWARD],
            res_b[B_TERMINATED],
            res_b[B_TRUNCATED],
            res_f[R_VALUE],
            costs,
            res_f[R_TURNOVER],
            res_r,
            res_b[B_KILL],
        )
        if self.protocols is not None:
            result.health_factor = res_f[R_HF]
            result.debt_usd = res_f[R_DEBT_USD]
            result.collateral_usd = res_f[R_COLLATERAL]
            result.liquidations = liq
            result.liquidation_penalty_usd = res_f[R_PENALTY]
            result.interest_usd = res_f[R_INTEREST]
            result.funding_usd = res_f[R_FUNDING]
            result.perp_notional_usd = res_f[R_PERP_NOTIONAL]
            result.insurance_usd = res_f[R_INSURANCE]
            result.bad_debt_usd = res_f[R_BAD_DEBT]
        if self._book is not None:
            self._option_fields(result, res_f)
        return result

    def _option_fields(self, result: StepResult, res_f: np.ndarray) -> None:
        """The options' step fields (``protocol_step_fields``) and the Greek totals at ``t + 1``."""
        rec, mv = self._rec, self.layout.e_opt_move
        result.option_value_usd = rec[:, mv + O_VALUE].copy()
        result.option_premium_usd = rec[:, E_OPT_PREMIUM].copy()
        result.option_fees_usd = rec[:, E_OPT_FEES].copy()
        result.option_spread_usd = rec[:, E_OPT_SPREAD].copy()
        result.option_settlement_usd = rec[:, mv + O_SETTLEMENT].copy()
        result.option_settlement_fee_usd = rec[:, mv + O_SETTLE_FEE].copy()
        for name, row in zip(GREEK_TOTALS, range(R_DELTA_USD, R_DELTA_USD + 4), strict=True):
            setattr(result, name, res_f[row])

    def observe(self) -> np.ndarray:
        """:meth:`PortfolioSimulator.observe`, compiled."""
        obs = np.empty((self.n_envs, self.obs_dim), dtype=np.float32)
        kb.observe_serial(
            self._fstate, self._istate, self._mtab, self.features, self._fp, self._ip_for(None), obs
        )
        return obs


def _contracts(table: np.ndarray, at: int, n: int, per: int = 1) -> np.ndarray:
    """The option slots' view ``(B, N, 2[, per])`` of ``table``'s columns from ``at`` (contract
    ``(i, slot)`` at ``2 i + slot``, ``per`` numbers each)."""
    shape = (table.shape[0], n, 2) if per == 1 else (table.shape[0], n, 2, per)
    return table[:, at : at + 2 * n * per].reshape(shape)


def compiled_unsupported(config: SimulationConfig) -> str | None:
    """Why ``config`` would run on the numpy reference instead of the compiled step (None: it does
    not). The kernels cover every protocol and the options venue, so no valid config falls back
    today; the hook stays for a mechanism added to the reference before its kernels."""
    del config
    return None


def make_simulator(config: SimulationConfig, n_envs: int) -> PortfolioSimulator:
    """The runtime simulator for ``config``: :class:`CompiledSimulator`, or the numpy
    :class:`PortfolioSimulator` where :func:`compiled_unsupported` names a reason (same interface and
    results either way)."""
    if compiled_unsupported(config) is None:
        return CompiledSimulator(config, n_envs)
    return PortfolioSimulator(config, n_envs)
