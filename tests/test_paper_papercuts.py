"""Paper-trading papercuts: a ledger extended to a later ``--end``, one writer per ledger, clear
errors for a bad ``--feed python:...`` module and for an action given as text."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from defialloc.envs import make_env
from defialloc.envs.config import load_config
from defialloc.training.paper.feeds import ReplayFeed
from defialloc.training.paper.ledger import LedgerMismatch
from defialloc.training.paper.runner import PaperTrader
from tests import test_paper
from tests.test_paper import DATA_DIR, ledger_tables, needs_data, run_trader, simulated_feed

policy_dir, policy = test_paper.policy_dir, test_paper.policy  # the module's fixtures


@needs_data
def test_a_ledger_extends_to_a_later_end_and_equals_the_whole_run(policy, tmp_path):
    cfg = load_config(policy.manifest.simulation_config)

    def replay(end: str) -> ReplayFeed:
        return ReplayFeed.from_config(cfg, "2023-01-01", end, data_dir=str(DATA_DIR))

    run_trader(policy, replay("2023-02-28"), tmp_path / "grown.db")
    meta_of_short_run = dict(ledger_tables(tmp_path / "grown.db")["meta"])["feed"]
    grown = run_trader(policy, replay("2023-04-30"), tmp_path / "grown.db")
    assert grown.status == "finished" and grown.last_time == "2023-04-30"
    assert grown.first_new_bar == replay("2023-02-28").length  # only the new bars were written
    run_trader(policy, replay("2023-04-30"), tmp_path / "whole.db")
    grown_tables, whole_tables = (
        ledger_tables(tmp_path / "grown.db"),
        ledger_tables(tmp_path / "whole.db"),
    )
    meta, whole_meta = dict(grown_tables.pop("meta")), dict(whole_tables.pop("meta"))
    assert grown_tables == whole_tables  # every bar, decision, fill, position and state
    assert meta.pop("feed_history") == f"[{meta_of_short_run}]"
    assert meta == whole_meta  # it now records the longer feed
    # a shorter or a different feed is still refused
    with pytest.raises(LedgerMismatch, match="another feed"):
        run_trader(policy, replay("2023-03-31"), tmp_path / "grown.db")


def test_a_longer_feed_with_other_first_bars_does_not_extend(policy, tmp_path):
    run_trader(policy, simulated_feed(policy, n_bars=100), tmp_path / "l.db")
    longer = simulated_feed(policy, n_bars=120)
    data = longer.paths.close
    data[0, 10] *= 1.01  # one changed bar inside the ledger's range
    with pytest.raises(LedgerMismatch, match="extends a ledger only when its first bars"):
        run_trader(policy, longer, tmp_path / "l.db")


def test_a_second_writer_is_refused_up_front_and_the_ledger_untouched(policy, tmp_path):
    ledger = tmp_path / "one.db"
    run_trader(policy, simulated_feed(policy), ledger, max_bars=70)
    before = ledger_tables(ledger)
    first = PaperTrader(policy, simulated_feed(policy), ledger)
    first.preflight()  # holds the ledger, as a running `defialloc paper` does
    try:
        second = PaperTrader(policy, simulated_feed(policy), ledger)
        with pytest.raises(ValueError, match=r"another paper process \(pid \d+\)"):
            second.run()
        assert ledger_tables(ledger) == before
    finally:
        first.close()
    resumed = run_trader(policy, simulated_feed(policy), ledger)  # the lock went with the writer
    assert resumed.first_new_bar == 70 and resumed.status == "finished"


def test_feed_module_errors_are_one_clear_line(policy_dir, tmp_path, monkeypatch):
    from defialloc.training.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "myfeeds.py").write_text("def live(cfg, manifest):\n    return None\n")
    runner = CliRunner()
    base = ["paper", "--policy", str(policy_dir), "--ledger", str(tmp_path / "f.db"), "--no-mlflow"]
    for feed, message in (
        ("python:nope.mod:factory", "cannot import module 'nope.mod'"),
        ("python:myfeeds:factory", "has no callable 'factory' (it defines: live)"),
        ("python:myfeeds", "must look like python:package.module:factory"),
    ):
        result = runner.invoke(app, [*base, "--feed", feed])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "f.db").exists()


def test_an_action_given_as_text_gets_a_clear_error():
    env = make_env({"env": {"horizon": 5}}, seed=0)
    for bad in ("buy", ["buy"] * env.action_space.shape[0], {"BTC": 1}):
        with pytest.raises(ValueError, match=r"action must be numbers in \[-1, 1\]"):
            env.step(bad)
    env.step(np.zeros(env.action_space.shape))  # the env is still usable
