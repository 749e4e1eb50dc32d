"""The ex-ante part of ``defialloc compare`` (synthetic groups): the true ceiling and the gap captured.

The metrics table of a synthetic backtest carries, per (policy, scenario), ``ex_ante_log_growth`` (the
mean over the scenario's live steps of the ex-ante expected log growth per step of the policy's own
post-trade exposures) and ``ex_ante_ceiling_log_growth`` (the true ceiling's on the same states; the
same for every policy of a scenario). From them, per policy:

* the mean ex-ante growth per step with its 95 % stratified-bootstrap CI, and annualized (x steps
  per year: log growth adds up);
* the SHARE OF THE CEILING-OVER-EQUAL-WEIGHT GAP it captures,
  ``(mean g_p - mean g_ew) / (mean g_ceiling - mean g_ew)`` over the scenarios (a ratio of means,
  :func:`defialloc.evaluation.statistics.ratio_of_means_ci`, paired bootstrap CI): 0 = equal weight, 1 = the
  ceiling, < 0 = worse than equal weight ex ante.

Labels used everywhere: the ``ceiling`` POLICY is the "executed ceiling (pays costs; not a bound on
realized results)"; the bound itself is the row ``ceiling (bound)``; ``oracle_mean_variance`` is a
"regime-informed reference, not a bound".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console

from defialloc.evaluation import statistics as st

EX_ANTE = "ex_ante_log_growth"
CEILING = "ex_ante_ceiling_log_growth"
#: the yardstick at 0 % of the gap
YARDSTICK = "equal_weight"
BOUND_ROW = "ceiling (bound)"
EXECUTED_CEILING = "ceiling"
EXECUTED_LABEL = "executed ceiling (pays costs; not a bound on realized results)"
ORACLE = "oracle_mean_variance"
ORACLE_LABEL = "regime-informed reference, not a bound"
COLUMNS = (
    "g_per_step",
    "g_ci_low",
    "g_ci_high",
    "g_annual",
    "share_of_gap",
    "share_ci_low",
    "share_ci_high",
)


def ex_ante_frame(
    scores: dict[str, np.ndarray],
    ceiling: np.ndarray,
    periods_per_year: float,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per policy (``ceiling (bound)`` first): ex-ante growth and share of the gap.

    Args:
        scores: policy -> ``(n_runs, n_scenarios)`` ``ex_ante_log_growth`` (scenario columns paired).
        ceiling: ``(n_scenarios,)`` the ceiling's ex-ante growth per scenario.
        periods_per_year: steps per year (annualizes the per-step log growth).

    Returns:
        columns :data:`COLUMNS`; the shares are NaN without ``equal_weight`` in ``scores``.
        Scenarios where a score is NaN are left out of that policy's row.
    """
    bound = np.asarray(ceiling, dtype=float).reshape(1, -1)
    yard = scores.get(YARDSTICK)
    rows = {}
    for name, values in {BOUND_ROW: bound, **scores}.items():
        ok = np.isfinite(values).all(axis=0) & np.isfinite(bound[0])
        if yard is not None:
            ok &= np.isfinite(yard).all(axis=0)
        if not ok.any():
            continue
        g = st.stratified_bootstrap_ci(values[:, ok], "mean", n_boot, seed=seed)
        row = dict(
            zip(COLUMNS[:4], (g.point, g.low, g.high, g.point * periods_per_year), strict=True)
        )
        row |= {"share_of_gap": np.nan, "share_ci_low": np.nan, "share_ci_high": np.nan}
        if yard is not None:
            num, den = values[:, ok] - yard[:, ok], bound[:, ok] - yard[:, ok]
            if den.mean() > 0:
                share = st.ratio_of_means_ci(num, den, n_boot, seed=seed)
                row |= {
                    "share_of_gap": share.point,
                    "share_ci_low": share.low,
                    "share_ci_high": share.high,
                }
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(COLUMNS))


def label(policy: str) -> str:
    """``policy`` with its reference label, if it has one."""
    if policy == EXECUTED_CEILING:
        return f"{policy}: {EXECUTED_LABEL}"
    if policy == ORACLE:
        return f"{policy}: {ORACLE_LABEL}"
    return policy


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """Display strings: growth in bp per step [CI], annualized log growth, share [CI] in %."""

    def share(r: pd.Series) -> str:
        if not np.isfinite(r["share_of_gap"]):
            return "-"
        return f"{100 * r['share_of_gap']:.0f}% [{100 * r['share_ci_low']:.0f}%, {100 * r['share_ci_high']:.0f}%]"

    out = pd.DataFrame(
        {
            "ex-ante log growth, bp/step [95% CI]": [
                f"{1e4 * r['g_per_step']:.2f} [{1e4 * r['g_ci_low']:.2f}, {1e4 * r['g_ci_high']:.2f}]"
                for _, r in frame.iterrows()
            ],
            "annualized (log)": [f"{r['g_annual']:.3f}" for _, r in frame.iterrows()],
            f"share of the ceiling-over-{YARDSTICK} gap [95% CI]": [
                share(r) for _, r in frame.iterrows()
            ],
        },
        index=[label(p) for p in frame.index],
    )
    out.index.name = "policy"
    return out


def ex_ante_statements(frame: pd.DataFrame) -> list[str]:
    """Sentences for the report: what the ceiling is, and each policy's share of the gap."""
    if frame.empty or BOUND_ROW not in frame.index:
        return []
    b = frame.loc[BOUND_ROW]
    out = [
        f"True ceiling (growth-optimal on the true state: regime, next-step GARCH variance, quoted "
        f"rates; cost-free, within the env's constraints): ex-ante log growth "
        f"{1e4 * b['g_per_step']:.2f} bp per step ({b['g_annual']:.3f} a year). It bounds every "
        "policy's ex-ante growth on the same states, not realized results."
    ]
    if YARDSTICK not in frame.index:
        out.append(f"No `{YARDSTICK}` in this group: the share of the gap is not computed.")
        return out
    for p, r in frame.drop(index=BOUND_ROW).iterrows():
        if p == YARDSTICK or not np.isfinite(r["share_of_gap"]):
            continue
        sig = (
            "significantly above 0"
            if r["share_ci_low"] > 0
            else (
                "significantly below 0" if r["share_ci_high"] < 0 else "NOT significantly above 0"
            )
        )
        out.append(
            f"`{label(str(p))}` captures {100 * r['share_of_gap']:.0f}% "
            f"[{100 * r['share_ci_low']:.0f}%, {100 * r['share_ci_high']:.0f}%] of the ceiling-over-"
            f"{YARDSTICK} ex-ante gap ({sig})."
        )
    return out


def print_ex_ante(frame: pd.DataFrame, console: Console, title: str) -> None:
    """The ex-ante table in the terminal."""
    from defialloc.evaluation.table_fit import print_fitted

    shown = formatted(frame)
    print_fitted(
        console,
        f"{title}\nex-ante expected log growth per step (true moments, second order)",
        ["policy", *map(str, shown.columns)],
        [[str(p), *map(str, row.tolist())] for p, row in shown.iterrows()],
    )
