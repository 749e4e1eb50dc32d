"""Learning curves read back from MLflow: labelled by algorithm and market, mean over seeds, plotted."""

from __future__ import annotations

import mlflow
import pytest

from defialloc.evaluation.learning_curves import (
    curve_summary,
    flattening,
    load_curves,
    plot_learning_curves,
    write_learning_curves,
)


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("curves")
    client = mlflow.MlflowClient()
    for seed, scale in ((0, 1.0), (1, 2.0)):
        for algo, lending in (("ppo", "true"), ("sac", "false")):
            run = client.create_run(
                exp, tags={"kind": "training", "algo": algo}, run_name=f"{algo}{seed}"
            )
            client.log_param(run.info.run_id, "simulation.env.lending.enabled", lending)
            for step, value in ((100, 0.01), (200, 0.03), (300, 0.04), (400, 0.04)):
                client.log_metric(run.info.run_id, "val/mean_log_growth", scale * value, step=step)
    # an evaluation run is not a curve
    client.create_run(exp, tags={"kind": "evaluation"})
    return "curves"


def test_curves_are_labelled_averaged_and_plotted(experiment, tmp_path):
    curves = load_curves(experiment)
    assert set(curves["label"]) == {"PPO DeFi", "SAC spot"}
    summary = curve_summary(curves)
    row = summary[(summary.label == "PPO DeFi") & (summary.step == 200)].iloc[0]
    assert row["mean"] == pytest.approx(0.045) and row["min"] == 0.03 and row["max"] == 0.06
    assert row["count"] == 2
    flat = flattening(curves).set_index("label")
    assert flat.loc["PPO DeFi", "best step"] == 300  # the first step of the plateau
    # the last 30 % of the steps (300, 400: mean 0.06) against the 30 % before (200: 0.045)
    assert flat.loc["PPO DeFi", "late change"] == pytest.approx(0.015)
    fig = plot_learning_curves(curves)
    assert [ax.get_title() for ax in fig.axes] == ["PPO DeFi", "SAC spot"]
    path = write_learning_curves(experiment, tmp_path / "c.png")
    assert path.stat().st_size > 10_000


def test_missing_experiment_or_metric_is_a_clear_error(experiment):
    with pytest.raises(ValueError, match="not found"):
        load_curves("nope")
    with pytest.raises(ValueError, match="val/sharpe"):
        load_curves(experiment, "sharpe")
