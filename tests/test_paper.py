"""Paper trading: streaming simulator, feeds, ledger, resume, agreement with the backtest, bad input."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from defialloc.agents.onnx_policy import ONNX_FILE, OnnxPolicy
from defialloc.envs.config import OBSERVATION_BLOCKS, load_config
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.streaming import MarketBar, StreamingSimulator
from defialloc.training.paper.feeds import LiveFeedAdapter, PathFeed, ReplayFeed, SimulatedFeed
from defialloc.training.paper.ledger import RECORD_TABLES, Ledger, LedgerMismatch
from defialloc.training.paper.runner import PaperTrader
from defialloc.training.paper.view import render_ledger

REPO = Path(__file__).resolve().parent.parent
DATA_DIRS = (REPO / "data" / "crypto-daily", REPO.parent / "shared" / "data" / "crypto-daily")
DATA_DIR = next((d for d in DATA_DIRS if (d / "BTC-USD.csv").is_file()), None)
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="data/crypto-daily not found")
#: a config whose kill-switch fires on real 2023 moves (its state must survive restarts too)
KILL_SWITCH = {
    "env.kill_switch.enabled": True,
    "env.kill_switch.max_drawdown": 0.06,
    "env.kill_switch.cooldown_steps": 3,
}


def make_policy_dir(
    out: Path, *, seed: int = 0, scale: float = 25.0, overrides: dict | None = None
) -> Path:
    """Export an (untrained) PPO whose action head is scaled up so that it trades every bar."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from defialloc import envs
    from defialloc.agents.export import ExportSource, export_policy
    from defialloc.agents.sb3 import ObsNormalizer

    torch.set_num_threads(1)
    cfg = load_config(None, {"env.horizon": 30, **(overrides or {})})
    venv = VecNormalize(envs.make_vec_env(cfg, n_envs=2, seed=seed))
    venv.reset()
    rng = np.random.default_rng(seed)
    for _ in range(40):
        venv.step(rng.uniform(-1, 1, (2, venv.action_space.shape[0])))
    venv.training = False
    model = PPO(
        "MlpPolicy", venv, n_steps=8, batch_size=16, seed=seed, policy_kwargs={"net_arch": [16]}
    )
    with torch.no_grad():
        model.policy.action_net.weight.mul_(scale)
    export_policy(ExportSource(model, ObsNormalizer.from_vec_normalize(venv), cfg, "ppo"), out)
    return out


def ledger_tables(path: Path) -> dict[str, list[tuple]]:
    ledger = Ledger.open(path)
    try:
        return ledger.tables()
    finally:
        ledger.close()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    return make_policy_dir(tmp_path_factory.mktemp("policy"), overrides=KILL_SWITCH)


@pytest.fixture(scope="module")
def other_policy_dir(tmp_path_factory) -> Path:
    return make_policy_dir(tmp_path_factory.mktemp("other"), seed=1, overrides=KILL_SWITCH)


@pytest.fixture(scope="module")
def policy(policy_dir) -> OnnxPolicy:
    return OnnxPolicy(policy_dir)


def simulated_feed(
    policy: OnnxPolicy, n_bars: int = 140, seed: int = 3, speed: float = 0.0
) -> SimulatedFeed:
    cfg = load_config(policy.manifest.simulation_config)
    return SimulatedFeed.from_config(cfg, seed, n_bars, speed=speed)


def run_trader(policy, feed, ledger: Path, max_bars: int | None = None):
    trader = PaperTrader(policy, feed, ledger)
    try:
        return trader.run(max_bars)
    finally:
        trader.close()


