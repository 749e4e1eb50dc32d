"""Learning curves of an experiment's training runs, read back from MLflow.

Every training run logs its validation metric as ``val/<metric>`` at the env step it was measured
(training/callbacks.py, on the validation scenario seeds only). :func:`load_curves` collects them for
the runs of an experiment (tag ``kind = training``), labelled by algorithm and market (the run's
``simulation.env.lending.enabled`` / ``perps.enabled`` params); :func:`plot_learning_curves` draws, per
label, the mean over training seeds with the range of the seeds as a band. ``defialloc curves``
writes the PNG (and logs it to MLflow as an artifact of a summary run when asked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from defialloc.evaluation.tracking import tracking_uri


def _market(params: dict[str, str]) -> str:
    lending = params.get("simulation.env.lending.enabled") == "true"
    perps = params.get("simulation.env.perps.enabled") == "true"
    return "DeFi" if lending or perps else "spot"


def load_curves(experiment: str, metric: str = "mean_log_growth") -> pd.DataFrame:
    """``(run_id, run_name, label, step, value)`` rows of ``val/<metric>`` for every training run of
    ``experiment``; ``label`` is ``"<ALGO> <market>"``.

    Raises:
        ValueError: the experiment does not exist or holds no training run with that metric.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"experiment {experiment!r} not found at {tracking_uri()}")
    runs = client.search_runs([found.experiment_id], "tags.kind = 'training'", max_results=5000)
    rows = []
    key = f"val/{metric}"
    for run in runs:
        label = f"{run.data.tags.get('algo', '?').upper()} {_market(run.data.params)}"
        for m in client.get_metric_history(run.info.run_id, key):
            rows.append(
                {
                    "run_id": run.info.run_id,
                    "run_name": run.info.run_name,
                    "label": label,
                    "step": int(m.step),
                    "value": float(m.value),
                }
            )
    if not rows:
        raise ValueError(f"no training run of {experiment!r} logged {key}")
    return pd.DataFrame(rows).sort_values(["label", "run_id", "step"], ignore_index=True)


def curve_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per label and step: mean, min and max over the runs measured there, and their count."""
    grouped = curves.groupby(["label", "step"])["value"]
    return grouped.agg(["mean", "min", "max", "count"]).reset_index()


def plot_learning_curves(curves: pd.DataFrame, metric: str = "mean_log_growth"):  # noqa: ANN201
    """One panel per label: the mean validation score over training seeds, the seeds' range as a
    band, and every seed as a thin line (a Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = curve_summary(curves)
    labels = list(dict.fromkeys(summary["label"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(5.0 * len(labels), 4.0), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        part = summary[summary["label"] == label]
        for _, run in curves[curves["label"] == label].groupby("run_id"):
            ax.plot(run["step"], run["value"], lw=0.6, alpha=0.4, color="grey")
        ax.plot(
            part["step"], part["mean"], lw=1.8, label=f"mean over {int(part['count'].max())} seeds"
        )
        ax.fill_between(part["step"], part["min"], part["max"], alpha=0.2, lw=0)
        ax.set(title=label, xlabel="env steps (decisions)", ylabel=f"validation {metric}")
        ax.axhline(0.0, color="black", lw=0.5, ls=":")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_learning_curves(
    experiment: str, out: str | Path, metric: str = "mean_log_growth"
) -> Path:
    """Load, plot and save the curves of ``experiment`` to ``out`` (PNG); returns the path."""
    curves = load_curves(experiment, metric)
    fig = plot_learning_curves(curves, metric)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def flattening(curves: pd.DataFrame, tail: float = 0.3) -> pd.DataFrame:
    """Per label: the mean score over the last ``tail`` share of the steps minus the one over the
    ``tail`` before it (a small or negative change: the curve has flattened), and the best step."""
    out = []
    for label, part in curve_summary(curves).groupby("label"):
        steps = part["step"].to_numpy()
        last = steps >= steps.max() * (1 - tail)
        before = (steps >= steps.max() * (1 - 2 * tail)) & ~last
        change = (
            float(part["mean"][last].mean() - part["mean"][before].mean())
            if before.any()
            else np.nan
        )
        best = int(part["step"].iloc[int(np.argmax(part["mean"].to_numpy()))])
        out.append({"label": label, "late change": change, "best step": best})
    return pd.DataFrame(out)
