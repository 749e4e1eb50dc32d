"""The paper-trading loop: feed -> streaming simulator -> ONNX policy -> env execution -> ledger.

For every bar, in one ledger transaction:

1. check the bar (consecutive index, one step after the previous bar, finite positive prices);
2. load it into the :class:`~defialloc.envs.streaming.StreamingSimulator`; history bars stop here;
3. at the first decision bar open the portfolio (the env's reset); at later bars ``advance``: mark
   the holdings to the new prices, realign the pools, update the peak and the kill-switch's clock;
4. observe (the env's own feature code), run the ONNX policy, apply the policy-side kill-switch
   when asked for (``--kill-switch``: :class:`~defialloc.agents.kill_switch_policy.KillSwitchPolicy` on the
   policy's action, with the simulator's value and health factor), ``execute`` (the env's own
   kill-switch if its config enables it, no-trade band, routing across fee tiers, fees, slippage,
   gas: the env's execution model);
5. write the bar, the decision, the orders, the fills, the positions, the equity row and the
   simulator's state after the bar; then stream the bar's metrics to MLflow and refresh the view.

A restart with the same arguments reopens the ledger, reloads its bars into a fresh simulator,
restores the last state and asks the feed for the next bar, so a run killed at any moment and resumed
writes exactly the ledger an uninterrupted run writes. Nothing here imports torch or
stable-baselines3, and nothing is unpickled: the policy is ONNX, every state is JSON.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defialloc.agents.kill_switch_policy import KillSwitchPolicy, kill_switch_params
from defialloc.agents.onnx_policy import OnnxPolicy
from defialloc.envs.config import SimulationConfig, load_config
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.envs.step_records import StepResult
from defialloc.envs.streaming import MarketBar, StreamingSimulator, check_bar
from defialloc.training.paper.feeds import Feed, check_spacing
from defialloc.training.paper.ledger import (
    LEVERED_COLUMNS,
    BarRecord,
    Ledger,
    check_kill_switch_matches,
    check_ledger_matches,
    inspect_ledger,
)
from defialloc.training.paper.records import (
    debt_usd,
    fill_rows,
    levered_rows,
    order_rows,
    position_rows,
)
from defialloc.training.paper.reference import reference_backtest
from defialloc.training.paper.tracking import MetricsStream, bar_metrics
from defialloc.training.paper.writer_lock import WriterLock

DEFAULT_CAPACITY = 1024
#: the MLflow artifact of a paper run: equity vs the reference backtest, levered state
EQUITY_PLOT = "paper_equity.png"
HALTED_RUINED = "halted: ruined"


@dataclass
class PaperSummary:
    """Where a paper-trading session ended. Values in USD; returns and drawdowns as fractions."""

    ledger: str
    policy_id: str
    first_new_bar: int
    last_bar: int
    bars_written: int
    decisions: int
    first_time: str | None
    last_time: str | None
    initial_value_usd: float
    value_usd: float
    total_return: float
    max_drawdown: float
    fees_usd: float
    slippage_usd: float
    gas_usd: float
    status: str
    mlflow_run_id: str | None = None
    kill_switch: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PaperTrader:
    """Runs one policy on one feed into one ledger.

    Args:
        policy: the exported policy (its manifest holds the env config used for execution).
        feed: the market source.
        ledger_path: SQLite file; created on the first run, resumed afterwards.
        mlflow_experiment: stream metrics to a run in this experiment (None: no MLflow).
        on_bar: called after each committed bar with the record and the trader (the terminal view).
        history_rows: see :class:`~defialloc.envs.streaming.StreamingSimulator` (None: exact backtest features).
        kill_switch: run the policy behind the policy-side kill-switch with these parameters (None or
            ``enabled=False``: off). Recorded in the ledger's meta and the MLflow params; a ledger
            resumes only with the setting it was started with.
        reference: when the ledger is created, backtest the policy on the feed's path when it has
            one (replayed period, simulated scenario) and store it as the ``reference`` equity
            (``training/paper/reference.py``); False skips it.
    """

    def __init__(
        self,
        policy: OnnxPolicy,
        feed: Feed,
        ledger_path: str | Path,
        *,
        mlflow_experiment: str | None = None,
        on_bar: Callable[[BarRecord, PaperTrader], None] | None = None,
        history_rows: int | None = None,
        kill_switch: KillSwitchConfig | None = None,
        reference: bool = True,
    ) -> None:
        self.policy = policy
        self.reference = reference
        self.manifest = policy.manifest
        self.feed = feed
        self.ledger_path = Path(ledger_path)
        self.mlflow_experiment = mlflow_experiment
        self.on_bar = on_bar
        self.history_rows = history_rows
        self.config: SimulationConfig = load_config(self.manifest.simulation_config)
        self.asset_names = tuple(self.manifest.asset_names)
        if kill_switch is not None and not kill_switch.enabled:
            kill_switch = None
        self.kill_switch = kill_switch
        self.overlay: KillSwitchPolicy | None = None
        if kill_switch is not None:
            self.overlay = KillSwitchPolicy(policy, kill_switch, self.config)
            self.overlay.reset(1)
        #: what the ledger's meta records (None: off)
        self.kill_switch_meta = None if kill_switch is None else kill_switch.model_dump(mode="json")
        self.ledger: Ledger | None = None
        self.sim: StreamingSimulator | None = None
        self.stream: MetricsStream | None = None
        self._last_time: str | None = None
        self.totals = {"fees_usd": 0.0, "slippage_usd": 0.0, "gas_usd": 0.0}
        self.last_record: BarRecord | None = None
        self._preflight: tuple[dict[str, Any] | None] | None = None
        self._lock: WriterLock | None = None
        self._extends = False  # the feed continues the ledger's (e.g. a later --end)

    # ------------------------------------------------------------------ checks (nothing written)
    def preflight(self) -> dict[str, Any] | None:
        """Every check that can fail before anything is written; returns the existing ledger's meta."""
        self.manifest.check_market(self.feed.asset_names, self.feed.step_days)
        if self.feed.numeraire != self.manifest.numeraire:
            raise ValueError(
                f"feed numeraire {self.feed.numeraire!r} does not match the policy's {self.manifest.numeraire!r}"
            )
        capacity = (
            DEFAULT_CAPACITY
            if self.feed.length is None
            else max(1, self.feed.length - self.config.env.warmup)
        )
        # the simulator checks the config (e.g. spot-only) before anything is written
        self.sim = StreamingSimulator(
            self.config, capacity, self.feed.regime_names, self.history_rows
        )
        missing = [f for f in self.sim.protocol_fields if f not in self.feed.protocol_fields]
        if missing:
            env = self.config.env
            raise ValueError(
                f"the policy trades with env.lending.enabled={env.lending.enabled}, "
                f"env.perps.enabled={env.perps.enabled}: its bars must carry {', '.join(missing)}; "
                f"feed {self.feed.kind!r} provides {', '.join(self.feed.protocol_fields) or 'none'}"
            )
        self.feed.validate()
        if self._lock is None:
            self._lock = WriterLock(self.ledger_path)
        try:
            meta = inspect_ledger(self.ledger_path)
            if meta is not None:
                self._extends = check_ledger_matches(
                    meta,
                    self.ledger_path,
                    self.manifest.policy_id,
                    self.feed.identity(),
                    self.feed.extends,
                )
                check_kill_switch_matches(meta, self.ledger_path, self.kill_switch_meta)
        except BaseException:
            self._lock.release()
            self._lock = None
            raise
        self._preflight = (meta,)
        return meta

    # ------------------------------------------------------------------ open / resume
    def _open(self, meta: dict[str, Any] | None) -> None:
        run_id = None if meta is None else meta.get("mlflow_run_id")
        if self.mlflow_experiment is not None and run_id is None:
            self.stream = MetricsStream.start(
                self.mlflow_experiment,
                run_name=f"paper-{self.manifest.algo}-{self.feed.kind}",
                tags={"kind": "paper", "policy_id": self.manifest.policy_id, "feed": self.feed.kind,
                      "ledger": str(self.ledger_path.resolve()), "algo": self.manifest.algo,
                      "config_hash": self.manifest.config_hash,
                      "kill_switch": str(self.kill_switch is not None).lower()},
                params={"policy_source": self.manifest.source, **{f"feed.{k}": v for k, v in self.feed.identity().items()},
                        **kill_switch_params(self.kill_switch)},
            )  # fmt: skip
            run_id = self.stream.run_id
        elif self.mlflow_experiment is not None:
            self.stream = MetricsStream(run_id)
        if meta is None:
            found = None
            if self.reference:
                found = reference_backtest(self.policy, self.feed, self.config, self.kill_switch)
            self.ledger = Ledger.create(
                self.ledger_path,
                {
                    "policy_id": self.manifest.policy_id,
                    "algo": self.manifest.algo,
                    "manifest": self.manifest.to_dict(),
                    "feed": self.feed.identity(),
                    "asset_names": list(self.asset_names),
                    "numeraire": self.manifest.numeraire,
                    "warmup": self.config.env.warmup,
                    "mlflow_run_id": run_id,
                    "kill_switch": self.kill_switch_meta,
                    "protocol_sources": self.feed.protocol_sources(),
                    "reference": None if found is None else found[0],
                },
                reference=[] if found is None else found[1],
            )
        else:
            self.ledger = Ledger.open(self.ledger_path)
            if self._extends:  # the same bars and more: the ledger now follows the longer feed
                found = None
                if self.reference and self.ledger.meta.get("reference") is not None:
                    found = reference_backtest(
                        self.policy, self.feed, self.config, self.kill_switch
                    )
                self.ledger.extend_feed(self.feed.identity(), found)
            if run_id is not None and self.ledger.meta.get("mlflow_run_id") != run_id:
                self.ledger.set_meta("mlflow_run_id", run_id)
        self._resume()

    def _resume(self) -> None:
        assert self.ledger is not None and self.sim is not None
        bars = self.ledger.load_bars()
        if not bars:
            return
        self.sim.load_history(bars)
        self._last_time = bars[-1].time
        state = self.ledger.last_state()
        if state is not None:
            self.sim.load_state(state)
            if self.overlay is not None:
                if "kill_switch_policy" not in state:
                    raise ValueError(
                        f"ledger {self.ledger_path}: the last snapshot has no kill-switch state"
                    )
                self.overlay.load_state(state["kill_switch_policy"])
        for fees, slip, gas in self.ledger.conn.execute(
            "SELECT fees_usd, slippage_usd, gas_usd FROM equity"
        ):
            self.totals["fees_usd"] += fees
            self.totals["slippage_usd"] += slip
            self.totals["gas_usd"] += gas
        if self.stream is not None:
            self._catch_up_metrics()

    def _catch_up_metrics(self) -> None:
        assert self.ledger is not None and self.stream is not None
        logged = self.stream.last_logged_step()
        for row in self.ledger.equity_rows(after_bar=logged):
            weights = {a: w for a, _, _, _, w in self.ledger.positions_at(row[0])}
            metrics = bar_metrics(row, self.config.env.initial_value_usd, weights,
                                  self.ledger.levered_at(row[0]), self.ledger.reference_at(row[0]))  # fmt: skip
            self.stream.log(row[0], metrics)
        self.stream.flush()

    # ------------------------------------------------------------------ one bar
    def _check(self, bar: MarketBar, expected: int) -> None:
        if bar.index != expected:
            raise ValueError(
                f"feed delivered bar {bar.index} but bar {expected} is next (a gap or a repeat)"
            )
        check_bar(bar, self.asset_names, self.sim.protocol_fields if self.sim else ())
        if self._last_time is not None:
            check_spacing(self._last_time, bar.time, self.feed.step_days, bar.index)

    def process(self, bar: MarketBar) -> BarRecord:
        """Run one (already checked) bar through the simulator and the policy; returns its record."""
        sim = self.sim
        assert sim is not None
        sim.push_bar(bar)
        if bar.index < sim.warmup:
            return BarRecord(bar, "warmup")
        moved: StepResult | None = None
        if bar.index == sim.warmup:
            sim.start()
            if self.overlay is not None:
                self.overlay.reset(1)
        else:
            moved = sim.advance()
        ruined = moved is not None and bool(moved.terminated[0])
        price, num = sim.prices_now()
        price0, num0 = price[0], float(num[0])
        value = float(sim.value[0])
        peak = float(sim.peak[0])
        step = int(sim.t[0])
        hf = sim.health_factor_now()
        hf_marked = math.inf if hf is None else float(hf[0])
        levered = sim.protocols is not None
        names, numeraire = self.asset_names, self.manifest.numeraire
        if ruined:
            positions = position_rows(sim, names, numeraire, price0, num0)
            equity = (bar.time, step, value, peak, 1.0 - value / peak, value, 0.0, 0.0, 0.0, 0.0, 0)
            lev_row, perps = (
                levered_rows(sim, moved, price0, num0, hf_marked, 0.0) if levered else (None, [])
            )
            return BarRecord(bar, "trade", positions=positions, equity=equity, state=self._state(),
                             status=HALTED_RUINED, levered=lev_row, perps=perps)  # fmt: skip
        decision = None
        if step % self.policy.decision_every:  # between two decisions: hold (as in backtests)
            done = sim.execute(None, hold=True)
            kill = False
        else:
            outputs = self.policy.predict(sim.observe())
            action = np.asarray(outputs["action"], dtype=np.float64)
            override = None
            if self.overlay is not None:  # the backtest's KillSwitchPolicy, around the ONNX policy
                override = self.overlay.decide(sim.value.copy(), hf)
            # read as the policy's action kind, as run_policy does (an ONNX export: None, the
            # kind of the config it was trained in)
            kind = getattr(self.policy, "action_kind", None)
            done = sim.execute(action, override=override, action_kind=kind)
            kill = bool(done.kill_switch[0]) or (
                self.overlay is not None and bool(self.overlay.active[0])
            )
        intent = sim.last_intent
        assert intent is not None
        if not step % self.policy.decision_every:
            decision = (
                action[0].tolist(),
                # the graph's target weights (target kind), else the env's mapped targets
                np.asarray(
                    outputs["target_weights"][0] if "target_weights" in outputs else intent.target,
                    dtype=np.float64,
                ).tolist(),
                kill,
            )
        orders = order_rows(intent, names)
        fills = fill_rows(sim, intent, names, numeraire, price0, num0)
        positions = position_rows(sim, names, numeraire, price0, num0)
        after = sum(p[3] for p in positions) - debt_usd(sim, num0)
        costs = done.costs
        fees, slip, gas = (
            float(costs.fees_usd[0]),
            float(costs.slippage_usd[0]),
            float(costs.gas_usd[0]),
        )
        equity = (
            bar.time,
            step,
            value,
            peak,
            1.0 - value / peak,
            after,
            fees,
            slip,
            gas,
            float(done.turnover[0]),
            int(kill),
        )
        lev_row, perps = (
            levered_rows(sim, moved, price0, num0, hf_marked, intent.target_leverage)
            if levered
            else (None, [])
        )
        return BarRecord(bar, "trade", decision, orders, fills, positions, equity, self._state(),
                         levered=lev_row, perps=perps)  # fmt: skip

    def _state(self) -> dict[str, Any]:
        """The simulator's JSON state, plus the kill-switch wrapper's when it is on."""
        assert self.sim is not None
        state = self.sim.state()
        if self.overlay is not None:
            state["kill_switch_policy"] = self.overlay.state()
        return state

    # ------------------------------------------------------------------ loop
    def run(self, max_bars: int | None = None) -> PaperSummary:
        """Process the feed (at most ``max_bars`` new bars) and return where the ledger stands."""
        meta = self.preflight() if self._preflight is None else self._preflight[0]
        self._open(meta)
        assert self.ledger is not None
        ledger = self.ledger
        first_new = ledger.last_bar_index() + 1
        written = 0
        status = "running"
        try:
            if ledger.status() == HALTED_RUINED:
                return self.summary(first_new, written, HALTED_RUINED)
            ledger.start_session(_utc_now(), first_new)
            if self.stream is not None:
                self.stream.set_status("RUNNING")
            for bar in self.feed.bars(start=first_new):
                if max_bars is not None and written >= max_bars:
                    status = "paused"
                    break
                self._check(bar, first_new + written)
                record = self.process(bar)
                ledger.commit_bar(record)
                self._after_commit(record)
                written += 1
                if record.status == HALTED_RUINED:
                    status = HALTED_RUINED
                    break
            else:
                status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            self._end_stream("KILLED")
            raise
        except BaseException:
            self._end_stream("FAILED")
            raise
        self._end_stream("FINISHED" if status in ("finished", HALTED_RUINED) else "RUNNING")
        return self.summary(first_new, written, status)

    def _after_commit(self, record: BarRecord) -> None:
        self._last_time = record.bar.time
        self.last_record = record
        if record.equity is not None:
            _, _, _, _, _, _, fees, slip, gas, _, _ = record.equity
            self.totals["fees_usd"] += fees
            self.totals["slippage_usd"] += slip
            self.totals["gas_usd"] += gas
            if self.stream is not None:
                assert self.ledger is not None
                weights = {p[0]: p[4] for p in record.positions}
                levered = (
                    None
                    if record.levered is None
                    else dict(zip(LEVERED_COLUMNS, record.levered, strict=True))
                )
                self.stream.log(
                    record.bar.index,
                    bar_metrics(
                        (record.bar.index, *record.equity),
                        self.config.env.initial_value_usd,
                        weights,
                        levered,
                        self.ledger.reference_at(record.bar.index),
                    ),
                )
        if self.on_bar is not None:
            self.on_bar(record, self)

    def _end_stream(self, status: str) -> None:
        if self.stream is not None:
            try:
                self._log_equity_plot()
                self.stream.set_status(status)
            except Exception:  # MLflow trouble must not mask the trading outcome
                pass

    def _log_equity_plot(self) -> None:
        """The equity (and, with a reference, the backtest's) plot as the run's artifact."""
        if self.stream is None or self.ledger is None:
            return
        from defialloc.training.paper.plots import equity_figure

        figure = equity_figure(self.ledger_path)
        if figure is not None:
            self.stream.log_figure(figure, EQUITY_PLOT)

    def summary(self, first_new: int, written: int, status: str) -> PaperSummary:
        assert self.ledger is not None
        rows = self.ledger.conn.execute(
            "SELECT time, value_usd FROM equity ORDER BY bar_index"
        ).fetchall()
        initial = self.config.env.initial_value_usd
        values = np.array([initial] + [v for _, v in rows]) if rows else np.array([initial])
        peak = np.maximum.accumulate(values)
        return PaperSummary(
            ledger=str(self.ledger_path),
            policy_id=self.manifest.policy_id,
            first_new_bar=first_new,
            last_bar=self.ledger.last_bar_index(),
            bars_written=written,
            decisions=len(rows),
            first_time=rows[0][0] if rows else None,
            last_time=rows[-1][0] if rows else None,
            initial_value_usd=initial,
            value_usd=float(values[-1]),
            total_return=float(values[-1] / initial - 1.0),
            max_drawdown=float(np.max(1.0 - values / peak)),
            fees_usd=self.totals["fees_usd"],
            slippage_usd=self.totals["slippage_usd"],
            gas_usd=self.totals["gas_usd"],
            status=status,
            mlflow_run_id=None if self.stream is None else self.stream.run_id,
            kill_switch=self.kill_switch_meta,
        )

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
