"""The papercuts a new user hits: one default experiment, compare listing the experiments it finds,
redacted tracking URIs, progress output for pipes, closest-key suggestions, plain help,
``--print-config`` and tables that honour ``COLUMNS``."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from defialloc.agents.mlflow_store import default_experiment, display_tracking_uri, redact_uri
from defialloc.envs.config import REPO_ROOT, ConfigError, load_config
from defialloc.evaluation.progress import LineProgress, NullProgress, progress_bar
from defialloc.evaluation.table_fit import fitted_tables, output_console, print_fitted
from defialloc.training.cli import app
from defialloc.training.config import load_train_config

runner = CliRunner()
CI = re.compile(r"-?[\d,.]+%? \[-?[\d,.]+%?, -?[\d,.]+%?\]")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_one_default_experiment_for_every_command(monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert default_experiment() == "defialloc"
    assert load_train_config("configs/train/ppo.yaml").mlflow.experiment == "defialloc"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-a")
    assert default_experiment() == "team-a"
    for path in (
        "configs/train/ppo.yaml",
        "configs/train/sac_defi.yaml",
        "configs/train/demo_ppo.yaml",
    ):
        assert load_train_config(path).mlflow.experiment == "team-a", path
    # every command's --experiment defaults to it (none hard-codes another name)
    for command in ("compare", "evaluate", "paper", "export", "curves"):
        help_text = flat(runner.invoke(app, [command, "--help"]).output)
        assert "$MLFLOW_EXPERIMENT_NAME, else defialloc" in help_text, command


@pytest.mark.slow  # logs an evaluation and runs compare twice (about 40 s on 2 busy cores)
def test_compare_of_a_missing_experiment_lists_the_ones_with_evaluations(tmp_path, monkeypatch):
    from defialloc.evaluation.backtest import run_backtest
    from defialloc.evaluation.tracking import log_backtest

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cfg = load_config({"market": {}, "env": {"horizon": 30}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_backtest(cfg, ["equal_weight", "min_variance"], np.arange(2_000_000, 2_000_006),
                              progress=False, scenario_set="test")  # fmt: skip
    log_backtest(result, "defialloc-demo", "demo-eval", plots=False, n_boot=100)
    missing = runner.invoke(app, ["compare"])  # the default experiment: nothing there
    assert missing.exit_code != 0 and "Traceback" not in missing.output
    assert "defialloc-demo (1 evaluation run)" in flat(missing.output)
    # COLUMNS in a pipe: every line within 80 columns, short labels, CI cells on one line, names whole
    narrow = runner.invoke(app, ["compare", "--experiment", "defialloc-demo", "--n-boot", "100"],
                           env={"COLUMNS": "80"})  # fmt: skip
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "Sharpe" in narrow.output and "…" not in narrow.output
    assert all(any(f" {p} " in line for line in lines) for p in ("equal_weight", "min_variance"))
    assert sum(len(CI.findall(line)) for line in lines) >= 2 * 2 * 5  # 2 policies x mean/IQM x 5


def test_fitted_tables_split_columns_to_the_width_and_keep_cells_whole():
    headers = ["policy", *(f"metric {i}" for i in range(6))]
    rows = [[name, *(f"{i}.12 [-{i}.34, {i}.56]" for i in range(6))]
            for name in ("equal_weight", "a_rather_long_policy_name")]  # fmt: skip
    console = Console(file=io.StringIO(), width=80, record=True)
    tables = fitted_tables("t", headers, rows, 80, console)
    assert len(tables) > 1 and all(len(t.columns) >= 2 for t in tables)
    print_fitted(console, "t", headers, rows)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for row in rows:
        for cell in row:
            assert cell in text  # every cell, whole, on one line
    wide = Console(file=io.StringIO(), width=200)
    assert len(fitted_tables("t", headers, rows, 200, wide)) == 1


def test_output_console_honours_columns_in_a_pipe(monkeypatch):
    monkeypatch.setenv("COLUMNS", "72")
    assert output_console().width == 72
    monkeypatch.delenv("COLUMNS")
    assert output_console().width == 160  # a log file: wide, not rich's 80


def test_tracking_uris_are_printed_without_credentials(monkeypatch):
    uri = "https://alice:s3cr3t@mlflow.example.com/path?token=abc&x=1"
    shown = redact_uri(uri)
    assert "s3cr3t" not in shown and "abc" not in shown and "alice" in shown and "x=1" in shown
    assert redact_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert redact_uri("http://bob@host:5000") == "http://bob@host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert "s3cr3t" not in display_tracking_uri()


def test_progress_outside_a_terminal_is_whole_lines_at_most_every_interval():
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(1000, "backtest", stream=out, interval_s=10.0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.5  # 50 s of work in 100 updates
        bar.update(10)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 5 <= len(lines) <= 6  # one per 10 s, plus the final one
    assert lines[-1].startswith("backtest: 1,000/1,000 steps (100%)")
    assert isinstance(progress_bar(10, "x", stream=io.StringIO()), LineProgress)  # not a TTY
    assert isinstance(progress_bar(10, "x", enabled=False), NullProgress)


def test_backtest_progress_into_a_pipe_has_no_carriage_returns(capfd):
    from defialloc.evaluation.backtest import run_backtest

    cfg = load_config({"market": {}, "env": {"horizon": 20}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_backtest(cfg, ["equal_weight"], np.arange(2_000_000, 2_000_002), progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err and "backtest: 20/20 steps (100%)" in err


def test_misspelled_keys_get_the_closest_key():
    with pytest.raises(ConfigError, match=r"env\.horizn: unknown key .*did you mean 'horizon'\?"):
        load_config({"env": {"horizn": 5}})
    with pytest.raises(ConfigError, match=r"did you mean 'max_drawdown'\?"):
        load_config({"env": {"kill_switch": {"max_drawdwn": 0.1}}})
    with pytest.raises(ConfigError, match=r"did you mean 'total_timesteps'\?"):
        load_train_config("configs/train/ppo.yaml", {"total_timestep": 10})
    with pytest.raises(ConfigError, match=r"keys here: .*horizon"):  # nothing close: the keys
        load_config({"env": {"zzzzzz": 5}})


@pytest.mark.parametrize("command", ["train", "evaluate", "paper", "export", "simulate", "compare"])
def test_help_is_plain_text_without_placeholders(command):
    out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert out.exit_code == 0
    assert "<bool>" not in out.output and "│" not in out.output and "╭" not in out.output
    assert "--help" in out.output


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["simulate", "env.horizon=17"], ("env", "horizon", 17)),
        (["evaluate", "env.horizon=17"], ("simulation", "env", "horizon", 17)),
        (
            ["train", "-c", "configs/train/ppo.yaml", "total_timesteps=1234"],
            ("total_timesteps", 1234),
        ),
        (["tune-baselines", "env.horizon=17"], ("env", "horizon", 17)),
        (
            ["experiment", "-c", "configs/experiments/reference.yaml"],
            ("experiment", "defialloc-reference"),
        ),
        (["calibrate-cascades"], ("env", "lending", "enabled", True)),
        (["bench", "env", "env.horizon=17"], ("env", "horizon", 17)),
        (["bench", "baselines", "-c", "configs/default.yaml"], ("*", "env", "warmup", 61)),
        (
            ["bench", "train", "--algo", "ppo", "total_timesteps=1234"],
            ("ppo", "total_timesteps", 1234),
        ),
    ],
)
def test_print_config_prints_the_resolved_config_and_runs_nothing(args, key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: no mlflow.db, no reports
    args = [str(REPO_ROOT / a) if a.startswith("configs/") else a for a in args]
    if args[:2] == ["bench", "train"]:
        args += ["--ppo-config", str(REPO_ROOT / "configs/train/ppo.yaml")]
    out = runner.invoke(app, [*args, "--print-config"])
    assert out.exit_code == 0, out.output
    data = yaml.safe_load(out.output)
    *path, value = key
    for part in path:
        data = next(iter(data.values())) if part == "*" else data[part]  # "*": the only entry
    assert data == value
    assert list(tmp_path.iterdir()) == []


def test_training_progress_outside_a_terminal_is_plain_lines(capsys):
    from defialloc.training.callbacks import LineProgressCallback

    callback = LineProgressCallback(1000, interval_s=0.0)
    callback.num_timesteps = 200  # a resumed run starts at its checkpoint's step
    callback._on_training_start()
    for steps in (400, 700, 1000):
        callback.num_timesteps = steps
        callback._on_step()
    callback._on_training_end()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[0].startswith("training: 400/1,000 env steps (40%)")
    assert err.splitlines()[-1].startswith("training: 1,000/1,000 env steps (100%)")
