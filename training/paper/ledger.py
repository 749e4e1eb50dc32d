"""The paper-trading ledger: SQLite in WAL mode, one transaction per bar.

Tables (every row keyed by the feed's ``bar_index``; prices and values in USD, units in tokens):

=============  ================================================================================
meta           ledger format, policy id and manifest, feed identity, asset order, status, the
               policy-side kill-switch's parameters (``kill_switch``: null when off)
bars           one row per bar: time, phase (``warmup``/``trade``), numeraire, depth, gas, ETH, regime
bar_prices     close/high/low of every asset at every bar
decisions      the policy's action and its target weights (before the kill-switch), per decision bar
orders         per asset: current and target weight (after the kill-switch), order size in USD and
               side, ``submitted`` = the weight gap exceeded the no-trade band
fills          per asset (and the numeraire): executed units (signed) and their market value
positions      per asset and cash after the bar's trades: units, price, value, weight
equity         per decision bar: marked value before trading, peak, drawdown, value after trading,
               fees/slippage/gas of the bar's trades, turnover, kill-switch flag
bar_protocol   levered / hedged policies: the bar's protocol state (rates, growth multipliers, mark,
               basis, funding), one row per field (and asset)
levered        levered / hedged policies, per decision bar: debt, collateral, health factor, leverage
               and perp notional after the bar's trades; interest, funding, liquidations, insurance
               and bad debt of the move that ended at this bar
perp_positions hedged policies, per decision bar x asset: perp size after the bar's trades, mark,
               signed notional, funding rate quoted for the next step
reference      the backtest of the same export on the same path (replayed period, simulated
               scenario), marked value per decision bar; written with the meta (``reference`` key)
snapshots      the simulator's full state after the bar (JSON; with ``--kill-switch`` also the
               wrapper's peak and cooldown clock): what a restart resumes from
sessions       one row per process start (wall-clock audit trail; not part of the trading record)
=============  ================================================================================

A bar is written whole or not at all (``BEGIN IMMEDIATE .. COMMIT``), so a process killed at any
moment leaves the ledger at the end of some bar; a restart continues with the next one. Bars must
arrive in order: writing bar ``k`` needs bar ``k - 1`` and refuses a duplicate.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defialloc.envs.streaming import MarketBar
from defialloc.envs.streaming_protocol import PER_ASSET_FIELDS, ProtocolState

LEDGER_FORMAT = "defialloc.paper_ledger/2"
#: earlier formats this code reads and resumes (format 1: spot only; its missing tables are added)
READABLE_FORMATS = ("defialloc.paper_ledger/1", LEDGER_FORMAT)
#: tables that make up the trading record (``sessions`` is an audit trail of restarts)
RECORD_TABLES = (
    "meta",
    "bars",
    "bar_prices",
    "bar_protocol",
    "decisions",
    "orders",
    "fills",
    "positions",
    "equity",
    "levered",
    "perp_positions",
    "reference",
    "snapshots",
)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE bars (
    bar_index INTEGER PRIMARY KEY, time TEXT NOT NULL, phase TEXT NOT NULL,
    numeraire_usd REAL NOT NULL, depth_multiplier REAL NOT NULL, gas_price_gwei REAL NOT NULL,
    eth_usd REAL NOT NULL, regime INTEGER NOT NULL);
CREATE TABLE bar_prices (
    bar_index INTEGER NOT NULL, asset TEXT NOT NULL, close REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL,
    PRIMARY KEY (bar_index, asset));
CREATE TABLE decisions (
    bar_index INTEGER PRIMARY KEY, action TEXT NOT NULL, target_weights TEXT NOT NULL, kill_switch INTEGER NOT NULL);
CREATE TABLE orders (
    bar_index INTEGER NOT NULL, asset TEXT NOT NULL, current_weight REAL NOT NULL, target_weight REAL NOT NULL,
    order_usd REAL NOT NULL, side TEXT NOT NULL, submitted INTEGER NOT NULL, PRIMARY KEY (bar_index, asset));
CREATE TABLE fills (
    bar_index INTEGER NOT NULL, asset TEXT NOT NULL, side TEXT NOT NULL, units REAL NOT NULL,
    notional_usd REAL NOT NULL, PRIMARY KEY (bar_index, asset));
CREATE TABLE positions (
    bar_index INTEGER NOT NULL, asset TEXT NOT NULL, units REAL NOT NULL, price_usd REAL NOT NULL,
    value_usd REAL NOT NULL, weight REAL NOT NULL, PRIMARY KEY (bar_index, asset));
CREATE TABLE equity (
    bar_index INTEGER PRIMARY KEY, time TEXT NOT NULL, step INTEGER NOT NULL, value_usd REAL NOT NULL,
    peak_usd REAL NOT NULL, drawdown REAL NOT NULL, value_after_trade_usd REAL NOT NULL, fees_usd REAL NOT NULL,
    slippage_usd REAL NOT NULL, gas_usd REAL NOT NULL, turnover REAL NOT NULL, kill_switch INTEGER NOT NULL);
CREATE TABLE snapshots (bar_index INTEGER PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE sessions (session INTEGER PRIMARY KEY AUTOINCREMENT, started_utc TEXT NOT NULL, first_bar INTEGER NOT NULL);
"""
#: tables of format 2 (levered and hedged policies); ``IF NOT EXISTS`` upgrades a format-1 ledger
LEVERED_SCHEMA = """
CREATE TABLE IF NOT EXISTS bar_protocol (
    bar_index INTEGER NOT NULL, field TEXT NOT NULL, asset TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (bar_index, field, asset));
CREATE TABLE IF NOT EXISTS levered (
    bar_index INTEGER PRIMARY KEY, debt_units REAL NOT NULL, debt_usd REAL NOT NULL,
    collateral_usd REAL NOT NULL, health_factor REAL, health_factor_marked REAL,
    leverage REAL, target_leverage REAL NOT NULL, perp_notional_usd REAL NOT NULL,
    interest_usd REAL NOT NULL, funding_usd REAL NOT NULL, liquidation_usd REAL NOT NULL,
    liquidations INTEGER NOT NULL, insurance_usd REAL NOT NULL, bad_debt_usd REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reference (bar_index INTEGER PRIMARY KEY, value_usd REAL NOT NULL);
CREATE TABLE IF NOT EXISTS perp_positions (
    bar_index INTEGER NOT NULL, asset TEXT NOT NULL, size_units REAL NOT NULL, mark_usd REAL NOT NULL,
    notional_usd REAL NOT NULL, funding_rate REAL NOT NULL, PRIMARY KEY (bar_index, asset));
"""
#: ``levered`` columns after ``bar_index``, in order (``health_factor*``: NULL = no debt, i.e.
#: infinite; ``leverage``: debt / equity after the trades, NULL when the equity is not positive)
LEVERED_COLUMNS = (
    "debt_units", "debt_usd", "collateral_usd", "health_factor", "health_factor_marked",
    "leverage", "target_leverage", "perp_notional_usd", "interest_usd", "funding_usd",
    "liquidation_usd", "liquidations", "insurance_usd", "bad_debt_usd",
)  # fmt: skip


