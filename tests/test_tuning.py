"""``defialloc tune-baselines``: validation-only selection, the grid search, the YAML edit, the CLI."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import defialloc.evaluation.backtest as backtest_mod
from defialloc.agents.baselines import make_policy
from defialloc.envs.config import load_config
from defialloc.envs.seeds import VALIDATION_SEED_BASE, scenario_seeds
from defialloc.evaluation.backtest import load_evaluation_config, run_backtest
from defialloc.evaluation.tuning import (
    GRIDS,
    annual_log_growth,
    assert_validation_only,
    grid_points,
    tunable,
    tune_baselines,
)
from defialloc.evaluation.tuning_yaml import TUNED_MARK, update_evaluation_yaml
from defialloc.training.cli import app


@pytest.fixture(autouse=True)
def _quiet_fallbacks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@pytest.fixture(scope="module")
def short():
    return load_config("configs/default.yaml", {"env.horizon": 20})


SMALL = {
    "equal_weight_band": {"no_trade_band": [0.02, 0.2]},
    "vol_target": {"target_vol": [0.3, 0.8], "rebalance_every": [1, 7]},
}


def test_grid_points_product_last_key_fastest():
    pts = grid_points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(pts) == 6 and pts[0] == {"a": 1, "b": "x"} and pts[1] == {"a": 1, "b": "y"}
    assert grid_points({}) == [{}]
    lev = load_config("configs/leverage.yaml")
    for name, grid in GRIDS.items():  # every grid point is a valid parameter set
        assert 4 <= len(grid_points(grid)) <= 24, name
        for point in grid_points(grid):
            params = make_policy(name, lev, **point).params.model_dump()
            assert params | point == params, (name, point)


def test_assert_validation_only_refuses_test_seeds_and_real_periods(short):
    assert_validation_only(scenario_seeds("validation", 3), short)
    with pytest.raises(ValueError, match="TEST scenario seeds"):
        assert_validation_only(scenario_seeds("test", 3), short)
    with pytest.raises(ValueError, match="not validation seeds"):
        assert_validation_only(np.array([5]), short)
    with pytest.raises(ValueError, match="replayed period"):
        assert_validation_only(
            scenario_seeds("validation", 1),
            load_config("configs/default.yaml", {"market.source": "replay"}),
        )
    held_out = load_config(
        "configs/default.yaml", {"market.source": "bootstrap", "market.end": "2023-06-30"}
    )
    with pytest.raises(ValueError, match="held-out"):
        assert_validation_only(scenario_seeds("validation", 1), held_out)


def test_tunable_lists_feasible_baselines_the_config_supports(short):
    names = tunable(short)
    assert "oracle_mean_variance" not in names and "buy_and_hold" not in names
    assert "levered_vol_target" not in names and "static_tangency" in names
    assert {"levered_vol_target", "carry"} <= set(tunable(load_config("configs/leverage.yaml")))
    with pytest.raises(ValueError, match="reference, not a strategy"):
        tunable(short, ["oracle_mean_variance"])
    with pytest.raises(ValueError, match="nothing to tune"):
        tunable(short, ["buy_and_hold"])


def test_tuner_only_ever_backtests_validation_scenarios(short, monkeypatch):
    calls = []
    real = backtest_mod.run_backtest

    def spy(config, policies, seeds, **kw):
        calls.append((config, np.asarray(seeds).copy(), kw))
        return real(config, policies, seeds, **kw)

    def no_period(*args, **kwargs):
        raise AssertionError("the tuner replayed a period")

    monkeypatch.setattr(backtest_mod, "run_backtest", spy)
    monkeypatch.setattr(backtest_mod, "run_period_backtest", no_period)
    results = tune_baselines(short, list(SMALL), 3, grids=SMALL)
    assert len(calls) == 2
    for config, seeds, kw in calls:
        np.testing.assert_array_equal(seeds, VALIDATION_SEED_BASE + np.arange(3))
        assert kw["scenario_set"] == "validation" and kw.get("period") is None
        assert config.market.source == "synthetic"
        assert kw["paths"].n_paths == 3
    assert set(results) == set(SMALL)
    with pytest.raises(ValueError, match="replayed period"):
        tune_baselines(
            load_config(short, {"market.source": "replay"}), ["vol_target"], 1, grids=SMALL
        )


def test_tuner_picks_the_best_mean_validation_sharpe(short):
    results = tune_baselines(short, ["vol_target"], 4, grids=SMALL)
    res = results["vol_target"]
    assert len(res.scores) == 4 and res.best_score == max(res.scores)
    # recompute every point independently through the public backtest
    seeds = scenario_seeds("validation", 4)
    for point, score in zip(res.points, res.scores, strict=True):
        policy = make_policy("vol_target", short, **point)
        table = run_backtest(short, [policy], seeds, progress=False).metrics_table()
        assert table["sharpe_ratio"].mean() == pytest.approx(score, rel=1e-12)
    record = res.record()
    assert record["scenarios"] == 4 and record["grid"] == SMALL["vol_target"]
    assert record["chosen"] == res.chosen and record["scenario_set"] == "validation"
    growth = tune_baselines(short, ["equal_weight_band"], 2, grids=SMALL, objective="log_growth")
    g = growth["equal_weight_band"]
    rec = run_backtest(
        short,
        [make_policy("equal_weight_band", short, **g.chosen)],
        scenario_seeds("validation", 2),
        progress=False,
    ).records["equal_weight_band"]
    # log growth by hand: log(V_T / V_0) / (20 days / 365)
    by_hand = np.log(rec.value_usd[:, -1] / rec.value_usd[:, 0]) * 365 / 20
    np.testing.assert_allclose(annual_log_growth(rec), by_hand, rtol=1e-12)
    assert g.best_score == pytest.approx(by_hand.mean(), rel=1e-12)


YAML_TEXT = """\
# head comment
policies_to_run: [a]
policies:
  first: &shared
    lookback: 61            # window
    rebalance_every: 7      # weekly
  second:
    <<: *shared
    risk_aversion: 2.0      # gamma
  third: {}