# ---------------------------------------------------------------------------- streaming simulator
@pytest.mark.parametrize("blocks", [None, list(OBSERVATION_BLOCKS)], ids=["default", "all-blocks"])
def test_streaming_features_equal_the_backtest_features_bit_for_bit(policy, blocks):
    cfg = load_config(policy.manifest.simulation_config)
    if blocks is not None:  # garch_vol and regime too: recursions from the path's first row
        cfg = load_config(cfg, {"env.observation.blocks": blocks})
    warmup = cfg.env.warmup
    n_bars, history = (120, cfg.env.observation.history_needed) if blocks is None else (400, 300)
    paths = sample_paths(cfg.market, np.array([11]), n_bars, warmup)
    batch = PortfolioSimulator(load_config(cfg, {"env.horizon": n_bars - warmup - 1}), 1)
    batch.reset_envs(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), paths=paths)
    feed = PathFeed(paths, kind="test", numeraire="USDC", source={})
    stream = StreamingSimulator(cfg, capacity=8)  # small capacity: the arrays must grow on the way
    trailing = StreamingSimulator(cfg, capacity=8, history_rows=history)
    for bar in feed.bars():
        stream.push_bar(bar)
        trailing.push_bar(bar)
        if bar.index == warmup:
            stream.start()
            trailing.start()
    np.testing.assert_array_equal(
        stream.features[0, warmup:n_bars], batch.features[0, warmup:n_bars]
    )
    # a bounded trailing window gives the same features up to float32 rounding (the recursive
    # blocks restart from their prior at the window's first row: its weight decays, beta^300)
    np.testing.assert_allclose(
        trailing.features[0, warmup:n_bars], batch.features[0, warmup:n_bars], atol=2e-5
    )


def test_streaming_state_round_trips_through_json(policy):
    """A simulator rebuilt from the bars and the JSON state continues exactly like the original."""
    import json

    cfg = load_config(policy.manifest.simulation_config)
    warmup = cfg.env.warmup
    paths = sample_paths(cfg.market, np.array([5]), warmup + 30, warmup)
    feed = PathFeed(paths, kind="test", numeraire="USDC", source={})
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (30, 1, 6))
    original = StreamingSimulator(cfg, capacity=40)
    original.load_history([feed.bar(i) for i in range(warmup + 1)])
    for k in range(10):
        if k:
            original.push_bar(feed.bar(warmup + k))
            original.advance()
        original.execute(actions[k])
    state = json.loads(json.dumps(original.state()))
    rebuilt = StreamingSimulator(cfg, capacity=40)
    rebuilt.load_history([feed.bar(i) for i in range(warmup + 10)])
    rebuilt.load_state(state)
    assert rebuilt.state() == original.state()
    for k in range(10, 20):
        for sim in (original, rebuilt):
            sim.push_bar(feed.bar(warmup + k))
            sim.advance()
            sim.execute(actions[k])
        np.testing.assert_array_equal(rebuilt.observe(), original.observe())
    assert rebuilt.state() == original.state()
    with pytest.raises(ValueError, match="must agree"):
        bad = StreamingSimulator(cfg, capacity=40)
        bad.load_history([feed.bar(i) for i in range(warmup + 5)])
        bad.load_state(state)


