"""The baselines' optimizers over ``B`` problems at once (long-only, one budget, optional cap).

Same problems, same starting points, same fallbacks and same statuses as the per-problem
:func:`~defialloc.agents.baselines.optimizers.solve_min_variance`, :func:`~defialloc.agents.baselines.optimizers.solve_mean_variance`,
:func:`~defialloc.agents.baselines.optimizers.solve_max_sharpe` and :func:`~defialloc.agents.baselines.optimizers.solve_risk_parity`
(long-only, no gross cap: what the policies of :mod:`defialloc.agents.baselines.policies` solve), with the
Python work done once per batch instead of once per problem: input validation and covariance
preparation (:func:`prepare_cov_batch`), warm starts, the active-set solves
(:mod:`defialloc.agents.baselines.batch_qp`) and the feasibility checks. Results equal the per-problem
functions to rounding (tested to 1e-8).

Covariances that do not change between calls (the oracle's per-regime matrices) are prepared once
with :func:`prepare_cov_batch` and passed to the ``*_prepared`` functions, which skip validation.
"""

from __future__ import annotations

import numpy as np

from defialloc.agents.baselines.batch_inputs import (
    BatchSolveInfo,
    as_cov_batch,
    as_prev_rows,
    as_rows,
    fall_back,
    feasible_rows,
    long_only_constraints,
    prepare_cov_batch,
    warn_fallbacks,
)
from defialloc.agents.baselines.batch_l1_qp import solve_qp_l1_batch
from defialloc.agents.baselines.batch_qp import initial_bound_set_batch, solve_qp_batch
from defialloc.agents.baselines.constraints import WeightConstraints
from defialloc.agents.baselines.risk_parity import risk_parity_newton_batch
from defialloc.agents.baselines.sharpe import EXCESS_RTOL


