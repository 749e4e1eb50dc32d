"""Benchmark: our optimizers against PyPortfolioOpt on the same random problems (speed and agreement).

Problems are daily-scale crypto-like factor models: a market factor (3.5%/day vol) with betas in
[0.6, 1.4], two sector factors (1.5%/day), idiosyncratic vols 1.5-4%/day, and expected returns
N(0.1%, 0.2%) per day (at least one positive). PyPortfolioOpt (a dev/test dependency, imported lazily)
solves the same problems with cvxpy + Clarabel at tightened tolerances; its time includes building the
``EfficientFrontier`` model, as a caller pays it on every rebalance. PyPortfolioOpt's
``max_quadratic_utility(delta)`` maximizes ``w'mu - 0.5 delta w'Σw``: our ``risk_aversion`` convention.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from defialloc.agents.baselines.optimizers import (
    SolveInfo,
    solve_max_sharpe,
    solve_mean_variance,
    solve_min_variance,
    solve_risk_parity,
)

#: required agreement with PyPortfolioOpt (max abs weight difference)
WEIGHT_TOL = 1e-4
#: Clarabel tolerances for PyPortfolioOpt (its defaults, 1e-8, leave ~1e-5 weight errors)
CLARABEL_OPTIONS = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


def random_problem(n_assets: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random ``(mu (N,), cov (N, N))`` pair of per-step (daily) moments from a factor model."""
    betas = np.column_stack((rng.uniform(0.6, 1.4, n_assets), rng.normal(0.0, 0.5, (n_assets, 2))))
    factor_vol = np.array([0.035, 0.015, 0.015])
    idio_vol = rng.uniform(0.015, 0.04, n_assets)
    loadings = betas * factor_vol
    cov = loadings @ loadings.T + np.diag(idio_vol**2)
    mu = rng.normal(0.001, 0.002, n_assets)
    mu[np.argmax(mu)] = max(float(mu.max()), 0.001)  # max Sharpe needs one asset above rf = 0
    return mu, cov


def _time_calls(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], problems: list) -> tuple:
    """Solve every problem once; return (weights list, per-call seconds array)."""
    weights, seconds = [], []
    for mu, cov in problems:
        start = time.perf_counter()
        w = fn(mu, cov)
        seconds.append(time.perf_counter() - start)
        weights.append(np.asarray(w, dtype=np.float64))
    return weights, np.array(seconds)


def _ours(method: str, risk_aversion: float, max_weight: float | None, fallbacks: list[int]):
    """A ``(mu, cov) -> weights`` callable for one of our optimizers that counts fallbacks."""

    def record(result: tuple[np.ndarray, SolveInfo]) -> np.ndarray:
        fallbacks[0] += int(result[1].fallback_used)
        return result[0]

    calls: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "min_variance": lambda mu, cov: record(solve_min_variance(cov, max_weight=max_weight)),
        "max_sharpe": lambda mu, cov: record(solve_max_sharpe(mu, cov, 0.0, max_weight=max_weight)),
        "mean_variance": lambda mu, cov: record(
            solve_mean_variance(mu, cov, risk_aversion, max_weight=max_weight)
        ),
        "risk_parity": lambda mu, cov: record(solve_risk_parity(cov)),
    }
    return calls[method]


