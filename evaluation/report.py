"""Compare the evaluation runs of an MLflow experiment: terminal table and Markdown/HTML report.

Runs are grouped by (scenario set, seeds, config hash, baseline-parameter hash): only runs on the
same scenarios, with the same simulation config and the same baseline parameters, are paired. Within a group, each policy's per-scenario scores form an
``(n_runs, n_scenarios)`` array (runs = training seeds of an agent; identical duplicate runs of a
deterministic baseline are kept once). For every policy and metric the report gives the mean and the
IQM with 95% stratified-bootstrap CIs over scenarios; against the best FEASIBLE baseline (highest mean
of the primary metric; the upper references, ``oracle_mean_variance`` and ``ceiling``, are never the
yardstick) the paired mean
difference and the probability of improvement with CIs; and the probabilistic / deflated Sharpe
ratios of the per-step returns pooled over scenarios (DSR deflates for all policies in the group);
for synthetic groups the true ceiling's ex-ante growth and each policy's share of the
ceiling-over-equal-weight gap (``evaluation/report_ex_ante.py``). The Markdown/HTML text of the report is rendered by ``evaluation/report_render.py``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from defialloc.agents.baselines.policies import FEASIBLE_BASELINES, UPPER_REFERENCES
from defialloc.agents.mlflow_store import display_tracking_uri, experiments_with_runs
from defialloc.evaluation import statistics as st
from defialloc.evaluation.greek_ranges import greek_frame, print_greeks
from defialloc.evaluation.plots import PLOTS
from defialloc.evaluation.report_ex_ante import (
    CEILING,
    EX_ANTE,
    EXECUTED_CEILING,
    EXECUTED_LABEL,
    ORACLE_LABEL,
    ex_ante_frame,
    ex_ante_statements,
    print_ex_ante,
)
from defialloc.evaluation.report_render import _cell, write_report
from defialloc.evaluation.table_fit import label, print_fitted
from defialloc.evaluation.tracking import (
    EVALUATION_KIND,
    EVALUATION_TAG,
    METRICS_ARTIFACT,
    PLOTS_DIR,
    SERIES_ARTIFACT,
    tracking_uri,
)

HIGHER_IS_BETTER = {
    "sharpe_ratio": True,
    "sortino_ratio": True,
    "annual_return": True,
    "calmar_ratio": True,
    "total_return": True,
    "final_value_usd": True,
    "annual_volatility": False,
    "max_drawdown": False,
    "value_at_risk": False,
    "conditional_value_at_risk": False,
    "cornish_fisher_var": False,
    "cost_total_usd": False,
    "turnover_annual": False,
}
REPORT_METRICS = (
    "sharpe_ratio",
    "sortino_ratio",
    "annual_return",
    "annual_volatility",
    "max_drawdown",
    "calmar_ratio",
    "value_at_risk",
    "conditional_value_at_risk",
    "cost_total_usd",
    "turnover_annual",
)
ORACLE = "oracle_mean_variance"


@dataclass
class GroupComparison:
    """The comparison of every policy evaluated on one scenario set with one config."""

    scenario_set: str
    config_hash: str
    run_ids: list[str]
    n_scenarios: int
    primary_metric: str
    best_baseline: str | None
    summary: pd.DataFrame  # index (policy, metric): n, mean, CI, iqm, CI
    improvement: pd.DataFrame  # index policy: diff_mean, CI, prob_improvement, CI, significant
    sharpe_tests: pd.DataFrame  # index policy: n_returns, sharpe_annual, psr, dsr
    statements: list[str] = field(default_factory=list)
    plot_files: list[Path] = field(default_factory=list)
    #: policy -> (scenario runs that ended in ruin, scenario runs)
    ruined: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the DeFi risk and cost table (index policy; empty without lending/perps): see defi_table
    defi: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: synthetic groups: ex-ante growth and share of the ceiling-over-equal-weight gap per policy
    ex_ante: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: options configs: each policy's portfolio Greeks, mean [min, max] (evaluation/greek_ranges.py)
    greeks: pd.DataFrame = field(default_factory=pd.DataFrame)

    def ruined_cell(self, policy: str) -> str:
        """``"k/K"`` ruined scenario runs of ``policy`` (``"-"`` when unknown)."""
        if policy not in self.ruined:
            return "-"
        k, n = self.ruined[policy]
        return f"{k}/{n}"


def _download(run_id: str, artifact: str, dst: Path) -> Path:
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(dst)
        )
    )


def _scores(table: pd.DataFrame, policy: str, metric: str) -> np.ndarray:
    """``(n_runs, n_scenarios)`` scores of ``policy``; identical duplicate runs kept once."""
    sub = table[table["policy"] == policy]
    wide = sub.pivot_table(
        index="run_id", columns="seed", values=metric, aggfunc="first", sort=True
    )
    return wide.drop_duplicates().to_numpy(dtype=float)


def _finite_columns(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop scenarios where any policy's score is NaN (e.g. a Sharpe of a flat series)."""
    ok = np.logical_and.reduce([np.isfinite(s).all(axis=0) for s in scores.values()])
    return {k: v[:, ok] for k, v in scores.items()}