# ---------------------------------------------------------------------------- loop and ledger
def test_ledger_accounting_per_bar(policy, tmp_path):
    feed = simulated_feed(policy)
    summary = run_trader(policy, feed, tmp_path / "paper.db")
    warmup = policy.manifest.simulation_config["env"]["warmup"]
    n_assets = policy.manifest.n_assets
    assert summary.status == "finished" and summary.bars_written == feed.length
    assert summary.decisions == feed.length - warmup
    conn = sqlite3.connect(tmp_path / "paper.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    counts = {
        t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("bars", "equity", "orders", "positions", "snapshots")
    }
    assert counts == {"bars": feed.length, "equity": summary.decisions, "orders": summary.decisions * n_assets,
                      "positions": summary.decisions * (n_assets + 1), "snapshots": summary.decisions}  # fmt: skip
    equity = conn.execute(
        "SELECT bar_index, value_usd, value_after_trade_usd, fees_usd, slippage_usd, gas_usd FROM equity ORDER BY bar_index"
    ).fetchall()
    assert equity[0][1] == 100_000.0 and summary.fees_usd > 0 and summary.gas_usd > 0
    for _, value, after, fees, slip, gas in equity:
        # trading at market prices loses exactly the costs: value after = value before - fees - slippage - gas
        assert after == pytest.approx(value - fees - slip - gas, rel=1e-10, abs=1e-6)
    for (bar_index, *_), (_, next_value, *_) in zip(equity[:-1], equity[1:], strict=True):
        # the next bar's mark = the holdings after this bar's trades at the next bar's prices
        holdings = dict(
            conn.execute(
                "SELECT asset, units FROM positions WHERE bar_index = ?", (bar_index,)
            ).fetchall()
        )
        prices = dict(
            conn.execute(
                "SELECT asset, close FROM bar_prices WHERE bar_index = ?", (bar_index + 1,)
            ).fetchall()
        )
        numeraire = conn.execute(
            "SELECT numeraire_usd FROM bars WHERE bar_index = ?", (bar_index + 1,)
        ).fetchone()[0]
        marked = sum(holdings[a] * p for a, p in prices.items()) + holdings["USDC"] * numeraire
        assert next_value == pytest.approx(marked, rel=1e-12)
    # fills are the position changes
    fills = conn.execute(
        "SELECT bar_index, asset, units FROM fills WHERE asset != 'USDC'"
    ).fetchall()
    assert fills
    for bar_index, asset, units in fills[:20]:
        (now,) = conn.execute(
            "SELECT units FROM positions WHERE bar_index = ? AND asset = ?", (bar_index, asset)
        ).fetchone()
        before = conn.execute(
            "SELECT units FROM positions WHERE bar_index = ? AND asset = ?", (bar_index - 1, asset)
        ).fetchone()
        assert now - (before[0] if before else 0.0) == pytest.approx(units, rel=1e-9, abs=1e-12)
    # the terminal view shows the last equity, every position and the last actions
    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(render_ledger(tmp_path / "paper.db"))
    text = console.export_text()
    last_bar, last_value = equity[-1][0], equity[-1][1]
    assert f"${last_value:,.2f}" in text and "positions after the last bar" in text
    assert all(asset in text for asset in (*policy.manifest.asset_names, "USDC"))
    assert f"│ {last_bar} " in text  # the newest decision heads the last-actions table


def test_resume_in_pieces_writes_the_uninterrupted_ledger(policy, tmp_path):
    feed = simulated_feed(policy, n_bars=130)
    run_trader(policy, feed, tmp_path / "whole.db")
    pieces = [1, 60, 1, 1, 17, 5]  # cuts in the warmup, at the first decision and later
    for n in pieces:
        summary = run_trader(
            policy, simulated_feed(policy, n_bars=130), tmp_path / "pieces.db", max_bars=n
        )
        assert summary.status == "paused"
    final = run_trader(policy, simulated_feed(policy, n_bars=130), tmp_path / "pieces.db")
    assert final.status == "finished" and final.first_new_bar == sum(pieces)
    assert ledger_tables(tmp_path / "pieces.db") == ledger_tables(tmp_path / "whole.db")
    conn = sqlite3.connect(tmp_path / "pieces.db")
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == len(pieces) + 1
    # a finished ledger run again writes nothing
    again = run_trader(policy, simulated_feed(policy, n_bars=130), tmp_path / "pieces.db")
    assert again.bars_written == 0


