"""The maximum-Sharpe (tangency) portfolio by the standard convex substitution.

Maximizing ``(mu - rf)'w / sqrt(w'Σw)`` over ``sum(w) = b`` is not convex, but with ``y = w / kappa``
scaled so that ``(mu - rf)'y = 1`` it becomes the QP (Cornuejols & Tutuncu, Optimization Methods in
Finance, sec. 8.2)::

    minimize y'Σy  s.t.  (mu - rf)'y = 1,  y >= 0 (long-only),
                         |y_i| <= (max_weight / b) * 1'y      (caps: the "kappa trick", kappa = 1'y / b)
                         ||y||_1 <= (L / b) * 1'y             (gross-leverage cap, long-short)

and ``w = b * y / 1'y``. The Sharpe ratio is scale-free, so ``b`` only rescales the tangency
portfolio (a levered tangency for ``b > 1``). The substitution needs a feasible portfolio with a
positive excess return; without one there is no tangency portfolio and the caller falls back.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

from defialloc.agents.baselines.constraints import WeightConstraints
from defialloc.agents.baselines.l1_qp import solve_qp_l1
from defialloc.agents.baselines.qp import initial_bound_set, solve_qp

#: an excess return this small relative to max|mu - rf| counts as not positive
EXCESS_RTOL = 1e-12


def _greedy_best_excess(excess: np.ndarray, lower: np.ndarray, upper: np.ndarray, budget: float):
    """``argmax excess'w`` s.t. ``sum(w) = budget``, ``lower <= w <= upper`` (finite box): start at
    ``lower`` and fill the assets in decreasing ``excess`` up to ``upper`` (exact for this LP)."""
    order = np.argsort(-excess)
    room = (upper - lower)[order]
    remaining = budget - float(np.sum(lower))
    alloc = np.clip(remaining - (np.cumsum(room) - room), 0.0, room)
    w = lower.copy()
    w[order] += alloc
    return w


def _best_excess_portfolio(excess: np.ndarray, cons: WeightConstraints) -> np.ndarray:
    """A feasible weight vector with the largest excess return (an LP), used as the start."""
    n = excess.shape[0]
    lower, upper = cons.bounds(n)
    long_upper = np.minimum(upper, cons.budget)
    if cons.long_only:
        return _greedy_best_excess(excess, lower, long_upper, cons.budget)
    if not cons.gross_is_binding:
        return _greedy_best_excess(excess, lower, upper, cons.budget)
    w = _greedy_best_excess(excess, np.zeros(n), long_upper, cons.budget)
    if excess @ w > 0.0:
        return w
    # long-short with a gross cap and no positive long-only portfolio: solve the LP over (u, v)
    # with w = u - v, u, v >= 0 (rare; costs ~1 ms)
    cap = upper[0] if np.isfinite(upper[0]) else None
    res = linprog(
        np.concatenate((-excess, excess)),
        A_ub=np.ones((1, 2 * n)),
        b_ub=[float(cons.max_gross_leverage)],
        A_eq=np.concatenate((np.ones(n), -np.ones(n)))[None, :],
        b_eq=[cons.budget],
        bounds=[(0.0, cap)] * (2 * n),
        method="highs",
    )
    return res.x[:n] - res.x[n:] if res.status == 0 else w


def solve_tangency(
    hessian: np.ndarray, excess: np.ndarray, cons: WeightConstraints
) -> tuple[np.ndarray | None, str, int]:
    """Tangency weights for the unit-scaled ``hessian`` (``(N, N)``) and ``excess = mu - rf``.

    Returns:
        ``(weights or None, status, iterations)`` with status ``"optimal"``,
        ``"no_positive_excess_return"``, ``"no_tangency"`` or a QP failure status.
    """
    n = excess.shape[0]
    size = float(np.max(np.abs(excess)))
    if size == 0.0:
        return None, "no_positive_excess_return", 0
    excess_n = excess / size
    budget = cons.budget
    if not cons.long_only and cons.max_weight is None and not cons.gross_is_binding:
        # unconstrained long-short: y = Σ^-1 (mu - rf), a tangency only if it is net long
        y = np.linalg.solve(hessian, excess_n)
        if float(np.sum(y)) <= EXCESS_RTOL * float(np.sum(np.abs(y))):
            return None, "no_tangency", 1
        return budget * y / float(np.sum(y)), "optimal", 1
    w0 = _best_excess_portfolio(excess_n, cons)
    start_excess = float(excess_n @ w0)
    if start_excess <= EXCESS_RTOL * abs(budget):
        return None, "no_positive_excess_return", 0
    if cons.single_point(n):
        return cons.equal_weight(n), "optimal", 0
    y0 = w0 / start_excess
    lower = np.zeros(n) if cons.long_only else np.full(n, -np.inf)
    upper = np.full(n, np.inf)
    eq = excess_n[None, :]
    rhs = np.ones(1)
    g_rows, h_rows = None, None
    if cons.max_weight is not None and (not cons.long_only or cons.max_weight < budget):
        # |y_i| <= c * 1'y with c = max_weight / budget, as rows  +-e_i' - c 1' <= 0
        c = cons.max_weight / budget
        eye = np.eye(n)
        g_rows = eye - c if cons.long_only else np.concatenate((eye - c, -eye - c), axis=0)
        h_rows = np.zeros(g_rows.shape[0])
    if cons.gross_is_binding:
        result = solve_qp_l1(
            hessian, np.zeros(n), lower, upper, y0, eq_matrix=eq, eq_rhs=rhs,
            ineq_matrix=g_rows, ineq_rhs=h_rows,
            gross_offset=np.full(n, -float(cons.max_gross_leverage) / budget), gross_rhs=0.0,
        )  # fmt: skip
    else:
        wl, wu = initial_bound_set(y0, lower, upper, 1)
        result = solve_qp(
            hessian, np.zeros(n), lower, upper, y0, eq_matrix=eq, eq_rhs=rhs,
            ineq_matrix=g_rows, ineq_rhs=h_rows, at_lower=wl, at_upper=wu,
        )  # fmt: skip
    if result.status != "optimal":
        return None, result.status, result.iterations
    kappa = float(np.sum(result.x))
    if not kappa > 0.0:
        return None, "no_tangency", result.iterations
    return budget * result.x / kappa, "optimal", result.iterations
