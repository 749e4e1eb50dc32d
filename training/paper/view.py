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
            "orders": orders}  # fmt: skip


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
    return Group(Panel(head, title=f"paper trading: {Path(path).name}"), pos, acts)


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