@needs_data
def test_paper_on_held_out_period_equals_the_backtest(policy, tmp_path):
    """Paper trading 2023-01-01..2024-04-09 bar by bar = run_policy on the replay path of the same dates."""
    from defialloc.evaluation.backtest import run_period_backtest

    cfg = load_config(policy.manifest.simulation_config)
    feed = ReplayFeed.from_config(cfg, "2023-01-01", "2024-04-09", data_dir=str(DATA_DIR))
    assert feed.times[cfg.env.warmup] == "2023-01-01" and feed.times[-1] == "2024-04-09"
    summary = run_trader(policy, feed, tmp_path / "held_out.db")
    assert summary.decisions == 465
    result = run_period_backtest(
        load_config(cfg, {"market.data_dir": str(DATA_DIR)}),
        [policy],
        "2023-01-01",
        "2024-04-09",
        progress=False,
    )
    record = result.records[policy.name]
    conn = sqlite3.connect(tmp_path / "held_out.db")
    rows = np.array(
        conn.execute(
            "SELECT value_usd, fees_usd, slippage_usd, gas_usd, turnover, kill_switch FROM equity ORDER BY bar_index"
        ).fetchall()
    )
    # the backtest marks the last bar and stops; paper trading also decides (and trades) at the last bar
    np.testing.assert_array_equal(rows[:, 0], record.value_usd[0])
    np.testing.assert_array_equal(rows[:-1, 1], record.fees_usd[0])
    np.testing.assert_array_equal(rows[:-1, 2], record.slippage_usd[0])
    np.testing.assert_array_equal(rows[:-1, 3], record.gas_usd[0])
    np.testing.assert_array_equal(rows[:-1, 4], record.turnover[0])
    assert rows[:, 5].sum() > 0, "the kill-switch should fire in 2023 with a 6% drawdown limit"
    weights = np.array(
        conn.execute("SELECT weight FROM positions ORDER BY bar_index, rowid").fetchall()
    ).reshape(465, -1)
    np.testing.assert_allclose(weights[:-1], record.weights[0], atol=1e-12)


@needs_data
def test_paper_with_every_observation_block_equals_the_backtest(tmp_path):
    """A policy observing every block (garch_vol and regime included) trades the same on paper,
    bar by bar, as in the backtest of the same replayed days."""
    from defialloc.evaluation.backtest import run_period_backtest

    blocks = {"env.observation.blocks": list(OBSERVATION_BLOCKS)}
    policy = OnnxPolicy(make_policy_dir(tmp_path / "policy", seed=2, overrides=blocks))
    cfg = load_config(policy.manifest.simulation_config)
    assert cfg.env.observation.blocks == list(OBSERVATION_BLOCKS)
    assert "regime_p_crash" in policy.manifest.observation_names
    feed = ReplayFeed.from_config(cfg, "2023-01-01", "2023-05-31", data_dir=str(DATA_DIR))
    summary = run_trader(policy, feed, tmp_path / "paper.db")
    result = run_period_backtest(
        load_config(cfg, {"market.data_dir": str(DATA_DIR)}),
        [policy],
        "2023-01-01",
        "2023-05-31",
        progress=False,
    )
    record = result.records[policy.name]
    conn = sqlite3.connect(tmp_path / "paper.db")
    rows = np.array(
        conn.execute(
            "SELECT value_usd, fees_usd, turnover FROM equity ORDER BY bar_index"
        ).fetchall()
    )
    assert summary.decisions == len(rows) == record.value_usd.shape[1]
    np.testing.assert_array_equal(rows[:, 0], record.value_usd[0])
    np.testing.assert_array_equal(rows[:-1, 1], record.fees_usd[0])
    np.testing.assert_array_equal(rows[:-1, 2], record.turnover[0])
    assert rows[:-1, 2].sum() > 0.5  # it trades


# ---------------------------------------------------------------------------- feeds
def test_simulated_feed_is_deterministic_per_seed(policy):
    a, b, c = (
        simulated_feed(policy, seed=4),
        simulated_feed(policy, seed=4),
        simulated_feed(policy, seed=5),
    )
    assert a.identity() == b.identity() != c.identity()
    np.testing.assert_array_equal(a.bar(100).close, b.bar(100).close)
    assert a.times[1] == "2030-01-02"


def test_replay_feed_paces_bars_at_the_chosen_speed(policy):
    slept: list[float] = []
    cfg = load_config(policy.manifest.simulation_config)
    paths = sample_paths(cfg.market, np.array([1]), 70, cfg.env.warmup)
    feed = PathFeed(
        paths, kind="test", numeraire="USDC", source={}, speed=1000.0, sleep=slept.append
    )
    assert [b.index for b in feed.bars(start=65)] == [65, 66, 67, 68, 69]
    assert all(0 < s <= 0.005 for s in slept)


