"""Paper trading levered and hedged policies (lending, perps, cascades): the bars carry the protocol
state, paper == backtest step by step on a replayed period, the ledger's levered records and their
accounting, resume, bad protocol input, the view, MLflow and the equity-vs-backtest plot.

(Crash safety with a levered policy: tests/test_paper_crash.py.)"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from defialloc.agents.onnx_policy import OnnxPolicy
from defialloc.envs.config import load_config
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.streaming import MarketBar, StreamingSimulator
from defialloc.envs.streaming_protocol import ProtocolState, generate_protocol_series
from defialloc.training.paper.feeds import PathFeed, ReplayFeed, SimulatedFeed
from defialloc.training.paper.ledger import LEVERED_COLUMNS, Ledger
from defialloc.training.paper.runner import PaperTrader
from defialloc.training.paper.view import render_ledger
from tests.test_paper import DATA_DIR, ledger_tables, needs_data

# a development-period replay (not held out) with the May-June 2022 crash: liquidations happen
START, END = "2022-03-01", "2022-07-31"
WRAPPER = KillSwitchConfig(enabled=True, max_drawdown=0.25, min_health_factor=1.3, cooldown_steps=3)


@pytest.fixture(scope="module")
def levered(levered_policy_dir) -> OnnxPolicy:
    return OnnxPolicy(levered_policy_dir)


def _run(policy, feed, ledger: Path, max_bars=None, **kw):
    trader = PaperTrader(policy, feed, ledger, **kw)
    try:
        return trader.run(max_bars)
    finally:
        trader.close()


def _no_ledger(path: Path) -> None:
    assert not path.exists() and not Path(str(path) + "-wal").exists()


# ---------------------------------------------------------------------------- streaming simulator
def crashed_feed(cfg, seed: int, n_bars: int, crash_bar: int, factor: float = 0.55) -> PathFeed:
    """Scenario ``seed`` with every risky price times ``factor`` from ``crash_bar`` on (a one-day
    crash that liquidates levered books), its protocol series drawn from the seed as a reset would."""
    warmup = cfg.env.warmup
    paths = sample_paths(cfg.market, np.array([seed]), n_bars, warmup)
    moved = {name: getattr(paths, name).copy() for name in ("close", "high", "low")}
    for arr in moved.values():
        arr[0, crash_bar:] *= factor
    crashed = MarketPaths(**{**paths.__dict__, **moved})
    protocol = generate_protocol_series(cfg, crashed, np.array([seed]))
    return PathFeed(crashed, kind="test", numeraire="USDC", source={"crash": crash_bar},
                    protocol=protocol, protocol_seed=seed)  # fmt: skip


@pytest.mark.parametrize(
    "protocols",
    [{}, {"env.lending.enabled": False}, {"env.perps.enabled": False}],
    ids=["lending-perps-cascades", "perps-only", "lending-cascades"],
)
def test_streaming_levered_simulator_equals_the_batch_env_bit_for_bit(levered, protocols):
    """Bars carrying the generated protocol rows drive the streaming simulator exactly like the
    env on the same path and seed (rates, marks, funding, cascades, liquidations)."""
    cfg = load_config(levered.manifest.simulation_config, protocols)
    warmup, seed, steps = cfg.env.warmup, 17, 80
    lending, perps = cfg.env.lending.enabled, cfg.env.perps.enabled
    rates = {
        "borrow_rate",
        "debt_growth",
        "cash_supply_rate",
        "cash_growth",
        "supply_rate",
        "supply_growth",
    }
    fields = (rates if lending else set()) | ({"basis", "mark", "funding"} if perps else set())
    assert set(SimulatedFeed.from_config(cfg, seed, warmup + 2).protocol_fields) == fields
    feed = crashed_feed(cfg, seed, warmup + steps + 1, crash_bar=warmup + 40)
    batch = PortfolioSimulator(load_config(cfg, {"env.horizon": steps}), 1)
    batch.reset_envs(np.zeros(1, dtype=np.int64), np.array([seed]), paths=feed.paths)
    stream = StreamingSimulator(cfg, capacity=8)  # small: the protocol arrays must grow too
    actions = np.random.default_rng(1).uniform(-1, 1, (steps, 1, batch.action_dim))
    if lending:  # the leverage output (after the N + 1 weights) at its top: debt at the crash
        actions[:, :, len(cfg.market.assets) + 1] = 1.0
    liquidations, want = 0, None
    for bar in feed.bars():
        stream.push_bar(bar)
        if bar.index < warmup:
            continue
        if bar.index == warmup:
            stream.start()
        else:
            got = stream.advance()
            assert want is not None
            np.testing.assert_array_equal(got.value_usd, want.value_usd)
            for name in ("interest_usd", "funding_usd", "liquidations", "health_factor", "debt_usd",
                         "bad_debt_usd", "insurance_usd"):  # fmt: skip
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
            liquidations += int(got.liquidations[0])
        k = bar.index - warmup
        if k == steps:
            break
        np.testing.assert_array_equal(stream.observe(), batch.observe())
        stream.execute(actions[k])
        want = batch.step(actions[k])
    if lending:
        assert liquidations >= 1, "the crash should liquidate the levered book"


def test_levered_state_round_trips_through_json(levered):
    """Debt, perps and the borrower population survive a JSON state + reloaded bars exactly."""
    cfg = load_config(levered.manifest.simulation_config)
    warmup = cfg.env.warmup
    feed = SimulatedFeed.from_config(cfg, 5, warmup + 40)
    actions = np.random.default_rng(0).uniform(-1, 1, (40, 1, levered.manifest.action_dim))
    original = StreamingSimulator(cfg, capacity=64)
    original.load_history([feed.bar(i) for i in range(warmup + 1)])
    for k in range(15):
        if k:
            original.push_bar(feed.bar(warmup + k))
            original.advance()
        original.execute(actions[k])
    state = json.loads(json.dumps(original.state()))
    assert (
        state["protocols"]["population_units"] and state["pending"]["target_leverage"] is not None
    )
    rebuilt = StreamingSimulator(cfg, capacity=64)
    rebuilt.load_history([feed.bar(i) for i in range(warmup + 15)])
    rebuilt.load_state(state)
    for k in range(15, 35):
        for sim in (original, rebuilt):
            sim.push_bar(feed.bar(warmup + k))
            sim.advance()
            sim.execute(actions[k])
        np.testing.assert_array_equal(rebuilt.observe(), original.observe())
    assert rebuilt.state() == original.state()


# ---------------------------------------------------------------------------- paper == backtest
@needs_data
@pytest.mark.parametrize("kill_switch", [None, WRAPPER], ids=["plain", "kill-switch-wrapper"])
def test_levered_paper_on_a_replayed_period_equals_its_backtest(levered, tmp_path, kill_switch):
    """Step by step: values, every cost kind, health factor, debt, collateral, perp notional,
    liquidations and the kill-switch series of the paper ledger = run_period_backtest's record."""
    from defialloc.evaluation.backtest import run_period_backtest

    cfg = load_config(levered.manifest.simulation_config)
    feed = ReplayFeed.from_config(cfg, START, END, data_dir=str(DATA_DIR))
    ledger = tmp_path / "levered.db"
    summary = _run(levered, feed, ledger, kill_switch=kill_switch)
    result = run_period_backtest(
        load_config(cfg, {"market.data_dir": str(DATA_DIR)}), [levered], START, END,
        progress=False, kill_switch=kill_switch,
    )  # fmt: skip
    record = next(iter(result.records.values()))
    conn = sqlite3.connect(ledger)
    equity = np.array(conn.execute(
        "SELECT value_usd, fees_usd, slippage_usd, gas_usd, turnover, kill_switch FROM equity ORDER BY bar_index"
    ).fetchall())  # fmt: skip
    lev = conn.execute(
        f"SELECT {', '.join(LEVERED_COLUMNS)} FROM levered ORDER BY bar_index"
    ).fetchall()
    lev = {c: np.array([np.inf if r[i] is None else r[i] for r in lev], dtype=float)
           for i, c in enumerate(LEVERED_COLUMNS)}  # fmt: skip
    n = record.value_usd.shape[1]
    assert summary.decisions == len(equity) == n and summary.status == "finished"
    np.testing.assert_array_equal(equity[:, 0], record.value_usd[0])
    for col, kind in ((1, "fees"), (2, "slippage"), (3, "gas")):
        np.testing.assert_array_equal(equity[:-1, col], record.costs_usd[kind][0], err_msg=kind)
    np.testing.assert_array_equal(equity[:-1, 4], record.turnover[0])
    np.testing.assert_array_equal(equity[:-1, 5], record.extras["kill_switch"][0])
    # the flows of the move into bar j+1 and the states after it = the backtest's step j
    for ours, theirs in (("interest_usd", "interest"), ("funding_usd", "funding"),
                         ("liquidation_usd", "liquidation")):  # fmt: skip
        np.testing.assert_array_equal(lev[ours][1:], record.costs_usd[theirs][0], err_msg=ours)
    for name in ("liquidations", "insurance_usd", "bad_debt_usd"):
        np.testing.assert_array_equal(lev[name][1:], record.extras[name][0], err_msg=name)
    np.testing.assert_array_equal(
        lev["health_factor_marked"][1:], record.extras["health_factor"][0]
    )
    np.testing.assert_array_equal(lev["leverage"][:-1], record.debt_to_equity[0])
    # the ledger's reference table is this backtest, computed by the runner at creation
    reference = np.array(
        conn.execute("SELECT value_usd FROM reference ORDER BY bar_index").fetchall()
    )[:, 0]
    np.testing.assert_array_equal(reference, record.value_usd[0])
    # the policy really levers and hedges (liquidations: the crashed path of the tests above)
    assert lev["debt_usd"].max() > 1_000.0 and lev["perp_notional_usd"].max() > 1_000.0
    assert record.costs_usd["interest"].sum() != 0.0 and record.costs_usd["funding"].sum() != 0.0
    if kill_switch is not None:
        assert equity[:, 5].sum() > 0, "the wrapper should fire in 2022"