def _solve_weights(
    hessian: np.ndarray, linear: np.ndarray, cons: WeightConstraints, prev: np.ndarray | None,
    tau: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``optimizers._solve_weights`` (no gross cap) per problem: ``(x, status, iterations, serial)``."""
    b, n = linear.shape
    lower, upper = (np.broadcast_to(v, (b, n)) for v in cons.bounds(n))
    x0 = np.full((b, n), cons.budget / n)
    if cons.single_point(n):
        none = np.zeros(b, dtype=bool)
        return x0, np.full(b, "optimal", dtype=object), np.zeros(b, dtype=np.int64), none
    if prev is not None:
        # warm start at prev when it is feasible once its tiny budget error is spread evenly
        start = prev + ((cons.budget - prev.sum(axis=1)) / n)[:, None]
        ok = feasible_rows(cons, start) & (start >= lower).all(axis=1) & (start <= upper).all(1)
        x0 = np.where(ok[:, None], start, x0)
    x = np.empty((b, n))
    status = np.empty(b, dtype=object)
    iterations = np.zeros(b, dtype=np.int64)
    serial = np.zeros(b, dtype=bool)
    ones, rhs = np.ones((1, n)), np.array([cons.budget])
    with_l1 = tau > 0.0
    for rows, l1 in ((np.flatnonzero(with_l1), True), (np.flatnonzero(~with_l1), False)):
        if rows.size == 0:
            continue
        if l1:
            assert prev is not None
            res = solve_qp_l1_batch(
                hessian[rows], linear[rows], lower[rows], upper[rows], x0[rows], eq_matrix=ones,
                eq_rhs=rhs, turnover_anchor=prev[rows], turnover_penalty=tau[rows],
            )  # fmt: skip
        else:
            wl, wu = initial_bound_set_batch(x0[rows], lower[rows], upper[rows], 1)
            res = solve_qp_batch(
                hessian[rows], linear[rows], lower[rows], upper[rows], x0[rows], eq_matrix=ones,
                eq_rhs=rhs, at_lower=wl, at_upper=wu,
            )  # fmt: skip
        x[rows], status[rows], iterations[rows], serial[rows] = (
            res.x,
            res.status,
            res.iterations,
            res.serial,
        )
    return x, status, iterations, serial


def _finish(
    x: np.ndarray, status: np.ndarray, iterations: np.ndarray, serial: np.ndarray,
    cons: WeightConstraints, prev: np.ndarray | None,
) -> tuple[np.ndarray, BatchSolveInfo]:  # fmt: skip
    """``optimizers._finish`` per problem: clip to the box, fall back where failed or infeasible."""
    b, n = x.shape
    lower, upper = cons.bounds(n)
    weights = np.minimum(np.maximum(x, lower), upper)
    info = BatchSolveInfo(status.copy(), np.full(b, "none", dtype=object), iterations, serial)
    failed = status != "optimal"
    fall_back(weights, info, np.flatnonzero(failed), status[failed], prev, cons)
    inaccurate = ~failed & ~feasible_rows(cons, weights)
    fall_back(weights, info, np.flatnonzero(inaccurate), "inaccurate", prev, cons)
    return weights, info


def min_variance_prepared(
    hessian: np.ndarray, status: np.ndarray, cons: WeightConstraints, prev: np.ndarray | None
) -> tuple[np.ndarray, BatchSolveInfo]:
    """Minimum variance on prepared matrices (see :func:`prepare_cov_batch`)."""
    b, n = hessian.shape[0], hessian.shape[1]
    weights = np.empty((b, n))
    info = BatchSolveInfo.empty(b)
    bad = status != ""
    fall_back(weights, info, np.flatnonzero(bad), status[bad], prev, cons)
    ok = np.flatnonzero(~bad)
    if ok.size:
        p = None if prev is None else prev[ok]
        x, st, it, se = _solve_weights(
            hessian[ok], np.zeros((ok.size, n)), cons, p, np.zeros(ok.size)
        )
        weights[ok], sub = _finish(x, st, it, se, cons, p)
        info.put(ok, sub)
    return weights, info


def solve_min_variance_batch(
    cov: np.ndarray,
    *,
    max_weight: float | None = None,
    budget: float = 1.0,
    prev_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, BatchSolveInfo]:
    """Long-only :func:`~defialloc.agents.baselines.optimizers.solve_min_variance` of each ``cov[b] (N, N)``.

    Args:
        cov: ``(B, N, N)`` per-step covariances.
        max_weight, budget: as in the per-problem function (shared by every problem).
        prev_weights: ``(B, N)`` current risky weights: warm start and fallback.

    Returns:
        ``(weights (B, N), BatchSolveInfo)``.
    """
    cov = as_cov_batch(cov)
    b, n = cov.shape[0], cov.shape[1]
    cons = long_only_constraints(n, max_weight, budget)
    prev = as_prev_rows(prev_weights, b, n)
    hessian, _, status = prepare_cov_batch(cov)
    weights, info = min_variance_prepared(hessian, status, cons, prev)
    warn_fallbacks("min_variance", info)
    return weights, info


def mean_variance_prepared(
    mu: np.ndarray, hessian: np.ndarray, scale: np.ndarray, status: np.ndarray,
    risk_aversion: float, cons: WeightConstraints, prev: np.ndarray | None,
    turnover_penalty: float = 0.0,
) -> tuple[np.ndarray, BatchSolveInfo]:  # fmt: skip
    """Quadratic utility on prepared matrices (see :func:`prepare_cov_batch`); ``mu (B, N)``."""
    b, n = mu.shape
    weights = np.empty((b, n))
    info = BatchSolveInfo.empty(b)
    status = np.where((status == "") & ~np.isfinite(mu).all(axis=1), "nan_input", status)
    bad = status != ""
    fall_back(weights, info, np.flatnonzero(bad), status[bad], prev, cons)
    ok = np.flatnonzero(~bad)
    if ok.size:
        # divide the objective by gamma * scale so that H is the unit-scaled cov
        factor = float(risk_aversion) * scale[ok]
        p = None if prev is None else prev[ok]
        tau = float(turnover_penalty) / factor
        x, st, it, se = _solve_weights(hessian[ok], -mu[ok] / factor[:, None], cons, p, tau)
        weights[ok], sub = _finish(x, st, it, se, cons, p)
        info.put(ok, sub)
    return weights, info


def solve_mean_variance_batch(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_aversion: float,
    *,
    max_weight: float | None = None,
    budget: float = 1.0,
    prev_weights: np.ndarray | None = None,
    turnover_penalty: float = 0.0,
) -> tuple[np.ndarray, BatchSolveInfo]:
    """Long-only :func:`~defialloc.agents.baselines.optimizers.solve_mean_variance` of each problem.

    Args:
        mu: ``(B, N)`` per-step expected returns. cov: ``(B, N, N)`` per-step covariances.
        risk_aversion: ``gamma > 0``. turnover_penalty: ``tau >= 0`` per unit of one-way turnover
            (needs ``prev_weights``). max_weight, budget: shared by every problem.
        prev_weights: ``(B, N)`` current risky weights: warm start, turnover anchor and fallback.

    Returns:
        ``(weights (B, N), BatchSolveInfo)``.
    """
    cov = as_cov_batch(cov)
    b, n = cov.shape[0], cov.shape[1]
    mu_arr = as_rows(mu, b, n, "mu")
    assert mu_arr is not None
    gamma, tau = float(risk_aversion), float(turnover_penalty)
    if not gamma > 0.0 or not np.isfinite(gamma):
        raise ValueError(f"risk_aversion must be a finite number > 0, got {risk_aversion}")
    if not tau >= 0.0 or not np.isfinite(tau):
        raise ValueError(f"turnover_penalty must be a finite number >= 0, got {turnover_penalty}")
    cons = long_only_constraints(n, max_weight, budget)
    prev = as_prev_rows(prev_weights, b, n)
    if tau > 0.0 and prev is None:
        raise ValueError("turnover_penalty > 0 needs prev_weights (the weights turnover is from)")
    hessian, scale, status = prepare_cov_batch(cov)
    weights, info = mean_variance_prepared(mu_arr, hessian, scale, status, gamma, cons, prev, tau)
    warn_fallbacks("mean_variance", info)
    return weights, info


def _greedy_best_excess_batch(excess: np.ndarray, upper: np.ndarray, budget: float) -> np.ndarray:
    """``sharpe._greedy_best_excess`` per row with ``lower = 0``: fill the assets in decreasing
    ``excess`` up to ``upper`` (the same sort as the per-row call, so ties break alike)."""
    order = np.argsort(-excess, axis=1)
    room = np.take_along_axis(upper, order, axis=1)
    alloc = np.clip(budget - (np.cumsum(room, axis=1) - room), 0.0, room)
    w = np.zeros_like(excess)
    np.put_along_axis(w, order, alloc, axis=1)
    return w


def max_sharpe_prepared(
    mu: np.ndarray, hessian: np.ndarray, status: np.ndarray, risk_free: float,
    cons: WeightConstraints, prev: np.ndarray | None,
) -> tuple[np.ndarray, BatchSolveInfo]:  # fmt: skip
    """Long-only tangency weights on prepared matrices (the kappa substitution of
    :mod:`defialloc.agents.baselines.sharpe`); minimum variance where no portfolio beats ``risk_free``."""
    b, n = mu.shape
    weights = np.empty((b, n))
    info = BatchSolveInfo.empty(b)
    rf = float(risk_free)
    nan = ~(np.isfinite(mu).all(axis=1) & np.isfinite(rf))
    status = np.where((status == "") & nan, "nan_input", status)
    bad = status != ""
    fall_back(weights, info, np.flatnonzero(bad), status[bad], prev, cons)
    ok = np.flatnonzero(~bad)
    budget = cons.budget
    excess = mu[ok] - rf
    size = np.abs(excess).max(axis=1)
    tangency = np.full(ok.size, "optimal", dtype=object)
    tangency[size == 0.0] = "no_positive_excess_return"
    excess_n = excess / np.where(size == 0.0, 1.0, size)[:, None]
    lower, upper = cons.bounds(n)
    w0 = _greedy_best_excess_batch(excess_n, np.broadcast_to(np.minimum(upper, budget), excess_n.shape), budget)  # fmt: skip
    start_excess = np.einsum("bi,bi->b", excess_n, w0)
    tangency[(tangency == "optimal") & (start_excess <= EXCESS_RTOL * abs(budget))] = (
        "no_positive_excess_return"
    )
    solve = np.flatnonzero(tangency == "optimal")
    if cons.single_point(n):
        weights[ok[solve]] = cons.equal_weight(n)
    elif solve.size:
        y0 = w0[solve] / start_excess[solve, None]
        zeros, inf = np.zeros((solve.size, n)), np.full((solve.size, n), np.inf)
        g_rows = h_rows = None
        if cons.max_weight is not None and cons.max_weight < budget:
            # |y_i| <= c 1'y with c = max_weight / budget, as rows e_i' - c 1' <= 0
            g_rows, h_rows = np.eye(n) - cons.max_weight / budget, np.zeros(n)
        wl, wu = initial_bound_set_batch(y0, zeros, inf, 1)
        res = solve_qp_batch(
            hessian[ok[solve]], zeros, zeros, inf, y0, eq_matrix=excess_n[solve, None, :],
            eq_rhs=np.ones(1), ineq_matrix=g_rows, ineq_rhs=h_rows, at_lower=wl, at_upper=wu,
        )  # fmt: skip
        info.iterations[ok[solve]], info.serial[ok[solve]] = res.iterations, res.serial
        kappa = res.x.sum(axis=1)
        failed = res.status != "optimal"
        tangency[solve[~failed & ~(kappa > 0.0)]] = "no_tangency"
        fine = ~failed & (kappa > 0.0)
        w = np.clip(budget * res.x / np.where(fine, kappa, 1.0)[:, None], lower, upper)
        rows = ok[solve]
        weights[rows[fine]] = w[fine]
        fall_back(weights, info, rows[failed], res.status[failed], prev, cons)
        inaccurate = fine & ~feasible_rows(cons, w)
        fall_back(weights, info, rows[inaccurate], "inaccurate", prev, cons)
    to_mv = np.flatnonzero(np.isin(tangency, ("no_positive_excess_return", "no_tangency")))
    if to_mv.size:
        rows = ok[to_mv]
        mv_w, mv_info = min_variance_prepared(
            hessian[rows], np.full(rows.size, "", dtype=object), cons,
            None if prev is None else prev[rows],
        )  # fmt: skip
        weights[rows] = mv_w
        # a failed min-variance solve reports its own fallback, else "min_variance"
        mv_info.status = np.where(mv_info.fallback_used, mv_info.status, tangency[to_mv])
        mv_info.fallback = np.where(mv_info.fallback_used, mv_info.fallback, "min_variance")
        info.put(rows, mv_info)
    return weights, info


def solve_max_sharpe_batch(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_free: float = 0.0,
    *,
    max_weight: float | None = None,
    budget: float = 1.0,
    prev_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, BatchSolveInfo]:
    """Long-only :func:`~defialloc.agents.baselines.optimizers.solve_max_sharpe` of each problem.

    Args:
        mu: ``(B, N)`` per-step expected returns. cov: ``(B, N, N)`` per-step covariances.
        risk_free: per-step rate. max_weight, budget (``> 0``): shared by every problem.
        prev_weights: ``(B, N)`` current risky weights: fallback.

    Returns:
        ``(weights (B, N), BatchSolveInfo)``; ``fallback="min_variance"`` where no feasible
        portfolio has a positive excess return.
    """
    cov = as_cov_batch(cov)
    b, n = cov.shape[0], cov.shape[1]
    mu_arr = as_rows(mu, b, n, "mu")
    assert mu_arr is not None
    if float(budget) <= 0.0:
        raise ValueError(f"budget must be > 0 for the tangency portfolio, got {budget}")
    cons = long_only_constraints(n, max_weight, budget)
    prev = as_prev_rows(prev_weights, b, n)
    hessian, _, status = prepare_cov_batch(cov)
    weights, info = max_sharpe_prepared(mu_arr, hessian, status, risk_free, cons, prev)
    warn_fallbacks("max_sharpe", info)
    return weights, info


def solve_risk_parity_batch(
    cov: np.ndarray, *, budget: float = 1.0, prev_weights: np.ndarray | None = None
) -> tuple[np.ndarray, BatchSolveInfo]:
    """:func:`~defialloc.agents.baselines.optimizers.solve_risk_parity` of each ``cov[b] (N, N)``: Newton's
    method on every problem at once (:func:`~defialloc.agents.baselines.risk_parity.risk_parity_newton_batch`).

    Returns:
        ``(weights (B, N), BatchSolveInfo)`` with ``iterations`` = Newton steps.
    """
    cov = as_cov_batch(cov)
    b, n = cov.shape[0], cov.shape[1]
    cons = long_only_constraints(n, None, budget)
    prev = as_prev_rows(prev_weights, b, n)
    hessian, _, status = prepare_cov_batch(cov)
    weights = np.empty((b, n))
    info = BatchSolveInfo.empty(b)
    bad = status != ""
    fall_back(weights, info, np.flatnonzero(bad), status[bad], prev, cons)
    ok = np.flatnonzero(~bad)
    if ok.size:
        y, converged, steps = risk_parity_newton_batch(hessian[ok])
        info.iterations[ok] = steps
        failed = ~converged | ~np.isfinite(y).all(axis=1)
        weights[ok[~failed]] = cons.budget * y[~failed] / y[~failed].sum(axis=1, keepdims=True)
        fall_back(weights, info, ok[failed], "max_iter", prev, cons)
    warn_fallbacks("risk_parity", info)
    return weights, info
