"""The MLflow-native side of an evaluation: one child run per policy, the scenario set as a dataset,
the comparison as a table.

MLflow's runs table, compare view and chart view compare RUNS on metrics of the same NAME. So an
evaluation (the parent run of ``evaluation/tracking.py``) gets one nested child run per policy:

- run name = the policy's label; tags ``defialloc.policy``, ``defialloc.policy_kind`` (``agent``,
  ``baseline`` or ``reference``: an upper reference such as the oracle or the ceiling, never a
  yardstick), ``defialloc.kind = evaluation_policy`` and the parent's scenario set and config hash;
- params: the policy's resolved parameters (flattened, ``window``, ``max_weight``, ...; the
  training run for an agent) and the scenario set, seeds and config hash;
- metrics under plain names, the mean across scenarios of each metric column (``sharpe_ratio``,
  ``max_drawdown``, ``cost_total_usd``, ``liquidations_count``, ``ruined_share``, ...), so selecting
  the children and pressing Compare puts the agent next to the baselines;
- the scenario set as an MLflow dataset input (``mlflow.log_input``: one row per scenario with its
  seed, or the replayed period's dates), also on the parent;
- a description (``mlflow.note.content``).

The parent also logs :func:`comparison_table` with ``mlflow.log_table``: per policy, the mean and
95% stratified-bootstrap CI of the headline metrics, P(better than the best feasible baseline) with
its CI, PSR and DSR (the statistics of ``defialloc compare``, ``evaluation/report.py``).

:func:`save_comparison_view` stores a view of MLflow's runs table on the experiment (the tag
``mlflow.sharedViewState.<parent run id>`` that MLflow's UI writes for "share view"): the policy runs
of this evaluation, sorted by Sharpe, with the headline metric columns and the policy kind;
:func:`comparison_view_url` is the link that opens it. MLflow's UI reads the tag; nothing else does
(a UI version without shared views shows its plain runs table).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from defialloc.agents.baselines.policies import BASELINES, UPPER_REFERENCES

if TYPE_CHECKING:
    from defialloc.evaluation.backtest import BacktestResult

POLICY_TAG = "defialloc.policy"
#: on every policy run: the evaluation's (parent) run id
PARENT_TAG = "defialloc.evaluation_run"
POLICY_KIND_TAG = "defialloc.policy_kind"
CHILD_KIND = "evaluation_policy"
COMPARISON_TABLE = "comparison_table.json"
#: metrics of the comparison table (means and CIs), as in the terminal table of `compare`
TABLE_METRICS = (
    "sharpe_ratio",
    "annual_return",
    "max_drawdown",
    "conditional_value_at_risk",
    "cost_total_usd",
)
#: columns of the metrics table that are not metrics
_NOT_METRICS = {"policy", "scenario", "seed", "run_id"}


def policy_kind(label: str) -> str:
    """``reference`` (an upper reference), ``baseline`` (a feasible baseline) or ``agent``."""
    if label in UPPER_REFERENCES:
        return "reference"
    return "baseline" if label in BASELINES else "agent"


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested parameters -> ``{"a.b": "value"}``; lists and numbers become their JSON text."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_params(value, f"{prefix}.{key}" if prefix else str(key)))
    elif prefix:
        out[prefix] = data if isinstance(data, str) else json.dumps(data, default=str)
    return out


def policy_metrics(table: pd.DataFrame, policy: str) -> dict[str, float]:
    """Mean across scenarios of every numeric column of ``policy``'s rows (NaN scores left out).

    ``ruined`` (a flag per scenario) becomes ``ruined_share``, the share of scenarios ruined.
    """
    rows = table[table["policy"] == policy]
    out: dict[str, float] = {}
    for col in rows.columns:
        if col in _NOT_METRICS or rows[col].dtype.kind not in "biuf":
            continue
        values = rows[col].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size:
            out["ruined_share" if col == "ruined" else col] = float(finite.mean())
    return out


def scenario_dataset(result: BacktestResult, config_hash: str) -> Any:
    """The scenario set as an MLflow dataset: one row per scenario (seed; or the period's dates)."""
    import mlflow.data

    k = len(result.seeds)
    frame = pd.DataFrame(
        {"scenario": np.arange(k), "seed": np.asarray(result.seeds, dtype=np.int64)}
    )
    if result.period:
        frame = frame.assign(
            period=result.period["name"], start=result.period["start"], end=result.period["end"]
        )
    frame = frame.assign(config_hash=config_hash, horizon=int(result.config.env.horizon))
    name = result.scenario_set if result.period else f"{result.scenario_set}-{k}"
    with _quiet_schema():
        return mlflow.data.from_pandas(frame, name=name)


@contextlib.contextmanager
def _quiet_schema() -> Iterator[None]:
    """MLflow warns that integer columns cannot hold missing values: seeds are never missing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column")
        yield


def log_scenarios(dataset: Any, result: BacktestResult) -> None:
    """``mlflow.log_input`` of the scenario set in the active run (context: test, validation, period)."""
    import mlflow

    with _quiet_schema():
        mlflow.log_input(dataset, context=result.scenario_set.split(":")[0])


def comparison_table(
    result: BacktestResult, table: pd.DataFrame, metric: str = "sharpe_ratio", n_boot: int = 2000
) -> pd.DataFrame:
    """One row per policy: kind, mean [95% CI] of :data:`TABLE_METRICS`, P(better than the best
    feasible baseline on ``metric``) with its CI, PSR and DSR (bootstrap seed 0, as `compare`)."""
    from defialloc.evaluation.report import _compare_group

    returns = {name: rec.returns.reshape(-1) for name, rec in result.records.items()}
    # the table's metrics only (the report's other metrics cost a bootstrap each)
    columns = ["policy", "seed", *dict.fromkeys([*TABLE_METRICS, metric])]
    keyed = table[[c for c in columns if c in table.columns]].assign(run_id="this")
    summary, improvement, tests, best = _compare_group(keyed, returns, metric, n_boot, 0)
    rows = []
    for policy in result.policies:
        row: dict[str, Any] = {"policy": policy, "kind": policy_kind(policy)}
        for m in TABLE_METRICS:
            if not summary.empty and (policy, m) in summary.index:
                cell = summary.loc[(policy, m)]
                row |= {m: cell["mean"], f"{m}_ci_low": cell["mean_ci_low"],
                        f"{m}_ci_high": cell["mean_ci_high"]}  # fmt: skip
        if policy == best:
            row["vs_best_baseline"] = "best baseline"
        elif policy in improvement.index:
            imp = improvement.loc[policy]
            row |= {"p_better_than_best": imp["prob_improvement"], "p_better_ci_low": imp["poi_ci_low"],
                    "p_better_ci_high": imp["poi_ci_high"], "diff_vs_best": imp["diff_mean"]}  # fmt: skip
            row["vs_best_baseline"] = best
        if policy in tests.index:
            row |= {"psr": tests.loc[policy, "psr"], "dsr": tests.loc[policy, "dsr"]}
        rows.append(row)
    return pd.DataFrame(rows)


#: the runs-table columns of the saved view (MLflow UI keys: ``<type>.`<name>```)
VIEW_METRICS = (
    "sharpe_ratio",
    "annual_return",
    "max_drawdown",
    "cost_total_usd",
    "liquidations_count",
)
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def comparison_view_state(parent_run_id: str) -> dict[str, Any]:
    """The runs-table view of one evaluation's policy runs (MLflow UI state, as JSON data)."""
    return {
        "searchFilter": f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        "orderByKey": "metrics.`sharpe_ratio`",
        "orderByAsc": False,
        "selectedColumns": [
            *(f"metrics.`{m}`" for m in VIEW_METRICS),
            f"tags.`{POLICY_KIND_TAG}`",
            f"tags.`{POLICY_TAG}`",
        ],
    }


def save_comparison_view(experiment_id: str, parent_run_id: str) -> str:
    """Store :func:`comparison_view_state` on the experiment; returns the view's share key."""
    from mlflow import MlflowClient

    key = parent_run_id
    state = json.dumps(comparison_view_state(parent_run_id))
    MlflowClient().set_experiment_tag(experiment_id, f"{SHARED_VIEW_TAG}{key}", state)
    return key


def comparison_view_url(ui_base: str, experiment_id: str, key: str) -> str:
    """The MLflow UI link of a saved view (``ui_base``: e.g. ``http://127.0.0.1:5000``)."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"


def describe_parent(result: BacktestResult, config_hash: str, best: str | None) -> str:
    """The evaluation's description (Markdown, shown on the run page and in the runs table)."""
    k = len(result.seeds)
    where = (
        f"the real period {result.period['name']} ({result.period['start']}..{result.period['end']})"
        if result.period
        else f"{k} {result.scenario_set} scenarios (seeds {result.seeds[0]}..{result.seeds[-1]})"
    )
    kinds = {p: policy_kind(p) for p in result.policies}
    agents = [p for p, kind in kinds.items() if kind == "agent"]
    return (
        f"Paired evaluation of {len(kinds)} policies on {where}, {result.config.env.horizon} steps, "
        f"config {config_hash}. One child run per policy (metrics under plain names): select the "
        f"children and press Compare. Agents: {', '.join(agents) or 'none'}; best feasible "
        f"baseline by Sharpe: {best or '-'}. Means, CIs and P(improvement): {COMPARISON_TABLE}; "
        "full report: defialloc compare."
    )


def describe_child(policy: str, metrics: dict[str, float], n: int) -> str:
    """A child run's description: what the policy is and its headline numbers."""
    kind = policy_kind(policy)
    what = {
        "agent": "trained agent",
        "baseline": "feasible baseline",
        "reference": "upper reference (knows the synthetic market's true state; not a strategy)",
    }[kind]
    sharpe = metrics.get("sharpe_ratio", float("nan"))
    mdd = metrics.get("max_drawdown", float("nan"))
    cost = metrics.get("cost_total_usd", float("nan"))
    return (
        f"{policy}: {what}. Mean over {n} scenario(s): Sharpe {sharpe:.2f}, max drawdown "
        f"{mdd:.1%}, costs {cost:,.0f} USD."
    )


def log_policy_runs(
    result: BacktestResult,
    table: pd.DataFrame,
    dataset: Any,
    shared_params: dict[str, Any],
    shared_tags: dict[str, str],
    agent_params: dict[str, Any],
) -> dict[str, str]:
    """One nested run per policy under the active (parent) run; returns ``{policy: run_id}``."""
    import mlflow

    parent = mlflow.active_run()
    assert parent is not None, "log_policy_runs runs inside the evaluation's parent run"
    ids: dict[str, str] = {}
    n = len(result.seeds)
    for policy in result.policies:
        kind = policy_kind(policy)
        metrics = policy_metrics(table, policy)
        metrics["elapsed_s"] = float(result.elapsed_s.get(policy, float("nan")))
        metrics |= {k: float(v) for k, v in result.diagnostics.get(policy, {}).items()}
        params = {**shared_params, **flatten_params(result.policy_params.get(policy, {}))}
        if kind == "agent":
            params |= {k: str(v) for k, v in agent_params.items()}
        tags = {**shared_tags, POLICY_TAG: policy, POLICY_KIND_TAG: kind,
                "defialloc.kind": CHILD_KIND, PARENT_TAG: parent.info.run_id}  # fmt: skip
        with mlflow.start_run(
            experiment_id=parent.info.experiment_id,  # not the default experiment
            run_name=policy,
            nested=True,
            tags=tags,
            description=describe_child(policy, metrics, n),
        ) as child:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
            log_scenarios(dataset, result)
            ids[policy] = child.info.run_id
    return ids