@dataclass
class BarRecord:
    """Everything one bar adds to the ledger (rows as tuples without the leading ``bar_index``)."""

    bar: MarketBar
    phase: str
    decision: tuple[list[float], list[float], bool] | None = None
    orders: list[tuple] = field(default_factory=list)
    fills: list[tuple] = field(default_factory=list)
    positions: list[tuple] = field(default_factory=list)
    equity: tuple | None = None
    state: dict[str, Any] | None = None
    status: str | None = None
    #: levered / hedged policies: the ``levered`` row (:data:`LEVERED_COLUMNS`) and the
    #: ``perp_positions`` rows ``(asset, size_units, mark_usd, notional_usd, funding_rate)``
    levered: tuple | None = None
    perps: list[tuple] = field(default_factory=list)


class LedgerMismatch(ValueError):
    """The ledger belongs to another policy or another feed."""


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a defialloc paper ledger ({exc})") from None
    meta = {k: json.loads(v) for k, v in rows}
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} is not a defialloc paper ledger (format {meta.get('format')!r})")
    return meta


def inspect_ledger(path: str | Path) -> dict[str, Any] | None:
    """The ``meta`` of an existing ledger, read-only (None when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise ValueError(f"--ledger {path} is not a file")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _read_meta(conn, path)
    finally:
        conn.close()


def check_ledger_matches(
    meta: dict[str, Any],
    path: Path,
    policy_id: str,
    feed_identity: dict[str, Any],
    extends: Callable[[dict[str, Any]], bool] | None = None,
) -> bool:
    """Raise :class:`LedgerMismatch` unless ``meta`` was written for this policy and this feed.

    Returns True when the feed is the ledger's feed extended (``extends(meta['feed'])``: the same
    bars and more after them, e.g. a replay to a later ``--end``), False when it is the same feed.
    """
    if meta.get("policy_id") != policy_id:
        raise LedgerMismatch(
            f"ledger {path} belongs to another policy (policy_id {meta.get('policy_id')}, "
            f"{meta.get('algo')}); this policy is {policy_id}: pass a new --ledger"
        )
    stored = meta.get("feed", {})
    if stored == feed_identity:
        return False
    if extends is not None and extends(stored):
        return True
    if stored != feed_identity:
        keys = sorted(
            k for k in set(stored) | set(feed_identity) if stored.get(k) != feed_identity.get(k)
        )
        diffs = ", ".join(
            f"{k}: ledger {stored.get(k)!r} vs feed {feed_identity.get(k)!r}" for k in keys
        )
        raise LedgerMismatch(
            f"ledger {path} was written from another feed ({diffs}); pass a new --ledger (a "
            "feed extends a ledger only when its first bars are the ledger's, e.g. a later --end)"
        )


def _describe_kill_switch(params: dict[str, Any] | None) -> str:
    if not params:
        return "off"
    return "on (" + ", ".join(f"{k}={v}" for k, v in params.items() if k != "enabled") + ")"


def check_kill_switch_matches(
    meta: dict[str, Any], path: Path, kill_switch: dict[str, Any] | None
) -> None:
    """Raise :class:`LedgerMismatch` unless ``meta`` was written with this kill-switch setting.

    ``kill_switch``: the policy-side kill-switch's parameters (``KillSwitchConfig.model_dump``), or
    None when off; ledgers written before the option existed read as off.
    """
    stored = meta.get("kill_switch")
    if stored != kill_switch:
        raise LedgerMismatch(
            f"ledger {path} was written with the kill-switch {_describe_kill_switch(stored)}; this "
            f"run asks for it {_describe_kill_switch(kill_switch)}: resume with the same "
            "--kill-switch options, or pass a new --ledger"
        )


class Ledger:
    """An open ledger (create it with :meth:`create`, reopen it with :meth:`open`)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict[str, Any]) -> None:
        self.path = path
        self.conn = conn
        self.meta = meta
        self.asset_names: tuple[str, ...] = tuple(meta["asset_names"])
        self.numeraire: str = meta["numeraire"]

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed bar survives a power cut too, not only a killed process
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @classmethod
    def create(
        cls, path: str | Path, meta: dict[str, Any], reference: list[tuple[int, float]] = ()
    ) -> Ledger:
        """A new ledger with ``meta`` (must hold ``policy_id``, ``feed``, ``asset_names``, ``numeraire``)
        and the reference backtest's ``(bar_index, value_usd)`` rows, in one transaction."""
        path = Path(path)
        if path.exists():
            raise ValueError(f"--ledger {path} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        tmp.unlink(missing_ok=True)
        meta = {"format": LEDGER_FORMAT, **meta}
        conn = cls._connect(tmp)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in (SCHEMA + LEVERED_SCHEMA).strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
            )
            conn.executemany("INSERT INTO reference VALUES (?, ?)", list(reference))
            conn.execute("COMMIT")
            # checkpoint into the main file so the rename below moves a complete database
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        # a crash before this rename leaves only the ".creating" file: the ledger never half exists
        tmp.replace(path)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> Ledger:
        path = Path(path)
        conn = cls._connect(path)
        try:
            meta = _read_meta(conn, path)
            if meta["format"] != LEDGER_FORMAT:  # an older format: add the tables it lacks
                conn.execute("BEGIN IMMEDIATE")
                for statement in LEVERED_SCHEMA.strip().split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('format', ?)", (json.dumps(LEDGER_FORMAT),)
                )
                conn.execute("COMMIT")
                meta["format"] = LEDGER_FORMAT
        except ValueError:
            conn.close()
            raise
        return cls(path, conn, meta)

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ reading
    def last_bar_index(self) -> int:
        """Index of the last committed bar (-1 for an empty ledger)."""
        (value,) = self.conn.execute("SELECT MAX(bar_index) FROM bars").fetchone()
        return -1 if value is None else int(value)

    def load_bars(self) -> list[MarketBar]:
        """Every committed bar, in order (prices in the ledger's asset order)."""
        rows = self.conn.execute(
            "SELECT bar_index, time, numeraire_usd, depth_multiplier, gas_price_gwei, eth_usd, regime "
            "FROM bars ORDER BY bar_index"
        ).fetchall()
        order = {a: i for i, a in enumerate(self.asset_names)}
        n = len(self.asset_names)
        prices = np.zeros((len(rows), 3, n))
        for idx, asset, close, high, low in self.conn.execute(
            "SELECT bar_index, asset, close, high, low FROM bar_prices"
        ):
            prices[idx, :, order[asset]] = (close, high, low)
        protocol = self._load_protocol(len(rows))
        return [
            MarketBar(
                index=int(r[0]),
                time=r[1],
                close=prices[i, 0].copy(),
                high=prices[i, 1].copy(),
                low=prices[i, 2].copy(),
                numeraire_usd=r[2],
                depth_multiplier=r[3],
                gas_price_gwei=r[4],
                eth_usd=r[5],
                regime=int(r[6]),
                protocol=protocol[i],
            )
            for i, r in enumerate(rows)
        ]

    def _load_protocol(self, n_bars: int) -> list[ProtocolState | None]:
        """Every bar's protocol state from ``bar_protocol`` (None for bars without one)."""
        order = {a: i for i, a in enumerate(self.asset_names)}
        fields: list[dict[str, Any]] = [{} for _ in range(n_bars)]
        n = len(self.asset_names)
        for idx, name, asset, value in self.conn.execute(
            "SELECT bar_index, field, asset, value FROM bar_protocol"
        ):
            if name in PER_ASSET_FIELDS:
                fields[idx].setdefault(name, np.zeros(n))[order[asset]] = value
            else:
                fields[idx][name] = value
        return [ProtocolState(**f) if f else None for f in fields]

    def last_state(self) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT state FROM snapshots ORDER BY bar_index DESC LIMIT 1"
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def status(self) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'status'").fetchone()
        return None if row is None else json.loads(row[0])

    def equity_rows(self, after_bar: int = -1) -> list[tuple]:
        return self.conn.execute(
            "SELECT * FROM equity WHERE bar_index > ? ORDER BY bar_index", (after_bar,)
        ).fetchall()

    def levered_at(self, bar_index: int) -> dict[str, Any] | None:
        """The ``levered`` row of a bar as ``{column: value}`` (None when there is none)."""
        row = self.conn.execute(
            "SELECT * FROM levered WHERE bar_index = ?", (bar_index,)
        ).fetchone()
        return None if row is None else dict(zip(LEVERED_COLUMNS, row[1:], strict=True))

    def reference_at(self, bar_index: int) -> float | None:
        """The reference backtest's value at a bar (None when there is none)."""
        row = self.conn.execute(
            "SELECT value_usd FROM reference WHERE bar_index = ?", (bar_index,)
        ).fetchone()
        return None if row is None else float(row[0])

    def positions_at(self, bar_index: int) -> list[tuple]:
        return self.conn.execute(
            "SELECT asset, units, price_usd, value_usd, weight FROM positions WHERE bar_index = ?",
            (bar_index,),
        ).fetchall()

    def tables(self, names: tuple[str, ...] = RECORD_TABLES) -> dict[str, list[tuple]]:
        """Every row of the trading record, sorted (for comparing two ledgers)."""
        return {
            name: sorted(self.conn.execute(f"SELECT * FROM {name}").fetchall()) for name in names
        }

    # ------------------------------------------------------------------ writing
    def start_session(self, started_utc: str, first_bar: int) -> None:
        self.conn.execute(
            "INSERT INTO sessions (started_utc, first_bar) VALUES (?, ?)", (started_utc, first_bar)
        )

    def extend_feed(
        self,
        feed: dict[str, Any],
        reference: tuple[dict[str, Any], list[tuple[int, float]]] | None = None,
    ) -> None:
        """Make the ledger follow a longer feed (:meth:`Feed.extends`), in one transaction: the
        earlier feed identity goes to ``feed_history``; ``reference`` (the new feed's reference
        backtest: description and rows) replaces the stored one when given."""
        updates: dict[str, Any] = {
            "feed_history": [*self.meta.get("feed_history", []), self.meta["feed"]],
            "feed": feed,
        }
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            if reference is not None:
                updates["reference"] = reference[0]
                cur.execute("DELETE FROM reference")
                cur.executemany("INSERT INTO reference VALUES (?, ?)", reference[1])
            for key, value in updates.items():
                cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self.meta.update(updates)

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self.meta[key] = value

    def commit_bar(self, rec: BarRecord) -> None:
        """Write one bar in one transaction (refuses a bar that is not the next one)."""
        b = rec.bar
        i = int(b.index)
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            (last,) = cur.execute("SELECT MAX(bar_index) FROM bars").fetchone()
            expected = 0 if last is None else int(last) + 1
            if i != expected:
                raise ValueError(
                    f"ledger {self.path} expects bar {expected} next, got bar {i}: "
                    "is another paper process writing to this ledger?"
                )
            cur.execute(
                "INSERT INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (i, b.time, rec.phase, float(b.numeraire_usd), float(b.depth_multiplier), float(b.gas_price_gwei),
                 float(b.eth_usd), int(b.regime)),
            )  # fmt: skip
            cur.executemany(
                "INSERT INTO bar_prices VALUES (?, ?, ?, ?, ?)",
                [
                    (i, a, float(c), float(h), float(lo))
                    for a, c, h, lo in zip(self.asset_names, b.close, b.high, b.low, strict=True)
                ],
            )
            if rec.decision is not None:
                action, weights, kill = rec.decision
                cur.execute(
                    "INSERT INTO decisions VALUES (?, ?, ?, ?)",
                    (i, json.dumps(action), json.dumps(weights), int(kill)),
                )
            cur.executemany(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", [(i, *row) for row in rec.orders]
            )
            cur.executemany(
                "INSERT INTO fills VALUES (?, ?, ?, ?, ?)", [(i, *row) for row in rec.fills]
            )
            cur.executemany(
                "INSERT INTO positions VALUES (?, ?, ?, ?, ?, ?)",
                [(i, *row) for row in rec.positions],
            )
            if b.protocol is not None:
                cur.executemany(
                    "INSERT INTO bar_protocol VALUES (?, ?, ?, ?)",
                    _protocol_rows(i, b.protocol, self.asset_names),
                )
            if rec.equity is not None:
                cur.execute(
                    "INSERT INTO equity VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (i, *rec.equity),
                )
            if rec.levered is not None:
                marks = ", ".join("?" * (len(LEVERED_COLUMNS) + 1))
                cur.execute(f"INSERT INTO levered VALUES ({marks})", (i, *rec.levered))
            cur.executemany(
                "INSERT INTO perp_positions VALUES (?, ?, ?, ?, ?, ?)",
                [(i, *row) for row in rec.perps],
            )
            if rec.state is not None:
                cur.execute("INSERT INTO snapshots VALUES (?, ?)", (i, json.dumps(rec.state)))
            if rec.status is not None:
                cur.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('status', ?)", (json.dumps(rec.status),)
                )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        if rec.status is not None:
            self.meta["status"] = rec.status


def _protocol_rows(
    bar_index: int, state: ProtocolState, asset_names: tuple[str, ...]
) -> list[tuple[int, str, str, float]]:
    """``bar_protocol`` rows of one bar: ``(bar_index, field, asset, value)``, asset ``""`` for a
    scalar field. SQLite REAL keeps the float64 exactly, so a resume reloads the same bits."""
    rows = []
    for name, value in state.as_dict().items():
        if name in PER_ASSET_FIELDS:
            rows.extend(
                (bar_index, name, a, float(v)) for a, v in zip(asset_names, value, strict=True)
            )  # type: ignore[arg-type]
        else:
            rows.append((bar_index, name, "", float(value)))  # type: ignore[arg-type]
    return rows