class ListAdapter(LiveFeedAdapter):
    """A live adapter serving prepared bars (no network): the interface a real venue implements."""

    def __init__(self, bars: list[MarketBar], asset_names, numeraire="USDC", step_days=1.0) -> None:
        super().__init__(
            asset_names, numeraire, step_days, venue="test", poll_seconds=0.0, sleep=lambda s: None
        )
        self._bars = bars
        self.polls = 0

    def fetch_bar(self, index: int) -> MarketBar | None:
        if self.polls < 2:  # not closed yet twice: the adapter polls again
            self.polls += 1
            return None
        return self._bars[index]


def _live_feed(policy, bars: list[MarketBar]):
    class Finite(ListAdapter):
        def bars(self, start: int = 0):
            for bar in super().bars(start):
                yield bar
                if bar.index == len(self._bars) - 1:
                    return

    return Finite(bars, policy.manifest.asset_names)


def test_live_adapter_feeds_the_loop(policy, tmp_path):
    feed = simulated_feed(policy, n_bars=70)
    live = _live_feed(policy, [feed.bar(i) for i in range(70)])
    summary = run_trader(policy, live, tmp_path / "live.db")
    assert summary.status == "finished" and summary.bars_written == 70 and live.polls == 2
    # same bars as the simulated feed -> the same trading record
    run_trader(policy, feed, tmp_path / "sim.db")
    live_tables, sim_tables = (
        ledger_tables(tmp_path / "live.db"),
        ledger_tables(tmp_path / "sim.db"),
    )
    for table in RECORD_TABLES[1:]:
        if table == "reference":  # a live feed has no path to backtest; the simulated one has
            assert not live_tables[table] and len(sim_tables[table]) == 70 - 61
            continue
        assert live_tables[table] == sim_tables[table], table


# ---------------------------------------------------------------------------- bad input
def _no_ledger(path: Path) -> None:
    assert not path.exists() and not Path(str(path) + "-wal").exists()


def test_feed_assets_or_step_not_matching_the_manifest_are_refused(policy, tmp_path):
    cfg = load_config(policy.manifest.simulation_config)
    other_assets = load_config(cfg, {"market.assets": ["BTC", "ETH", "SOL", "LINK"]})
    feed = SimulatedFeed.from_config(other_assets, 0, 80)
    with pytest.raises(ValueError, match="do not match the policy's assets"):
        run_trader(policy, feed, tmp_path / "a.db")
    _no_ledger(tmp_path / "a.db")
    reordered = load_config(cfg, {"market.assets": ["ETH", "BTC", "SOL", "LINK", "AVAX"]})
    with pytest.raises(ValueError, match="same order"):
        run_trader(policy, SimulatedFeed.from_config(reordered, 0, 80), tmp_path / "a.db")
    half_day = load_config(cfg, {"market.step_days": 0.5})
    with pytest.raises(ValueError, match="step_days=0.5 does not match"):
        run_trader(policy, SimulatedFeed.from_config(half_day, 0, 80), tmp_path / "a.db")
    _no_ledger(tmp_path / "a.db")