def _compare_group(
    table: pd.DataFrame, returns: dict[str, np.ndarray], metric: str, n_boot: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str | None]:
    policies = list(dict.fromkeys(table["policy"]))
    rows = []
    for m in [x for x in REPORT_METRICS if x in table.columns]:
        scores = _finite_columns({p: _scores(table, p, m) for p in policies})
        if next(iter(scores.values())).shape[1] == 0:
            continue
        summary = st.summarize_scores(scores, n_boot=n_boot, seed=seed)
        rows.append(summary.assign(metric=m).reset_index().set_index(["policy", "metric"]))
    summary = pd.concat(rows) if rows else pd.DataFrame()
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    primary = _finite_columns({p: sign * _scores(table, p, metric) for p in policies})
    baselines = [p for p in policies if p in FEASIBLE_BASELINES] or [
        p for p in policies if p not in UPPER_REFERENCES
    ]
    best = max(baselines, key=lambda p: float(primary[p].mean())) if baselines else None
    improvement = pd.DataFrame()
    if best is not None and primary[best].shape[1] > 0:
        imp = st.summarize_scores(primary, baseline=best, n_boot=n_boot, seed=seed)
        cols = ["diff_mean", "diff_ci_low", "diff_ci_high"]
        imp[cols] = sign * imp[cols]
        if sign < 0:  # the CI of -x has the bounds swapped
            imp[["diff_ci_low", "diff_ci_high"]] = imp[["diff_ci_high", "diff_ci_low"]].to_numpy()
        imp["diff_significant"] = [
            st.is_significant(tuple(r)) for r in imp[["diff_mean", *cols[1:]]].to_numpy()
        ]
        imp = imp.rename(columns={"significant": "poi_significant"}).drop(index=best)
        if primary[best].size < 2:  # one paired cell: a degenerate bootstrap proves nothing
            imp[["diff_significant", "poi_significant"]] = False
        improvement = imp[
            [
                *cols,
                "diff_significant",
                "prob_improvement",
                "poi_ci_low",
                "poi_ci_high",
                "poi_significant",
            ]
        ]
    sr = {p: st.sharpe_per_period(r) for p, r in returns.items() if r.size > 1}
    trials = [v for v in sr.values() if np.isfinite(v)]
    tests = []
    for p, r in returns.items():
        psr = st.probabilistic_sharpe_ratio(r) if r.size > 1 else np.nan
        dsr = st.deflated_sharpe_ratio(r, trials) if len(trials) >= 2 and r.size > 1 else np.nan
        tests.append(
            {
                "policy": p,
                "n_returns": r.size,
                "sharpe_per_step": sr.get(p, np.nan),
                "psr": psr,
                "dsr": dsr,
            }
        )
    return summary, improvement, pd.DataFrame(tests).set_index("policy"), best