periods:                   # kept
  p: {start: 2022-01-01, end: 2022-02-01}
"""


def test_yaml_edit_keeps_comments_other_policies_and_sections():
    rec = {"date": "2025-01-02", "grid": {"lookback": [31, 61]}, "scores": [1.0, 2.0]}
    text = update_evaluation_yaml(YAML_TEXT, {"first": {"lookback": 31}}, {"first": rec})
    data = yaml.safe_load(text)
    assert data["policies"]["first"] == {"lookback": 31, "rebalance_every": 7}
    # the block that merged first's anchor keeps its old values, written out with the comments
    assert data["policies"]["second"] == {
        "lookback": 61,
        "rebalance_every": 7,
        "risk_aversion": 2.0,
    }
    assert "    lookback: 61            # window" in text
    assert "    rebalance_every: 7      # weekly" in text  # unchanged in first: comment kept
    assert "# head comment" in text and "periods:                   # kept" in text
    assert data["periods"] == yaml.safe_load(YAML_TEXT)["periods"]
    assert data["tuning"]["first"] == rec
    # tuning again: one mark per block, the previous records of other policies are kept
    rec2 = rec | {"date": "2025-02-03"}
    again = update_evaluation_yaml(
        text, {"second": {"risk_aversion": 5.0}, "new": {"x": 1}}, {"second": rec2, "new": rec2}
    )
    assert again.count(TUNED_MARK) == 3
    data = yaml.safe_load(again)
    assert data["policies"]["second"]["risk_aversion"] == 5.0 and data["policies"]["new"] == {
        "x": 1
    }
    assert set(data["tuning"]) == {"first", "second", "new"}
    assert data["policies"]["third"] == {}
    with pytest.raises(ValueError, match="no top-level 'policies:'"):
        update_evaluation_yaml("a: 1\n", {"x": {}}, {"x": rec})


def test_yaml_edit_of_the_real_evaluation_config():
    from defialloc.agents.baselines.policies import DEFAULT_PARAMS_PATH

    text = DEFAULT_PARAMS_PATH.read_text()
    old = yaml.safe_load(text)["policies"]
    rec = {"date": "2025-01-02"}
    chosen = {"min_variance": {"lookback": 31}, "carry": {"hedge_ratio": 0.5}}
    new = yaml.safe_load(update_evaluation_yaml(text, chosen, {k: rec for k in chosen}))
    for name, params in old.items():
        assert new["policies"][name] == {**params, **chosen.get(name, {})}, name


def test_cli_tunes_and_writes_the_yaml(tmp_path):
    from defialloc.agents.baselines.policies import DEFAULT_PARAMS_PATH

    out = tmp_path / "eval.yaml"
    out.write_text(DEFAULT_PARAMS_PATH.read_text())
    result = CliRunner().invoke(
        app,
        [
            "tune-baselines",
            "--scenarios",
            "2",
            "--baselines",
            "equal_weight_band",
            "--out",
            str(out),
            "env.horizon=10",
        ],
    )
    assert result.exit_code == 0, result.output
    ev = load_evaluation_config(out)
    record = ev.tuning["equal_weight_band"]
    assert record["scenarios"] == 2 and record["scenario_set"] == "validation"
    assert ev.policies["equal_weight_band"]["no_trade_band"] == record["chosen"]["no_trade_band"]
    bad = CliRunner().invoke(
        app, ["tune-baselines", "--baselines", "oracle_mean_variance", "--out", str(out)]
    )
    assert bad.exit_code == 2 and "never tuned" in bad.output
    spot = CliRunner().invoke(
        app, ["tune-baselines", "--baselines", "carry", "--out", str(out), "--scenarios", "1"]
    )
    assert spot.exit_code == 2 and "perps venue" in spot.output
