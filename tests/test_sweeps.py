"""Sweeps without Ray: the sweep file, trial expansion, the Optuna source, store checks, the result
table against hand-computed statistics, and the best config (all fast, no training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from defialloc.envs.config import ConfigError
from defialloc.training.config import load_train_config
from defialloc.training.sweeps import results
from defialloc.training.sweeps.config import ParamSpec, load_sweep
from defialloc.training.sweeps.tracking import (
    TrialRun,
    check_store_for_address,
    check_store_for_nodes,
    redact_uri,
    single_machine_store,
)
from defialloc.training.sweeps.trials import (
    WAIT,
    FixedTrials,
    OptunaTrials,
    grid_configurations,
    random_configurations,
    specs_for,
    sweep_source,
)


def _write(tmp_path: Path, **changes) -> Path:
    spec = {
        "sweep": "t",
        "config": "configs/train/ppo.yaml",
        "overrides": {"total_timesteps": 4096, "eval.every_steps": 1024},
        "seeds": [0, 1],
        "search": "grid",
        "space": {"ppo.learning_rate": {"values": [1e-4, 3e-4]}, "n_envs": {"values": [8, 16]}},
    }
    spec.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_shipped_smoke_sweep_loads_and_has_two_trials():
    sweep, base = load_sweep("configs/sweeps/smoke.yaml")
    assert sweep.n_configurations() * len(sweep.seeds) == 2
    assert base.eval.every_steps > 0


@pytest.mark.parametrize("path", sorted(Path("configs/sweeps").glob("*.yaml")), ids=str)
def test_every_shipped_sweep_loads_and_its_source_hands_out_every_trial(path):
    sweep, _ = load_sweep(path)
    source = sweep_source(sweep, sweep.sweep)
    keys = []
    while (spec := source.next_trial()) not in (None, WAIT):
        keys.append(spec.key)
        source.complete(spec, 0.0)
    assert len(set(keys)) == len(keys) == sweep.n_configurations() * len(sweep.seeds)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"space": {"ppo.learnin_rate": {"values": [1e-4]}}}, "space.ppo.learnin_rate"),
        ({"space": {"ppo.learning_rate": {"values": [2.0]}}}, "space.ppo.learning_rate = 2.0"),
        ({"space": {"ppo.learning_rate": {"uniform": [1e-4, 1e-3]}}}, "search = grid needs"),
        ({"search": "random"}, "needs num_samples"),
        (
            {"space": {"n_envs": {"integer": [8, 8]}}, "search": "random", "num_samples": 2},
            "low < high",
        ),
        ({"scheduler": {"kind": "asha", "grace_steps": 4096}}, "grace_steps"),
        ({"scheduler": {"kind": "hyperband", "grace_steps": 10}}, "scheduler.kind"),
        ({"overrides": {"ppo.learning_rate": 1e-4}}, "both set"),
    ],
)
def test_bad_sweep_files_name_the_key(tmp_path, changes, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_sweep(_write(tmp_path, **changes))
    assert needle in str(err.value)


def test_grid_is_the_product_on_every_seed_and_skips_finished(tmp_path):
    sweep, _ = load_sweep(_write(tmp_path))
    configs = grid_configurations(sweep.space)
    assert configs == [
        {"ppo.learning_rate": 1e-4, "n_envs": 8},
        {"ppo.learning_rate": 1e-4, "n_envs": 16},
        {"ppo.learning_rate": 3e-4, "n_envs": 8},
        {"ppo.learning_rate": 3e-4, "n_envs": 16},
    ]
    specs = specs_for(configs, sweep.seeds, "t")
    assert len({s.key for s in specs}) == 8 and {s.seed for s in specs} == {0, 1}
    assert len({s.config_id for s in specs}) == 4
    source = FixedTrials(specs, finished=[specs[0].key, specs[5].key])
    handed = []
    while (spec := source.next_trial()) is not None:
        handed.append(spec.key)
    assert handed == [s.key for i, s in enumerate(specs) if i not in (0, 5)]


def test_random_draws_are_reproducible_and_in_range():
    space = {
        "a": ParamSpec(loguniform=(1e-5, 1e-2)),
        "b": ParamSpec(integer=(2, 4)),
        "c": ParamSpec(values=["x", "y"]),
    }
    first = random_configurations(space, 200, seed=3)
    assert first == random_configurations(space, 200, seed=3)
    assert first != random_configurations(space, 200, seed=4)
    a = np.array([c["a"] for c in first])
    assert a.min() >= 1e-5 and a.max() <= 1e-2
    # log-uniform: about half the draws below the geometric midpoint
    assert 0.35 < np.mean(a < math.sqrt(1e-5 * 1e-2)) < 0.65
    assert {c["b"] for c in first} == {2, 3, 4} and {c["c"] for c in first} == {"x", "y"}


def _optuna_sweep(tmp_path, n=4):
    path = _write(
        tmp_path,
        search="optuna",
        num_samples=n,
        space={"ppo.learning_rate": {"loguniform": [1e-5, 1e-2]}},
    )
    return load_sweep(path)[0]


def test_optuna_runs_each_configuration_on_every_seed_and_hears_the_mean(tmp_path):
    sweep = _optuna_sweep(tmp_path)
    source = OptunaTrials(sweep, "t")
    seen = []
    while (spec := source.next_trial()) is not None:
        assert spec != WAIT  # one at a time: every trial completes before the next is asked
        seen.append(spec)
        source.complete(
            spec, -abs(math.log10(spec.overrides["ppo.learning_rate"]) + 3.5) + spec.seed
        )
    assert len(seen) == 8 and len({s.config_id for s in seen}) == 4
    trials = source.study.trials
    assert len(trials) == 4
    for t in trials:  # told the mean over seeds 0 and 1: f + 0.5
        f = -abs(math.log10(t.params["ppo.learning_rate"]) + 3.5)
        assert t.value == pytest.approx(f + 0.5)


def test_optuna_waits_for_running_seeds_and_resumes_without_rerunning(tmp_path):
    sweep = _optuna_sweep(tmp_path, n=2)
    source = OptunaTrials(sweep, "t")
    a0, a1, b0, b1 = (source.next_trial() for _ in range(4))
    assert source.next_trial() == WAIT  # both configurations asked, none told
    source.complete(a0, 1.0)
    source.complete(a1, 2.0)
    # a resumed driver: configuration a done, b half done
    finished = {
        a0.key: (a0.overrides, 0, 1.0),
        a1.key: (a1.overrides, 1, 2.0),
        b0.key: (b0.overrides, 0, 0.5),
    }
    resumed = sweep_source(sweep, "t", finished)
    rest = []
    while (spec := resumed.next_trial()) not in (None, WAIT):
        rest.append(spec)
    assert [(s.config_id, s.seed) for s in rest] == [(b1.config_id, 1)]
    resumed.complete(rest[0], 1.5)
    assert resumed.next_trial() is None
    values = sorted(t.value for t in resumed.study.trials)
    assert values == [pytest.approx(1.0), pytest.approx(1.5)]  # b: mean(0.5, 1.5); a: mean(1, 2)


def test_store_checks_refuse_sqlite_off_this_machine():
    sqlite = "sqlite:////data/mlflow.db"
    assert single_machine_store(sqlite) and single_machine_store("/tmp/mlruns")
    assert not single_machine_store("http://10.0.0.5:5000")
    check_store_for_address(sqlite, None)
    check_store_for_address(sqlite, "127.0.0.1:6379")
    check_store_for_address("http://10.0.0.5:5000", "10.0.0.7:6379")
    with pytest.raises(ConfigError, match="mlflow server") as err:
        check_store_for_address(sqlite, "10.0.0.7:6379")
    assert "10.0.0.7:6379" in str(err.value) and "--address" in str(err.value)
    with pytest.raises(ConfigError, match="mlflow server"):
        check_store_for_address(sqlite, "ray://10.0.0.7:10001")
    check_store_for_nodes(sqlite, ["127.0.0.1", "127.0.0.1"])
    check_store_for_nodes(sqlite, ["192.0.2.9"], this_machine=["192.0.2.9"])
    with pytest.raises(ConfigError, match="10.0.0.8"):
        check_store_for_nodes(sqlite, ["127.0.0.1", "10.0.0.8"])
    with pytest.raises(ConfigError, match="cannot reach"):  # a server on loopback: same problem
        check_store_for_nodes("http://127.0.0.1:5000", ["10.0.0.8"])
    check_store_for_nodes("http://10.0.0.5:5000", ["10.0.0.8"])


def test_printed_uris_hide_credentials():
    assert (
        redact_uri("http://alice:s3cret@mlflow.example:5000/x")
        == "http://***@mlflow.example:5000/x"
    )
    assert "tok" not in redact_uri("https://tok@host/")
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def _run(cid: str, seed: int, score: float, status: str = "completed") -> TrialRun:
    return TrialRun(f"r-{cid}-{seed}", f"{cid}-seed{seed}", cid, f"lr={cid}", {"lr": cid}, seed,
                    status, score, seed)  # fmt: skip


def _hand_dsr(returns: np.ndarray, sr_trials: list[float]) -> float:
    """Bailey & Lopez de Prado, written out independently of evaluation.statistics."""
    sr = returns.mean() / returns.std(ddof=1)
    z = returns - returns.mean()
    m2 = np.mean(z**2)
    skew, kurt = np.mean(z**3) / m2**1.5, np.mean(z**4) / m2**2
    n, v, g = len(sr_trials), np.var(sr_trials, ddof=1), 0.5772156649015329
    sr0 = math.sqrt(v) * (
        (1 - g) * stats.norm.ppf(1 - 1 / n) + g * stats.norm.ppf(1 - 1 / (n * math.e))
    )
    denom = math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    return float(stats.norm.cdf((sr - sr0) * math.sqrt(len(returns) - 1) / denom))


def test_result_table_matches_hand_computed_statistics():
    rng = np.random.default_rng(0)
    per = {  # (config, seed) -> per-scenario log growth (8 scenarios) and returns (8 x 30)
        (c, s): (rng.normal(mu, 0.1, 8), rng.normal(mu / 30, 0.01, (8, 30)))
        for c, mu in (("a", 0.05), ("b", 0.0), ("c", -0.02))
        for s in (0, 1)
    }
    scores = {
        ("a", 0): 0.30,
        ("a", 1): 0.20,
        ("b", 0): 0.10,
        ("b", 1): 0.12,
        ("c", 0): 0.9,
        ("c", 1): 0.1,
    }
    trials = [
        results.TrialScores(
            _run(c, s, scores[(c, s)], "early_stopped" if c == "c" else "completed"), g, r
        )
        for (c, s), (g, r) in per.items()
    ]
    table, n = results.result_table(trials, periods_per_year=365.0)
    assert n == 6  # every trial actually run counts, the early-stopped ones too
    assert list(table["config_id"]) == ["c", "a", "b"]  # by mean score
    row = table.set_index("config_id").loc["a"]
    assert row["score"] == pytest.approx(0.25)
    flat = np.sort(np.concatenate([per[("a", 0)][0], per[("a", 1)][0]]))  # 16 values
    assert row["iqm"] == pytest.approx(flat[4:12].mean())  # drop floor(16/4) = 4 at each end
    assert row["mean"] == pytest.approx(flat.mean())
    assert row["iqm_low"] < row["iqm"] < row["iqm_high"]
    pooled = np.concatenate([per[("a", 0)][1].ravel(), per[("a", 1)][1].ravel()])
    sr_trials = [r.ravel().mean() / r.ravel().std(ddof=1) for _, r in per.values()]
    assert row["dsr"] == pytest.approx(_hand_dsr(pooled, sr_trials), rel=1e-9)
    assert row["sharpe_ann"] == pytest.approx(pooled.mean() / pooled.std(ddof=1) * math.sqrt(365))
    # the winner must have completed: c scores highest but every trial of it was stopped early
    assert results.winner(table)["config_id"] == "a"


def test_a_single_trial_has_no_deflated_sharpe_and_missing_data_shows_a_dash():
    g, r = np.zeros(4) + 0.1, np.full((4, 10), 0.001) + np.arange(10) * 1e-4
    table, n = results.result_table(
        [
            results.TrialScores(_run("a", 0, 0.1), g, r),
            results.TrialScores(_run("b", 0, 0.2), None, None),
        ],
        365.0,
    )
    assert n == 1 and table["dsr"].isna().all()
    header, cells = results.display_rows(table, "mean_log_growth")
    assert cells[0][0] == "lr=b" and cells[0][4].startswith("-")


def test_best_config_loads_back_with_the_winners_values():
    base = load_train_config("configs/train/ppo.yaml", {"total_timesteps": 4096})
    text = results.best_config_yaml(
        base.resolved(), {"ppo.learning_rate": 1e-3, "env.horizon": 60}, "winner\nline two"
    )
    assert text.startswith("# winner\n# line two\n")
    cfg = load_train_config(yaml.safe_load(text))
    assert cfg.ppo.learning_rate == 1e-3 and cfg.simulation.env.horizon == 60
    assert cfg.total_timesteps == 4096 and cfg.eval.final == base.eval.final


def test_bench_sweep_refuses_bad_worker_counts_before_anything_runs():
    from typer.testing import CliRunner

    from defialloc.training.cli import app
    from defialloc.training.sweeps.bench import bench_sweep

    with pytest.raises(ConfigError, match="--workers"):
        bench_sweep("configs/sweeps/smoke.yaml", [1, 0])
    out = CliRunner().invoke(app, ["bench", "sweep", "--workers", "1,two"])
    assert out.exit_code == 2 and "--workers" in out.output


def test_sweep_print_config_shows_the_sweep_and_its_base_and_runs_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from defialloc.envs.config import REPO_ROOT
    from defialloc.training.cli import app

    monkeypatch.chdir(tmp_path)  # nothing may be written: no mlflow.db, no reports
    path = str(REPO_ROOT / "configs/sweeps/smoke.yaml")
    out = CliRunner().invoke(app, ["sweep", "--config", path, "n_envs=8", "--print-config"])
    assert out.exit_code == 0, out.output
    data = yaml.safe_load(out.output)
    assert data["sweep"]["sweep"] == "smoke" and data["base"]["n_envs"] == 8
    assert data["base"]["total_timesteps"] == 16384  # the sweep file's shared override
    assert list(tmp_path.iterdir()) == []


def test_missing_sweeps_extra_is_refused_with_the_install_command(monkeypatch):
    import importlib.util

    from defialloc.envs.config import ConfigError
    from defialloc.training.sweeps.config import require_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[sweeps\]'"):
        require_extra("ray", "--backend ray")
    require_extra("numpy", "anything")  # installed: no error
