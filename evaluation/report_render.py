"""Render comparison groups as a Markdown or HTML report: the text of the evaluation report.

Turns the ``GroupComparison`` objects that ``defialloc.evaluation.report.compare`` builds into headings,
paragraphs, pipe/HTML tables (metric values formatted as percents, USD or ratios, with their CIs)
and the plots, linked beside a Markdown file or embedded as base64 PNGs in an HTML one; nothing here
reads MLflow runs or computes statistics.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from defialloc.agents.mlflow_store import display_tracking_uri
from defialloc.evaluation.report_ex_ante import formatted

if TYPE_CHECKING:
    from defialloc.evaluation.report import GroupComparison

PERCENT_METRICS = {
    "annual_return",
    "annual_volatility",
    "max_drawdown",
    "value_at_risk",
    "conditional_value_at_risk",
    "total_return",
    "turnover_annual",
}


def fmt(metric: str, value: float) -> str:
    """A metric value for a table: percents, USD or a ratio."""
    if not np.isfinite(value):
        return "nan"
    if metric in PERCENT_METRICS:
        return f"{100 * value:.1f}%"
    if metric.endswith("_usd"):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _cell(summary: pd.DataFrame, policy: str, metric: str, what: str = "mean") -> str:
    if (policy, metric) not in summary.index:
        return "-"
    row = summary.loc[(policy, metric)]
    if row["n"] < 2:  # one scenario: the interval is the point itself
        return fmt(metric, row[what])
    return f"{fmt(metric, row[what])} [{fmt(metric, row[what + '_ci_low'])}, {fmt(metric, row[what + '_ci_high'])}]"


# ------------------------------------------------------------------------------------ writing
def _group_blocks(g: GroupComparison) -> list[tuple[str, object]]:
    blocks: list[tuple[str, object]] = [
        ("h2", f"{g.scenario_set}: {g.n_scenarios} scenario(s), config {g.config_hash}"),
        (
            "p",
            f"Runs: {', '.join(g.run_ids)}. Primary metric: {g.primary_metric}; best feasible baseline: {g.best_baseline}.",
        ),
    ]
    single = g.n_scenarios == 1  # one replayed path: no distribution across scenarios to summarize
    if not g.summary.empty:
        policies = list(dict.fromkeys(g.summary.index.get_level_values(0)))
        metrics = list(dict.fromkeys(g.summary.index.get_level_values(1)))
        tables = (
            (("mean", "Value on the single path"),)
            if single
            else (
                ("mean", "Mean [95% stratified-bootstrap CI]"),
                ("iqm", "IQM [95% CI]"),
            )
        )
        for what, label in tables:
            frame = pd.DataFrame(
                {m: [_cell(g.summary, p, m, what) for p in policies] for m in metrics},
                index=policies,
            )
            blocks += [("h3", f"{label} per policy and metric"), ("table", frame)]
    if not g.improvement.empty:
        imp = g.improvement[["diff_mean"]] if single else g.improvement
        blocks += [
            (
                "h3",
                f"Paired comparison with the best baseline ({g.best_baseline}) on {g.primary_metric}: "
                + (
                    "difference on the single path"
                    if single
                    else "mean difference and P(improvement), 95% CIs"
                ),
            ),
            ("table", imp.round(3)),
        ]
    tests = g.sharpe_tests.round(4).astype({"n_returns": int})
    if g.ruined:
        tests = tests.assign(ruined=[g.ruined_cell(p) for p in tests.index])
    blocks += [
        (
            "h3",
            "Probabilistic and deflated Sharpe ratios (per-step returns pooled over scenarios), "
            "and scenario runs ended in ruin",
        ),
        ("table", tests),
    ]
    if not g.ex_ante.empty:
        blocks += [
            (
                "h3",
                "Ex-ante expected log growth per step (true moments, second order) and share of the "
                "ceiling-over-equal_weight gap captured, 95% CIs",
            ),
            ("table", formatted(g.ex_ante)),
        ]
    if not g.defi.empty:
        from defialloc.evaluation.report import _defi_cell

        frame = pd.DataFrame(
            {c: [_defi_cell(c, g.defi.loc[p, c]) for p in g.defi.index] for c in g.defi.columns},
            index=g.defi.index,
        )
        blocks += [
            (
                "h3",
                "DeFi: liquidations, lowest health factor, costs by kind (USD, mean per scenario run)",
            ),
            ("table", frame),
        ]
    if not g.greeks.empty:
        blocks += [
            (
                "h3",
                "Portfolio Greeks after each step, mean [min, max] over the scenarios' steps "
                "(per unit of equity; evaluation/greek_ranges.py)",
            ),
            ("table", g.greeks),
        ]
    blocks += [("h3", "What is and is not significant"), ("ul", g.statements)]
    for path in g.plot_files:
        blocks.append(("img", path))
    return blocks


def write_report(groups: list[GroupComparison], out: Path, experiment: str) -> Path:
    """Write the comparison as Markdown (plots beside it) or HTML (plots embedded)."""
    blocks: list[tuple[str, object]] = [
        ("h1", f"Evaluation report: experiment {experiment}"),
        (
            "p",
            f"Tracking URI: {display_tracking_uri()}. CIs: 95% percentile stratified bootstrap over scenarios "
            "(2000 resamples, seed 0). P(improvement): paired P(X > best baseline), ties 1/2. "
            "PSR: P(true Sharpe > 0); DSR: PSR against the expected maximum Sharpe of all policies tried.",
        ),
    ]
    for g in groups:
        blocks += _group_blocks(g)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = out.suffix == ".html"
    parts = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            level = int(kind[1])
            parts.append(f"<{kind}>{value}</{kind}>" if html else f"{'#' * level} {value}\n")
        elif kind == "p":
            parts.append(f"<p>{value}</p>" if html else f"{value}\n")
        elif kind == "ul":
            items = list(value)  # type: ignore[call-overload]
            parts.append(
                "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
                if html
                else "\n".join(f"- {i}" for i in items) + "\n"
            )
        elif kind == "table":
            frame: pd.DataFrame = value  # type: ignore[assignment]
            parts.append(frame.to_html() if html else markdown_table(frame))
        elif kind == "img":
            path: Path = value  # type: ignore[assignment]
            if html:
                data = base64.b64encode(path.read_bytes()).decode()
                parts.append(
                    f'<p><img alt="{path.stem}" src="data:image/png;base64,{data}" style="max-width:100%"></p>'
                )
            else:
                parts.append(f"![{path.stem}]({path.relative_to(out.parent).as_posix()})\n")
    text = "\n".join(parts)
    if html:
        text = f"<!doctype html><html><head><meta charset='utf-8'><title>{experiment}</title></head><body>{text}</body></html>"
    out.write_text(text)
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame`` with its index as the first column (no tabulate needed)."""
    header = [str(frame.index.name or ""), *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in frame.astype(object).iterrows():  # object rows keep ints as ints
        lines.append("| " + " | ".join([str(idx), *(str(v) for v in row.to_numpy())]) + " |")
    return "\n".join(lines) + "\n"