def _statements(g: GroupComparison, level: float = 0.95) -> list[str]:
    out = []
    if g.n_scenarios == 1:
        out.append(
            "One scenario (a single replayed path): the scenario-bootstrap CIs are degenerate and no "
            "paired test across scenarios is possible; significance here rests on PSR/DSR over the "
            "per-step returns, which assume stationary, independent returns."
        )
    elif g.n_scenarios < 10:
        out.append(
            f"Only {g.n_scenarios} scenarios: percentile-bootstrap CIs are unreliable (too narrow) at this size."
        )
    if ORACLE in g.sharpe_tests.index:
        out.append(
            f"`{ORACLE}` is a {ORACLE_LABEL}: it knows the true regime and the model's parameters but "
            "uses the long-run GARCH variance, and it is not a feasible strategy."
        )
    if EXECUTED_CEILING in g.sharpe_tests.index:
        out.append(
            f"`{EXECUTED_CEILING}` is the {EXECUTED_LABEL}: the true ceiling's targets traded through "
            "the env every step; the bound is its ex-ante growth, `ceiling (bound)` below."
        )
    out += ex_ante_statements(g.ex_ante)
    for p, (k, n) in g.ruined.items():
        if k:
            out.append(
                f"`{p}` ended in ruin in {k} of {n} scenario runs (equity at or below env.ruin_fraction "
                "of the start; a loss beyond equity is written off as bad debt, the value recorded as 0). "
                "Its metrics include those scenarios: a ruined path's returns end at -100%."
            )
    m = g.primary_metric
    for p, row in g.improvement.iterrows():
        if g.n_scenarios == 1:
            out.append(
                f"`{p}` vs `{g.best_baseline}` on {m}: difference {row['diff_mean']:+.3f} on the single path; "
                "no CI across scenarios, so its significance cannot be assessed here."
            )
            continue
        diff_sig = (
            "significant: CI excludes 0"
            if row["diff_significant"]
            else "NOT significant: CI contains 0"
        )
        poi_sig = (
            "significant: CI excludes 0.5"
            if row["poi_significant"]
            else "NOT significant: CI contains 0.5"
        )
        out.append(
            f"`{p}` vs best baseline `{g.best_baseline}` on {m}: mean difference {row['diff_mean']:+.3f} "
            f"[{row['diff_ci_low']:+.3f}, {row['diff_ci_high']:+.3f}] ({diff_sig}); P(`{p}` better) = "
            f"{row['prob_improvement']:.2f} [{row['poi_ci_low']:.2f}, {row['poi_ci_high']:.2f}] ({poi_sig})."
        )
    for p, row in g.sharpe_tests.iterrows():
        if not np.isfinite(row["psr"]):
            continue
        sig = "significantly > 0" if row["psr"] > level else "NOT significantly > 0"
        dsr = row["dsr"]
        dsr_txt = (
            f"; deflated for {len(g.sharpe_tests)} candidates DSR = {dsr:.3f} ({'significant' if dsr > level else 'not significant'})"
            if np.isfinite(dsr)
            else ""
        )
        out.append(f"`{p}`: PSR = {row['psr']:.3f}, Sharpe {sig} at {level:.0%}{dsr_txt}.")
    return out


def load_group_tables(
    experiment: str, tmp: Path
) -> list[tuple[tuple[str, str, str, str], pd.DataFrame, list[str]]]:
    """Evaluation runs of ``experiment`` -> ``[(group key, metrics table with run_id, run ids)]``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    where = display_tracking_uri()
    if mlflow.MlflowClient().get_experiment_by_name(experiment) is None:
        raise ValueError(
            f"experiment {experiment!r} not found at {where}. {_evaluation_experiments()}"
        )
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    tag = f"tags.{EVALUATION_TAG}"
    if runs.empty or tag not in runs.columns:
        raise ValueError(
            f"experiment {experiment!r} at {where} has no evaluation runs. "
            f"{_evaluation_experiments()}"
        )
    runs = runs[(runs[tag] == EVALUATION_KIND) & (runs["status"] == "FINISHED")]
    runs = runs.sort_values("start_time", ascending=False)
    groups: dict[tuple[str, str, str, str], list[pd.DataFrame]] = {}
    ids: dict[tuple[str, str, str, str], list[str]] = {}
    for _, run in runs.iterrows():
        rid = run["run_id"]
        params_hash = run.get("params.policy_params_hash")
        key = (
            run["params.scenario_set"],
            run["params.seeds"],
            run["params.config_hash"],
            params_hash if isinstance(params_hash, str) else "",
        )
        table = pd.read_csv(_download(rid, METRICS_ARTIFACT, tmp / rid))
        groups.setdefault(key, []).append(table.assign(run_id=rid))
        ids.setdefault(key, []).append(rid)
    return [(key, _merge_tables(tables), ids[key]) for key, tables in groups.items()]


def _evaluation_experiments() -> str:
    """The experiments that hold evaluation runs, as a sentence for an error message."""
    found = experiments_with_runs(EVALUATION_TAG, EVALUATION_KIND)
    if not found:
        return "No experiment there holds evaluation runs yet (defialloc evaluate, train or demo)."
    listed = ", ".join(
        f"{name} ({n} evaluation run{'s' if n != 1 else ''})" for name, n in found.items()
    )
    return f"Experiments with evaluation runs: {listed}; pass one with --experiment."


def _merge_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the metric tables of a group's runs, keeping one copy of rows that several runs
    share exactly (the same deterministic baseline on the same scenarios), so no scenario counts twice."""
    merged = pd.concat(tables, ignore_index=True)
    return merged.drop_duplicates(
        subset=[c for c in merged.columns if c != "run_id"], ignore_index=True
    )


