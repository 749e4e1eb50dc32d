"""A rich terminal view of a paper-trading ledger: equity, positions and the last actions.

:func:`render_ledger` builds the view from a ledger file (it only reads, so it can watch a running
paper process from another terminal: ``defialloc paper-view --ledger paper.db``); :class:`LiveView`
refreshes it in place while ``defialloc paper`` runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from defialloc.training.paper.ledger import LEVERED_COLUMNS

#: decisions shown in the "last actions" table
LAST_ACTIONS = 5


def _read(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        equity = conn.execute(
            "SELECT bar_index, time, value_usd, peak_usd, drawdown, fees_usd, slippage_usd, gas_usd, kill_switch "
            "FROM equity ORDER BY bar_index"
        ).fetchall()
        last_bar = conn.execute("SELECT MAX(bar_index), COUNT(*) FROM bars").fetchone()
        positions = []
        if equity:
            positions = conn.execute(
                "SELECT asset, units, price_usd, value_usd, weight FROM positions WHERE bar_index = ?",
                (equity[-1][0],),
            ).fetchall()
        decisions = conn.execute(
            "SELECT d.bar_index, b.time, d.target_weights, d.kill_switch FROM decisions d "
            "JOIN bars b USING (bar_index) ORDER BY d.bar_index DESC LIMIT ?",
            (LAST_ACTIONS,),
        ).fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        levered = perps = reference = None
        if equity and "levered" in tables:
            last = equity[-1][0]
            row = conn.execute("SELECT * FROM levered WHERE bar_index = ?", (last,)).fetchone()
            if row is not None:
                levered = dict(zip(LEVERED_COLUMNS, row[1:], strict=True))
                levered["totals"] = conn.execute(
                    "SELECT SUM(interest_usd), SUM(funding_usd), SUM(liquidation_usd), SUM(liquidations), "
                    "MIN(health_factor_marked) FROM levered"
                ).fetchone()
            perps = conn.execute(
                "SELECT asset, size_units, mark_usd, notional_usd, funding_rate FROM perp_positions "
                "WHERE bar_index = ?",
                (last,),
            ).fetchall()
        if equity and "reference" in tables:
            reference = conn.execute(
                "SELECT value_usd FROM reference WHERE bar_index = ?", (equity[-1][0],)
            ).fetchone()
        orders = {}
        for bar_index, *_ in decisions:
            orders[bar_index] = {
                a: (t, s) for a, t, s in conn.execute(
                    "SELECT asset, target_weight, submitted FROM orders WHERE bar_index = ?", (bar_index,)
                )
            }  # fmt: skip
    finally:
        conn.close()
    return {"meta": meta, "equity": equity, "last_bar": last_bar, "positions": positions, "decisions": decisions,
            "orders": orders, "levered": levered, "perps": perps or [],
            "reference": None if reference is None else reference[0]}  # fmt: skip


def _levered_lines(head: Table, levered: dict[str, Any], value: float) -> None:
    """Rows of the head panel for a levered or hedged policy (state after the last bar's trades)."""
    hf = levered["health_factor"]
    interest, funding, liquidation, count, lowest = levered["totals"]
    head.add_row(
        "health factor",
        ("none (no debt)" if hf is None else f"{hf:.3f}")
        + ("" if lowest is None else f"  (lowest at a mark {lowest:.3f})"),
    )
    leverage = levered["leverage"]
    head.add_row(
        "debt",
        f"${levered['debt_usd']:,.2f} on ${levered['collateral_usd']:,.2f} collateral"
        + ("" if leverage is None else f"  (debt / equity {leverage:.2f}, target {levered['target_leverage']:.2f})"),
    )  # fmt: skip
    exposure = levered["perp_notional_usd"] / value if value > 0 else float("nan")
    head.add_row(
        "perp exposure",
        f"${levered['perp_notional_usd']:,.2f} gross notional ({exposure:.2f} x equity)",
    )
    head.add_row(
        "carry",
        f"interest ${interest or 0:,.2f}  funding ${funding or 0:,.2f} (paid - earned)  "
        f"liquidations {int(count or 0)} (${liquidation or 0:,.2f})",
    )  # fmt: skip


def render_ledger(path: str | Path) -> Group:
    """The view of a ledger as a rich renderable."""
    data = _read(Path(path))
    meta, equity = data["meta"], data["equity"]
    assets = [*meta.get("asset_names", []), meta.get("numeraire", "cash")]
    feed = meta.get("feed", {})
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("policy", f"{meta.get('algo', '?')} {meta.get('policy_id', '?')}")
    head.add_row(
        "feed", f"{feed.get('kind', '?')} {feed.get('first_time', '')}..{feed.get('last_time', '')}"
    )
    last_bar, n_bars = data["last_bar"]
    head.add_row(
        "bars",
        f"{n_bars} written (last bar {last_bar}; decisions from bar {meta.get('warmup', '?')})"
        + (f"; {meta['status']}" if meta.get("status") else ""),
    )
    if equity:
        first_value = equity[0][2]
        _, time, value, peak, drawdown, *_ = equity[-1]
        fees = sum(r[5] for r in equity)
        slippage = sum(r[6] for r in equity)
        gas = sum(r[7] for r in equity)
        max_dd = max(r[4] for r in equity)
        head.add_row(
            "equity",
            f"${value:,.2f} at {time}  ({value / first_value - 1:+.2%} since {equity[0][1]})",
        )
        head.add_row("drawdown", f"{drawdown:.2%} now, {max_dd:.2%} max (peak ${peak:,.2f})")
        head.add_row("costs", f"fees ${fees:,.2f}  slippage ${slippage:,.2f}  gas ${gas:,.2f}")
        head.add_row("kill-switch", "ACTIVE" if equity[-1][8] else "off")
        if data["reference"] is not None:
            ref = data["reference"]
            head.add_row(
                "vs backtest",
                f"${ref:,.2f} at this bar in the backtest of the same export (paper - backtest "
                f"{value - ref:+,.2f})",
            )
        if data["levered"] is not None:
            _levered_lines(head, data["levered"], value)
    pos = Table(title="positions after the last bar", expand=False)
    for col, justify in (
        ("asset", "left"),
        ("units", "right"),
        ("price $", "right"),
        ("value $", "right"),
        ("weight", "right"),
    ):
        pos.add_column(col, justify=justify)  # type: ignore[arg-type]
    for asset, units, price, value, weight in data["positions"]:
        pos.add_row(asset, f"{units:,.6g}", f"{price:,.4f}", f"{value:,.2f}", f"{weight:.1%}")
    acts = Table(
        title=f"last {LAST_ACTIONS} actions (target weights; * = order sent)", expand=False
    )
    acts.add_column("bar")
    acts.add_column("time")
    for asset in assets:
        acts.add_column(asset, justify="right")
    acts.add_column("kill", justify="center")
    for bar_index, time, weights_json, kill in data["decisions"]:
        orders = data["orders"].get(bar_index, {})
        cells = []
        for asset, w in zip(assets, json.loads(weights_json), strict=False):
            sent = orders.get(asset, (None, 0))[1]
            cells.append(f"{w:.1%}{'*' if sent else ''}")
        acts.add_row(str(bar_index), time, *cells, "!" if kill else "")
    parts: list[Any] = [Panel(head, title=f"paper trading: {Path(path).name}"), pos]
    if data["perps"]:
        perp = Table(title="perp positions after the last bar", expand=False)
        for col in ("asset", "size", "mark $", "notional $", "funding / step"):
            perp.add_column(col, justify="left" if col == "asset" else "right")
        for asset, size, mark, notional, rate in data["perps"]:
            perp.add_row(asset, f"{size:,.6g}", f"{mark:,.4f}", f"{notional:,.2f}", f"{rate:.4%}")
        parts.append(perp)
    parts.append(acts)
    return Group(*parts)


class LiveView:
    """Refresh :func:`render_ledger` in place, at most every ``min_seconds`` (a context manager)."""

    def __init__(
        self, path: str | Path, console: Console | None = None, min_seconds: float = 0.25
    ) -> None:
        self.path = Path(path)
        self.console = console or Console()
        self.min_seconds = min_seconds
        self._last = 0.0
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        self._live = Live(console=self.console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            if self.path.exists():
                self._live.update(render_ledger(self.path))
            self._live.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, *_: object) -> None:
        """Called after every committed bar; re-reads the ledger when the last refresh is old enough."""
        now = time.monotonic()
        if self._live is not None and now - self._last >= self.min_seconds:
            self._last = now
            self._live.update(render_ledger(self.path))