@needs_data
def test_levered_delta_export_deciding_every_3_days_equals_its_backtest(tmp_path):
    """A levered and hedged export of the ``delta`` kind (its leverage and hedge targets move from
    the current ones) deciding every 3 days: paper = backtest bar for bar, holding in between."""
    from defialloc.evaluation.backtest import run_period_backtest
    from tests.conftest import LEVERED
    from tests.test_paper import make_policy_dir

    over = {**LEVERED, "env.action.kind": "delta", "env.decision_every": 3}
    policy = OnnxPolicy(make_policy_dir(tmp_path / "policy", seed=4, overrides=over))
    cfg = load_config(policy.manifest.simulation_config)
    start, end = "2022-04-01", "2022-06-30"
    feed = ReplayFeed.from_config(cfg, start, end, data_dir=str(DATA_DIR))
    _run(policy, feed, tmp_path / "delta.db")
    record = run_period_backtest(
        load_config(cfg, {"market.data_dir": str(DATA_DIR)}), [policy], start, end, progress=False
    ).records[policy.name]
    conn = sqlite3.connect(tmp_path / "delta.db")
    values, turnover = np.array(
        conn.execute("SELECT value_usd, turnover FROM equity ORDER BY bar_index").fetchall()
    ).T
    debt, perp = np.array(conn.execute(
        "SELECT debt_usd, perp_notional_usd FROM levered ORDER BY bar_index").fetchall()).T  # fmt: skip
    np.testing.assert_array_equal(values, record.value_usd[0])
    np.testing.assert_array_equal(turnover[:-1], record.turnover[0])
    for kind in ("interest", "funding"):
        assert record.costs_usd[kind][0].sum() != 0.0, kind
    assert debt.max() > 1_000.0 and perp.max() > 1_000.0
    traded = turnover[:-1] > 0.0
    assert traded.any() and not traded[np.arange(traded.size) % 3 != 0].any()