def _pypfopt(method: str, risk_aversion: float, max_weight: float | None):
    """The PyPortfolioOpt equivalent, or None (no risk parity in ``EfficientFrontier``)."""
    from pypfopt import EfficientFrontier  # lazy: dev/test dependency only

    bounds = (0.0, 1.0 if max_weight is None else max_weight)

    def run(mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
        ef = EfficientFrontier(
            mu, cov, weight_bounds=bounds, solver="CLARABEL", solver_options=CLARABEL_OPTIONS
        )
        if method == "min_variance":
            ef.min_volatility()
        elif method == "max_sharpe":
            ef.max_sharpe(risk_free_rate=0.0)
        else:
            ef.max_quadratic_utility(risk_aversion=risk_aversion)
        return ef.weights

    return None if method == "risk_parity" else run


def bench_baselines(
    n_assets: int = 10,
    n_problems: int = 200,
    seed: int = 0,
    *,
    risk_aversion: float = 5.0,
    max_weight: float | None = None,
) -> dict[str, Any]:
    """Solve ``n_problems`` random problems with our optimizers and PyPortfolioOpt.

    Args:
        n_assets: assets per problem (>= 2).
        n_problems: problems per method (>= 1).
        seed: RNG seed of the problems.
        risk_aversion: ``delta`` of the quadratic-utility problem (per-step moments).
        max_weight: optional long-only cap applied in both libraries.

    Returns:
        ``{"config": {...}, "pypfopt_error": str | None, "weight_tol": 1e-4, "passed": bool,
        "methods": {name: {"ours_mean_s", "ours_median_s", "ours_fallbacks", "pypfopt_mean_s",
        "pypfopt_median_s", "speed_ratio", "max_abs_weight_diff", "within_tol"}}}``; the pypfopt
        fields are None when it is missing or has no equivalent (risk parity).
    """
    if n_assets < 2:
        raise ValueError(f"n_assets must be >= 2, got {n_assets}")
    if n_problems < 1:
        raise ValueError(f"n_problems must be >= 1, got {n_problems}")
    rng = np.random.default_rng(seed)
    problems = [random_problem(n_assets, rng) for _ in range(n_problems)]
    pypfopt_error: str | None = None
    try:
        import pypfopt  # noqa: F401
    except ImportError:
        pypfopt_error = (
            "PyPortfolioOpt is not installed (a dev dependency: pip install pyportfolioopt); "
            "only our timings are reported"
        )
    methods: dict[str, dict[str, Any]] = {}
    for method in ("min_variance", "max_sharpe", "mean_variance", "risk_parity"):
        fallbacks = [0]
        ours = _ours(method, risk_aversion, max_weight, fallbacks)
        ours(*problems[0])  # warm-up (imports, first-call allocations)
        fallbacks[0] = 0
        ours_w, ours_s = _time_calls(ours, problems)
        row: dict[str, Any] = {
            "ours_mean_s": float(ours_s.mean()),
            "ours_median_s": float(np.median(ours_s)),
            "ours_fallbacks": fallbacks[0],
            "pypfopt_mean_s": None,
            "pypfopt_median_s": None,
            "speed_ratio": None,
            "max_abs_weight_diff": None,
            "within_tol": None,
        }
        reference = None if pypfopt_error else _pypfopt(method, risk_aversion, max_weight)
        if reference is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cvxpy's solver chatter
                reference(*problems[0])
                ref_w, ref_s = _time_calls(reference, problems)
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours_w, ref_w, strict=True))
            row.update(
                pypfopt_mean_s=float(ref_s.mean()),
                pypfopt_median_s=float(np.median(ref_s)),
                speed_ratio=float(ref_s.mean() / ours_s.mean()),
                max_abs_weight_diff=diff,
                within_tol=diff <= WEIGHT_TOL,
            )
        methods[method] = row
    checked = [row["within_tol"] for row in methods.values() if row["within_tol"] is not None]
    return {
        "config": {
            "n_assets": n_assets,
            "n_problems": n_problems,
            "seed": seed,
            "risk_aversion": risk_aversion,
            "max_weight": max_weight,
        },
        "pypfopt_error": pypfopt_error,
        "weight_tol": WEIGHT_TOL,
        "passed": bool(checked) and all(checked),
        "methods": methods,
    }


def print_bench_table(result: dict[str, Any]) -> None:
    """Print :func:`bench_baselines`' result as a rich table."""
    from rich.console import Console
    from rich.table import Table

    cfg = result["config"]
    cap = "none" if cfg["max_weight"] is None else f"{cfg['max_weight']:g}"
    table = Table(
        title=(
            f"Baselines vs PyPortfolioOpt: {cfg['n_problems']} problems x {cfg['n_assets']} assets, "
            f"long-only, cap {cap}, delta {cfg['risk_aversion']:g}, tol {result['weight_tol']:g}"
        ),
        caption=(
            "mean time per solve (ours, pypfopt incl. model build), ratio = pypfopt / ours, "
            "max|dw| = largest weight difference, fb = our fallbacks"
        ),
    )
    table.add_column("method", no_wrap=True, min_width=13)
    for column in ("ours", "ours p50", "pypfopt", "ratio", "max|dw|", "fb"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, row in result["methods"].items():
        ref = row["pypfopt_mean_s"]
        diff = row["max_abs_weight_diff"]
        verdict = "" if row["within_tol"] is None else (" ok" if row["within_tol"] else " FAIL")
        table.add_row(
            name,
            f"{row['ours_mean_s'] * 1e6:.0f} us",
            f"{row['ours_median_s'] * 1e6:.0f} us",
            "-" if ref is None else f"{ref * 1e3:.2f} ms",
            "-" if row["speed_ratio"] is None else f"{row['speed_ratio']:.0f}x",
            "-" if diff is None else f"{diff:.0e}{verdict}",
            str(row["ours_fallbacks"]),
        )
    console = Console()
    console.print(table)
    if result["pypfopt_error"]:
        console.print(f"[yellow]{result['pypfopt_error']}[/yellow]")
