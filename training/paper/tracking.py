"""Paper-trading metrics streamed to MLflow as a run of their own (``kind=paper``).

Metrics are buffered and sent at most once per ``flush_seconds`` (and at the end), step = the feed's
bar index. The ledger, not MLflow, is the record: after a crash :meth:`MetricsStream.catch_up` re-sends
the bars the ledger holds beyond the last step MLflow has, so no bar is missing from the run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

#: the metric whose history tells which bars MLflow already has
PROGRESS_METRIC = "paper/value_usd"


#: ``levered`` ledger columns streamed as ``paper/<column>`` (NULL, e.g. no debt, is not sent)
LEVERED_METRICS = (
    "health_factor", "debt_usd", "collateral_usd", "leverage", "perp_notional_usd",
    "interest_usd", "funding_usd", "liquidation_usd", "liquidations", "insurance_usd", "bad_debt_usd",
)  # fmt: skip


def bar_metrics(
    equity_row: tuple,
    initial_value: float,
    weights: Mapping[str, float],
    levered: Mapping[str, Any] | None = None,
    reference_usd: float | None = None,
) -> dict[str, float]:
    """Metrics of one ``equity`` ledger row (see ``training/paper/ledger.py``) and its weights; with
    a levered policy its ``levered`` row (``paper/health_factor``, ``paper/debt_usd``, ...), and
    ``backtest/value_usd``, the reference backtest's value at the same bar, when there is one."""
    _, _, _, value, peak, drawdown, after, fees, slippage, gas, turnover, kill = equity_row
    out = {
        "paper/value_usd": value,
        "paper/return": value / initial_value - 1.0,
        "paper/drawdown": drawdown,
        "paper/peak_usd": peak,
        "paper/value_after_trade_usd": after,
        "paper/fees_usd": fees,
        "paper/slippage_usd": slippage,
        "paper/gas_usd": gas,
        "paper/turnover": turnover,
        "paper/kill_switch": float(kill),
    }
    out.update({f"paper/weight_{asset}": w for asset, w in weights.items()})
    for key in LEVERED_METRICS if levered else ():
        if levered[key] is not None:  # type: ignore[index]
            out[f"paper/{key}"] = float(levered[key])  # type: ignore[index]
    if reference_usd is not None:
        out["backtest/value_usd"] = reference_usd
    return out


class MetricsStream:
    """Buffered metric writer to one MLflow run (through the client: no active run needed)."""

    def __init__(self, run_id: str, flush_seconds: float = 1.0) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient()
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self._buffer: list[Any] = []
        self._last_flush = time.monotonic()

    @classmethod
    def start(
        cls, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
    ) -> MetricsStream:
        """Create a new run in ``experiment`` (created if missing)."""
        from mlflow import MlflowClient

        from defialloc.agents.mlflow_store import setup_mlflow

        experiment_id = setup_mlflow(experiment)
        client = MlflowClient()
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        for key, value in params.items():
            client.log_param(run.info.run_id, key, str(value)[:6000])
        return cls(run.info.run_id)

    def last_logged_step(self) -> int:
        history = self.client.get_metric_history(self.run_id, PROGRESS_METRIC)
        return max((m.step for m in history), default=-1)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self._buffer.extend(
            Metric(key=k, value=float(v), timestamp=now_ms, step=int(step))
            for k, v in metrics.items()
            if np.isfinite(v)
        )
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_figure(self, figure: Any, name: str) -> None:
        """Save a matplotlib figure as an artifact of the run (replacing one of the same name)."""
        self.client.log_figure(self.run_id, figure, name)

    def set_status(self, status: str) -> None:
        """Flush and set the run's status (``FINISHED``, ``FAILED``, ``KILLED``) or tag it ``RUNNING``."""
        self.flush()
        if status == "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.client.set_terminated(self.run_id, status=status)