@needs_data
def test_levered_ledger_accounting_per_bar(levered, tmp_path):
    """From the ledger alone, every bar: value after trading = value - trade costs, and the next
    bar's value = the positions, debt and perps after this bar's trades moved to the next bar's
    prices, minus interest, funding and liquidation costs plus insurance and bad debt (1e-9)."""
    cfg = load_config(levered.manifest.simulation_config)
    feed = ReplayFeed.from_config(cfg, START, END, data_dir=str(DATA_DIR))
    ledger = tmp_path / "acct.db"
    _run(levered, feed, ledger)
    conn = sqlite3.connect(ledger)
    equity = conn.execute(
        "SELECT bar_index, value_usd, value_after_trade_usd, fees_usd, slippage_usd, gas_usd FROM equity ORDER BY bar_index"
    ).fetchall()
    flows = {r[0]: r[1:] for r in conn.execute(
        "SELECT bar_index, debt_units, interest_usd, funding_usd, liquidation_usd, insurance_usd, bad_debt_usd FROM levered"
    )}  # fmt: skip
    num = dict(conn.execute("SELECT bar_index, numeraire_usd FROM bars"))
    close = {
        (b, a): c for b, a, c in conn.execute("SELECT bar_index, asset, close FROM bar_prices")
    }
    mark = {(b, a): v for b, a, v in conn.execute(
        "SELECT bar_index, asset, value FROM bar_protocol WHERE field = 'mark'")}  # fmt: skip
    positions = {
        (b, a): u for b, a, u in conn.execute("SELECT bar_index, asset, units FROM positions")
    }
    perps = {
        (b, a): u
        for b, a, u in conn.execute("SELECT bar_index, asset, size_units FROM perp_positions")
    }
    assets = levered.manifest.asset_names
    for (j, value, after, fees, slip, gas), (k, next_value, *_) in zip(
        equity[:-1], equity[1:], strict=True
    ):
        assert k == j + 1
        scale = max(abs(value), 1.0)
        assert after == pytest.approx(value - fees - slip - gas, rel=0, abs=1e-9 * scale)
        debt_units = flows[j][0]
        _, interest, funding, liquidation, insurance, bad_debt = flows[k]
        market = sum(positions[(j, a)] * (close[(k, a)] - close[(j, a)]) for a in assets)
        market += (positions[(j, "USDC")] - debt_units) * (num[k] - num[j])
        market += sum(perps[(j, a)] * (mark[(k, a)] - mark[(j, a)]) for a in assets)
        expected = after - interest - funding - liquidation + insurance + bad_debt + market
        assert next_value == pytest.approx(expected, rel=0, abs=1e-9 * scale), k
    # debt and perp trades are fills: their units are the changes of debt and perp size
    fills = conn.execute(
        "SELECT bar_index, asset, units FROM fills WHERE asset LIKE '%-PERP'"
    ).fetchall()
    assert fills
    for j, name, units in fills[:30]:
        asset = name.removesuffix("-PERP")
        before = perps.get((j - 1, asset), 0.0)
        assert perps[(j, asset)] - before == pytest.approx(units, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------------- resume
def test_levered_resume_in_pieces_writes_the_uninterrupted_ledger(levered, tmp_path):
    """Stopped and resumed in pieces (a crash on the way liquidates the book), the ledger equals an
    uninterrupted run's, table by table, with the kill-switch wrapper's state carried over."""
    cfg = load_config(levered.manifest.simulation_config)

    def feed():
        return crashed_feed(cfg, 5, 130, crash_bar=95, factor=0.5)

    _run(levered, feed(), tmp_path / "whole.db", kill_switch=WRAPPER)
    for n in (1, 60, 1, 3, 17, 20):  # in the warmup, at the first decision, around the crash
        assert (
            _run(levered, feed(), tmp_path / "pieces.db", n, kill_switch=WRAPPER).status == "paused"
        )
    assert _run(levered, feed(), tmp_path / "pieces.db", kill_switch=WRAPPER).status == "finished"
    whole, pieces = ledger_tables(tmp_path / "whole.db"), ledger_tables(tmp_path / "pieces.db")
    assert pieces == whole
    assert len(whole["levered"]) == 130 - cfg.env.warmup and len(whole["bar_protocol"]) > 0
    assert sum(row[LEVERED_COLUMNS.index("liquidations") + 1] for row in whole["levered"]) >= 1


# ---------------------------------------------------------------------------- bad input
def test_levered_policy_on_a_feed_without_protocol_state_is_refused_before_writing(
    levered, tmp_path
):
    cfg = load_config(levered.manifest.simulation_config)
    plain = SimulatedFeed.from_config(cfg, 3, 80)
    bare = PathFeed(plain.paths, kind="test", numeraire="USDC", source={})
    with pytest.raises(
        ValueError, match=r"env.lending.enabled=True.*must carry borrow_rate.*provides none"
    ):
        _run(levered, bare, tmp_path / "bare.db")
    _no_ledger(tmp_path / "bare.db")


def test_bad_protocol_fields_are_refused_naming_the_field(levered, tmp_path):
    cfg = load_config(levered.manifest.simulation_config)
    feed = SimulatedFeed.from_config(cfg, 3, 80)
    good = feed.bar(70)
    cases = {
        "negative borrow rate": ({"borrow_rate": -0.01}, r"borrow_rate is -0\.01; annual rates"),
        "percent not fraction": ({"supply_rate": np.full(5, 45.0)}, r"supply_rate of BTC is 45\.0"),
        "zero mark": ({"mark": np.zeros(5)}, r"mark of BTC is 0\.0"),
        "no funding": ({"funding": None}, r"protocol state lacks funding"),
        "cash earning above its debt": (
            {"cash_supply_rate": 0.5},
            r"cash_supply_rate 0.5 exceeds borrow_rate",
        ),
    }
    for name, (change, message) in cases.items():
        state = ProtocolState(**{**good.protocol.__dict__, **change})
        bad = MarketBar(**{**good.__dict__, "protocol": state})
        broken = _ListFeed(feed, {70: bad})
        with pytest.raises(ValueError, match=message):
            _run(levered, broken, tmp_path / f"{name}.db")
        _no_ledger(tmp_path / f"{name}.db")  # a finite feed is checked before anything is written


class _ListFeed(PathFeed):
    """The simulated feed with some bars replaced (a finite feed: validated up front)."""

    def __init__(self, feed: PathFeed, replace: dict[int, MarketBar]) -> None:
        super().__init__(feed.paths, kind="test", numeraire="USDC", source={},
                         protocol=feed.protocol, protocol_seed=feed.protocol_seed)  # fmt: skip
        self._replace = replace

    def bar(self, index: int) -> MarketBar:
        return self._replace.get(index) or super().bar(index)


# ---------------------------------------------------------------------------- view, MLflow, plot
def test_view_mlflow_and_plot_show_the_levered_state_and_the_backtest(
    levered, tmp_path, monkeypatch
):
    from mlflow import MlflowClient
    from rich.console import Console
    from typer.testing import CliRunner

    from defialloc.training.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(levered.manifest.simulation_config)
    ledger = tmp_path / "viewed.db"
    _run(levered, SimulatedFeed.from_config(cfg, 11, 110), ledger, mlflow_experiment="lev-paper")
    db = Ledger.open(ledger)
    last = db.last_bar_index()
    lev = db.levered_at(last)
    (value,) = db.conn.execute(
        "SELECT value_usd FROM equity WHERE bar_index = ?", (last,)
    ).fetchone()
    reference = db.reference_at(last)
    meta = db.meta
    db.close()
    assert reference == value  # a simulated scenario's backtest on the same seed: the same numbers
    assert meta["protocol_sources"]["funding"].startswith("env generator")
    console = Console(record=True, width=160)
    console.print(render_ledger(ledger))
    text = console.export_text()
    debt_text = f"${lev['debt_usd']:,.2f}"
    assert "health factor" in text and debt_text in text and "perp exposure" in text
    assert "perp positions after the last bar" in text and "vs backtest" in text
    # MLflow: the levered state per bar, the reference, and the plot artifact
    client = MlflowClient(tracking_uri=uri)
    run_id = meta["mlflow_run_id"]
    steps = {m.step: m.value for m in client.get_metric_history(run_id, "paper/debt_usd")}
    assert steps[last] == pytest.approx(lev["debt_usd"])
    for key in (
        "paper/perp_notional_usd",
        "paper/funding_usd",
        "paper/interest_usd",
        "backtest/value_usd",
    ):
        assert client.get_metric_history(run_id, key), key
    assert "paper_equity.png" in [f.path for f in client.list_artifacts(run_id)]
    # paper-view writes the same plot on request
    out = tmp_path / "equity.png"
    result = CliRunner().invoke(app, ["paper-view", "--ledger", str(ledger), "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