def _pooled_returns(run_ids: list[str], policies: list[str], tmp: Path) -> dict[str, np.ndarray]:
    """Per-step returns of each policy pooled over scenarios (and distinct runs)."""
    pooled: dict[str, list[np.ndarray]] = {p: [] for p in policies}
    seen: dict[str, set[bytes]] = {p: set() for p in policies}
    for rid in run_ids:
        frame = pd.read_parquet(
            _download(rid, SERIES_ARTIFACT, tmp / rid), columns=["policy", "return"]
        )
        for p, sub in frame.groupby("policy", sort=False):
            r = sub["return"].to_numpy(dtype=float)
            digest = r.tobytes()
            if p in pooled and digest not in seen[p]:
                seen[p].add(digest)
                pooled[p].append(r)
    return {p: np.concatenate(v) if v else np.array([]) for p, v in pooled.items()}


def compare(
    experiment: str,
    out: str | Path | None = None,
    *,
    metric: str = "sharpe_ratio",
    n_boot: int = 2000,
    seed: int = 0,
    console: Console | None = None,
) -> list[GroupComparison]:
    """Compare every evaluation run of ``experiment``; print tables; write ``out`` (.md or .html)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    console = console or Console()
    out_path = Path(out).resolve() if out is not None else None
    if out_path is not None and out_path.suffix not in (".md", ".html"):
        raise ValueError(f"out={out_path} must end in .md or .html")
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for (scenario_set, _seeds, config_hash, _params), table, run_ids in load_group_tables(
            experiment, tmp
        ):
            if metric not in table.columns:
                raise ValueError(
                    f"metric {metric!r} is not in the metrics table; choose one of {list(REPORT_METRICS)}"
                )
            policies = list(dict.fromkeys(table["policy"]))
            returns = _pooled_returns(run_ids, policies, tmp)
            summary, improvement, tests, best = _compare_group(table, returns, metric, n_boot, seed)
            n_scen = int(table.groupby(["run_id", "policy"]).size().max())
            group = GroupComparison(
                scenario_set,
                config_hash,
                run_ids,
                n_scen,
                metric,
                best,
                summary,
                improvement,
                tests,
            )
            group.defi = defi_table(table, policies)
            if "ruined" in table.columns:
                for p in policies:
                    flags = _scores(table, p, "ruined")
                    group.ruined[p] = (int(np.nansum(flags)), int(flags.size))
            if EX_ANTE in table.columns and table[EX_ANTE].notna().any():
                group.ex_ante = ex_ante_frame(
                    {p: _scores(table, p, EX_ANTE) for p in policies},
                    _scores(table, policies[0], CEILING)[0],
                    _periods_per_year(run_ids[0]),
                    n_boot,
                    seed,
                )
            group.greeks = greek_frame(table)
            group.statements = _statements(group)
            if out_path is not None:
                folder = (
                    tmp
                    if out_path.suffix == ".html"
                    else out_path.parent / f"{out_path.stem}_files"
                )
                files = folder / f"{scenario_set.replace(':', '_')}_{config_hash}"
                group.plot_files = _download_plots(run_ids[0], files)
            print_group(group, console)
            results.append(group)
        if out_path is not None:  # inside the temporary folder: HTML embeds the plots from there
            write_report(results, out_path, experiment)
            console.print(f"report written to {out_path}")
    return results


def _periods_per_year(run_id: str) -> float:
    """Steps per year of a run (``365 / step_days`` from its params; 365 when not logged)."""
    import mlflow

    step_days = mlflow.get_run(run_id).data.params.get("step_days")
    return 365.0 / float(step_days) if step_days else 365.0


def _download_plots(run_id: str, dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    try:
        folder = _download(run_id, PLOTS_DIR, dst)
    except Exception:  # a run logged without plots
        return []
    order = {name: i for i, name in enumerate(PLOTS)}
    return sorted(folder.glob("*.png"), key=lambda f: (order.get(f.stem, len(order)), f.stem))


TERMINAL_METRICS = (
    "sharpe_ratio",
    "annual_return",
    "max_drawdown",
    "conditional_value_at_risk",
    "cost_total_usd",
)


#: the DeFi table's cost columns: metrics-table column -> label (USD, mean per scenario run)
DEFI_COSTS = {
    "cost_fees_usd": "fees",
    "cost_slippage_usd": "slippage",
    "cost_gas_usd": "gas",
    "cost_interest_usd": "interest",
    "cost_funding_usd": "funding",
    "cost_liquidation_usd": "liquidation",
}


def defi_table(table: pd.DataFrame, policies: list[str]) -> pd.DataFrame:
    """Liquidations, the lowest health factor and the costs by kind per policy, for groups run with
    lending or perps (empty otherwise).

    Columns: ``liquidations`` (events summed over every scenario run), ``liquidated runs`` (scenario
    runs with at least one), ``lowest HF`` (the lowest health factor any run reached; inf: never
    borrowed), and the mean USD per scenario run of every cost kind (interest and funding are paid
    minus earned, so they can be negative).
    """
    if "liquidations_count" not in table.columns:
        return pd.DataFrame()
    rows = {}
    for p in policies:
        sub = table[table["policy"] == p]
        # a deterministic baseline evaluated next to several agents: identical runs counted once
        sub = sub.drop(columns=[c for c in ("run_id",) if c in sub.columns]).drop_duplicates()
        row = {
            "liquidations": float(sub["liquidations_count"].sum()),
            "liquidated runs": f"{int((sub['liquidations_count'] > 0).sum())}/{len(sub)}",
        }
        if "min_health_factor" in sub.columns:
            hf = sub["min_health_factor"].to_numpy(dtype=float)
            row["lowest HF"] = float(np.nanmin(hf)) if np.isfinite(hf).any() else float("inf")
        for column, name in DEFI_COSTS.items():
            if column in sub.columns:
                row[name] = float(sub[column].mean())
        rows[p] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _defi_cell(column: str, value: object) -> str:
    if isinstance(value, str):
        return value
    v = float(value)  # type: ignore[arg-type]
    if column == "lowest HF":
        return "never borrowed" if not np.isfinite(v) else f"{v:.2f}"
    if column == "liquidations":
        return f"{v:,.0f}"
    return f"{v:,.0f}"


def print_group(g: GroupComparison, console: Console) -> None:
    """Rich tables: mean [95% CI] and IQM [95% CI] of the key metrics (one table for a single
    path), then P(improvement) over the best baseline, PSR and DSR."""
    title = f"{g.scenario_set}: {g.n_scenarios} scenario(s), config {g.config_hash}, {len(g.run_ids)} run(s)"
    cols = [
        c
        for c in TERMINAL_METRICS
        if not g.summary.empty and (g.best_baseline or "", c) in g.summary.index
    ]
    kinds = (
        (("mean", "value on the single path"),)
        if g.n_scenarios == 1
        else (
            ("mean", "mean [95% stratified-bootstrap CI] across scenarios"),
            ("iqm", "IQM [95% stratified-bootstrap CI] across scenarios"),
        )
    )
    for what, caption in kinds:
        rows = [[p, *[_cell(g.summary, p, c, what) for c in cols]] for p in g.sharpe_tests.index]
        print_fitted(console, f"{title}\n{caption}", ["policy", *map(label, cols)], rows)
    tests = []
    for p in g.sharpe_tests.index:
        poi = "(best)" if p == g.best_baseline else "-"
        if p in g.improvement.index and g.n_scenarios == 1:
            poi = "n/a (1 path)"
        elif p in g.improvement.index:
            r = g.improvement.loc[p]
            star = " *" if r["poi_significant"] else ""
            poi = (
                f"{r['prob_improvement']:.2f} [{r['poi_ci_low']:.2f}, {r['poi_ci_high']:.2f}]{star}"
            )
        t = g.sharpe_tests.loc[p]
        tests.append([p, poi, f"{t['psr']:.3f}", f"{t['dsr']:.3f}", g.ruined_cell(p)])
    print_fitted(
        console,
        f"{title}\nvs best baseline {g.best_baseline} on {label(g.primary_metric)} (* = CI excludes 0.5)",
        ["policy", "P(better) [CI]", "PSR", "DSR", "ruined"],
        tests,
    )
    if not g.ex_ante.empty:
        print_ex_ante(g.ex_ante, console, title)
    if not g.defi.empty:
        print_fitted(
            console,
            f"{title}\nDeFi: liquidations, lowest health factor, costs by kind (USD, mean per scenario run)",
            ["policy", *g.defi.columns],
            [
                [str(p), *[_defi_cell(c, row[c]) for c in g.defi.columns]]
                for p, row in g.defi.iterrows()
            ],
        )
    if not g.greeks.empty:
        print_greeks(g.greeks, console, title)
    for line in g.statements:
        console.print(f"- {line}", markup=False)
