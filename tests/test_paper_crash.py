"""Crash safety: SIGKILL `defialloc paper` at random moments, restart it, compare with an uninterrupted run.

Three times: with the env's own kill-switch in the policy's config, with the policy-side wrapper
(``--kill-switch``), whose state must survive the restarts too, and (10 kills) with a levered and
hedged policy (lending, perps, cascades: debt, perp sizes, the borrower population and the bars'
protocol state must survive them)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defialloc.agents.onnx_policy import OnnxPolicy
from defialloc.envs.config import load_config
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.training.paper.feeds import ReplayFeed
from defialloc.training.paper.ledger import Ledger
from defialloc.training.paper.runner import PaperTrader
from tests.conftest import LEVERED
from tests.test_paper import DATA_DIR, KILL_SWITCH, ledger_tables, make_policy_dir, needs_data

REPO = Path(__file__).resolve().parent.parent
# real held-out days: 61 warmup bars + 239 decisions = 300 bars
START, END = "2023-01-01", "2023-08-27"
# the levered case replays development days (the 2022 crashes): 2021-12-30 .. 2022-10-25
LEVERED_START, LEVERED_END = "2022-03-01", "2022-10-25"
N_BARS = 300
SPEED = 150.0  # bars per second: the run takes ~2 s, so kills land mid-run
KILLS = {"env": 5, "wrapper": 5, "levered": 10}
#: the wrapper with the parameters of tests.test_paper.KILL_SWITCH (fires on the 2023 replay)
WRAPPER = KillSwitchConfig(enabled=True, max_drawdown=0.06, cooldown_steps=3)
WRAPPER_ARGS = ["--kill-switch", "--kill-switch-param", "max_drawdown=0.06",
                "--kill-switch-param", "cooldown_steps=3"]  # fmt: skip


def _paper_args(policy_dir: Path, ledger: Path, extra: list[str], period=(START, END)) -> list[str]:
    return [sys.executable, "-m", "defialloc.training.cli", "paper", "--policy", str(policy_dir), "--feed", "replay",
            "--start", period[0], "--end", period[1], "--data-dir", str(DATA_DIR), "--speed", str(SPEED),
            "--ledger", str(ledger), "--no-mlflow", "--no-view", "--json", *extra]  # fmt: skip


def _last_bar(ledger: Path) -> int:
    if not ledger.exists():
        return -1
    db = Ledger.open(ledger)
    try:
        return db.last_bar_index()
    finally:
        db.close()


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("kill_switch", ["env", "wrapper", "levered"])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_ledger(
    tmp_path, kill_switch
):
    wrapper = kill_switch == "wrapper"
    levered = kill_switch == "levered"
    # the wrapper case exports a policy whose env kill-switch is off: only the wrapper acts
    overrides = {"wrapper": None, "env": KILL_SWITCH, "levered": LEVERED}[kill_switch]
    policy_dir = make_policy_dir(tmp_path / "policy", seed=4 if levered else 0, overrides=overrides)
    extra = WRAPPER_ARGS if wrapper else []
    period = (LEVERED_START, LEVERED_END) if levered else (START, END)
    ledger = tmp_path / "paper.db"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    rng = random.Random(20261121)
    progress = []
    kills = KILLS[kill_switch]
    for k in range(kills):
        proc = subprocess.Popen(_paper_args(policy_dir, ledger, extra, period), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        if k == 0:
            time.sleep(rng.uniform(0.0, 1.0))  # anywhere from start-up to the first bars
        else:
            # wait until this process writes (start-up takes a second or two), then kill it at random
            previous, deadline = progress[-1], time.monotonic() + 30
            while (
                _last_bar(ledger) <= previous
                and time.monotonic() < deadline
                and proc.poll() is None
            ):
                time.sleep(0.02)
            # a fraction of the bars it has left: a late restart would otherwise finish first
            remaining = N_BARS - 1 - max(_last_bar(ledger), 0)
            time.sleep(rng.uniform(0.0, max(remaining, 1) / SPEED * 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if (
            proc.returncode == 0
        ):  # it finished before the signal (a loaded machine): nothing to kill
            progress.append(_last_bar(ledger))
            break
        assert proc.returncode == -signal.SIGKILL, (
            proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        )
        progress.append(_last_bar(ledger))
    finished = subprocess.run(
        _paper_args(policy_dir, ledger, extra, period),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    mid_run = [p for p in progress if 0 <= p < N_BARS - 1]
    print("kill points (last committed bar):", progress)
    assert len(set(mid_run)) >= kills // 2 + 1, (
        f"kills should land at different bars mid-run, got {progress}"
    )
    assert progress == sorted(progress), "a restart must never lose committed bars"

    policy = OnnxPolicy(policy_dir)
    cfg = load_config(policy.manifest.simulation_config)
    reference = tmp_path / "uninterrupted.db"
    feed = ReplayFeed.from_config(cfg, *period, data_dir=str(DATA_DIR))
    assert feed.length == N_BARS
    trader = PaperTrader(policy, feed, reference, kill_switch=WRAPPER if wrapper else None)
    trader.run()
    trader.close()
    tables = ledger_tables(ledger)
    assert tables == ledger_tables(reference)
    if levered:  # the restarts carried debt, perps and the population through the whole period
        debt = [row[2] for row in tables["levered"]]
        assert len(debt) == N_BARS - cfg.env.warmup and sum(d > 1_000.0 for d in debt) > 50
        assert any(row[2] != 0.0 for row in tables["perp_positions"])
        return
    assert policy.manifest.simulation_config["env"]["kill_switch"]["enabled"] is not wrapper
    flags = [row[-1] for row in tables["equity"]]
    assert sum(flags) > 0, "the kill-switch should fire in 2023 with a 6% drawdown limit"
    db = Ledger.open(ledger)
    sessions = db.conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    db.close()
    # every process that committed a bar opened a session (under load a restart can be killed
    # before it writes anything: then two kill points are the same bar), and so did the last run
    assert sessions >= len({p for p in progress if p >= 0}) + 1