def test_corrupt_onnx_is_refused_by_the_cli(policy_dir, tmp_path):
    from defialloc.training.cli import app

    bad = tmp_path / "bad_policy"
    shutil.copytree(policy_dir, bad)
    data = bytearray((bad / ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / ONNX_FILE).write_bytes(bytes(data))
    ledger = tmp_path / "c.db"
    result = CliRunner().invoke(app, ["paper", "--policy", str(bad), "--feed", "simulated", "--bars", "80",
                                      "--ledger", str(ledger), "--no-mlflow"])  # fmt: skip
    assert result.exit_code == 2 and "corrupt" in result.output
    _no_ledger(ledger)


def test_ledger_of_another_policy_or_feed_is_refused_untouched(policy, other_policy_dir, tmp_path):
    ledger = tmp_path / "mine.db"
    run_trader(policy, simulated_feed(policy), ledger, max_bars=70)
    before_tables, before_bytes = ledger_tables(ledger), file_digest(ledger)
    other = OnnxPolicy(other_policy_dir)
    assert other.manifest.policy_id != policy.manifest.policy_id
    with pytest.raises(LedgerMismatch, match="belongs to another policy"):
        run_trader(other, simulated_feed(other), ledger)
    with pytest.raises(LedgerMismatch, match="another feed .*seed"):
        run_trader(policy, simulated_feed(policy, seed=9), ledger)
    assert ledger_tables(ledger) == before_tables and file_digest(ledger) == before_bytes
    not_a_ledger = tmp_path / "notes.db"
    sqlite3.connect(not_a_ledger).execute("CREATE TABLE x (y)")
    with pytest.raises(ValueError, match="not a defialloc paper ledger"):
        run_trader(policy, simulated_feed(policy), not_a_ledger)


def _write_csvs(src: Path, dst: Path, edit: dict[str, callable]) -> Path:
    dst.mkdir()
    for name in ("BTC", "ETH", "SOL", "LINK", "AVAX", "USDC"):
        lines = (src / f"{name}-USD.csv").read_text().splitlines()
        if name in edit:
            lines = edit[name](lines)
        (dst / f"{name}-USD.csv").write_text("\n".join(lines) + "\n")
    return dst


@needs_data
def test_gaps_and_non_positive_prices_in_a_replay_are_refused(policy, tmp_path):
    cfg = load_config(policy.manifest.simulation_config)

    def drop_day(lines):
        return [line for line in lines if not line.startswith("2023-02-10")]

    def zero_close(lines):
        return [",".join(line.split(",")[:4] + ["0"] + line.split(",")[5:]) if line.startswith("2023-02-10") else line
                for line in lines]  # fmt: skip

    for name, edit, message in (
        ("gap", drop_day, "gap in dates"),
        ("zero", zero_close, "must be finite numbers > 0"),
    ):
        folder = _write_csvs(DATA_DIR, tmp_path / name, {"SOL": edit})
        with pytest.raises(ValueError, match=message):
            feed = ReplayFeed.from_config(cfg, "2023-01-01", "2023-03-31", data_dir=str(folder))
            run_trader(policy, feed, tmp_path / f"{name}.db")
        _no_ledger(tmp_path / f"{name}.db")


def test_bad_bars_from_a_live_feed_stop_before_anything_of_theirs_is_written(policy, tmp_path):
    feed = simulated_feed(policy, n_bars=80)
    bars = [feed.bar(i) for i in range(80)]
    bad_price = bars[70].close.copy()
    bad_price[2] = -1.0
    cases = {
        "negative": (
            bars[:70] + [MarketBar(**{**bars[70].__dict__, "close": bad_price})],
            "price of SOL is -1.0",
        ),
        "gap": (
            bars[:70] + [MarketBar(**{**bars[71].__dict__, "index": 70})],
            "gap in feed at bar 70",
        ),
    }
    for name, (served, message) in cases.items():
        ledger = tmp_path / f"{name}.db"
        with pytest.raises(ValueError, match=message):
            run_trader(policy, _live_feed(policy, served), ledger)
        assert Ledger.open(ledger).last_bar_index() == 69
    # upfront validation of a finite feed: nothing at all is written
    paths = feed.paths
    broken = MarketPaths(**{**paths.__dict__, "close": paths.close.copy()})
    broken.close[0, 75, 1] = 0.0
    with pytest.raises(ValueError, match="price of ETH is 0.0"):
        run_trader(
            policy,
            PathFeed(broken, kind="test", numeraire="USDC", source={}),
            tmp_path / "upfront.db",
        )
    _no_ledger(tmp_path / "upfront.db")


# ---------------------------------------------------------------------------- runtime imports
RUNTIME_PROBE = r"""
import pickle, sys
events = []
sys.addaudithook(lambda event, args: events.append(event) if event == "pickle.find_class" else None)
def refuse(*a, **k):
    raise AssertionError("the paper runtime must not unpickle anything")
pickle.load = pickle.loads = refuse
from defialloc.training.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "stable_baselines3"))
assert not leaked, leaked
assert not events, events
assert "onnxruntime" in sys.modules and "mlflow" in sys.modules
print("RUNTIME-OK")
"""


def test_paper_runtime_imports_no_torch_and_loads_no_pickle(policy_dir, tmp_path):
    """The whole `defialloc paper` command (MLflow streaming on) in a fresh interpreter."""
    import os

    ledger = tmp_path / "rt.db"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    args = ["paper", "--policy", str(policy_dir), "--feed", "simulated", "--bars", "90", "--ledger", str(ledger),
            "--experiment", "paper-test", "--no-view"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", RUNTIME_PROBE, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "RUNTIME-OK" in proc.stdout, (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    # metrics were streamed to a run of its own, one step per decision bar
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = Ledger.open(ledger).meta["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.data.tags["kind"] == "paper" and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "paper/value_usd")]
    warmup = OnnxPolicy(policy_dir).manifest.simulation_config["env"]["warmup"]
    assert sorted(steps) == list(range(warmup, 90))


def test_ruin_halts_the_run_and_a_restart_does_nothing(tmp_path):
    """At or below env.ruin_fraction of the start value the portfolio stops trading (and stays stopped)."""
    fragile = OnnxPolicy(
        make_policy_dir(tmp_path / "fragile", overrides={"env.ruin_fraction": 0.9})
    )
    feed = simulated_feed(fragile, n_bars=90)
    paths = feed.paths
    crash = {name: getattr(paths, name).copy() for name in ("close", "high", "low")}
    for arr in crash.values():
        arr[0, 70:] *= 0.05  # every risky asset loses 95 % between bars 69 and 70
    crashed = PathFeed(
        MarketPaths(**{**paths.__dict__, **crash}), kind="test", numeraire="USDC", source={}
    )
    ledger = tmp_path / "ruin.db"
    summary = run_trader(fragile, crashed, ledger)
    assert summary.status == "halted: ruined" and summary.last_bar == 70
    db = Ledger.open(ledger)
    assert db.status() == "halted: ruined"
    (value,) = db.conn.execute("SELECT value_usd FROM equity WHERE bar_index = 70").fetchone()
    assert value <= 0.9 * 100_000.0
    assert db.conn.execute("SELECT COUNT(*) FROM decisions WHERE bar_index = 70").fetchone()[0] == 0
    db.close()
    again = run_trader(fragile, crashed, ledger)
    assert again.status == "halted: ruined" and again.bars_written == 0


def test_a_format_1_ledger_resumes_with_the_new_tables_added(policy, tmp_path):
    """A spot ledger written before the levered tables existed (format 1) resumes: the missing
    tables are created, nothing recorded is lost, and the result equals an uninterrupted run."""
    old = tmp_path / "old.db"
    run_trader(policy, simulated_feed(policy, n_bars=100), old, max_bars=80)
    conn = sqlite3.connect(old)
    for table in ("bar_protocol", "levered", "perp_positions", "reference"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", ('"defialloc.paper_ledger/1"',))
    conn.commit()
    conn.close()
    summary = run_trader(policy, simulated_feed(policy, n_bars=100), old)
    assert summary.status == "finished" and summary.first_new_bar == 80
    run_trader(policy, simulated_feed(policy, n_bars=100), tmp_path / "new.db")
    resumed, fresh = ledger_tables(old), ledger_tables(tmp_path / "new.db")
    assert resumed["meta"] == fresh["meta"]
    for table in RECORD_TABLES[1:]:
        if table != "reference":  # written at creation only: the old ledger has none
            assert resumed[table] == fresh[table], table
