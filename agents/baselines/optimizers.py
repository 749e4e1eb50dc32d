"""Mean-variance baseline optimizers: minimum variance, maximum Sharpe, quadratic utility, risk parity.

Every function returns an ``(N,)`` float64 weight vector over the ``N`` risky assets (cash is
``1 - sum(w)``); by default long-only and fully invested (``sum(w) = budget = 1``). ``mu`` and
``cov`` are per-step moments in the same units (e.g. daily simple returns and their covariance);
``risk_free`` and ``turnover_penalty`` are per-step too. The answer does not depend on the time unit
except through ``risk_aversion`` (a per-step ``risk_aversion`` equals an annual one when both moments
are annualized with the same factor).

Failure policy: the functions always return weights. When the problem cannot be solved (NaN/inf in
``cov`` or ``mu``, a singular ``cov``, a solver that does not converge) they return
``prev_weights`` (no trade) or equal weights when none are given, and emit a
:class:`SolverFallbackWarning`. The ``solve_*`` variants also return a :class:`SolveInfo` saying what
happened. Invalid arguments (wrong shapes, infeasible constraints, an indefinite ``cov``) raise
``ValueError``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from defialloc.agents.baselines import constraints as cons_mod
from defialloc.agents.baselines.constraints import WeightConstraints, make_constraints
from defialloc.agents.baselines.l1_qp import solve_qp_l1
from defialloc.agents.baselines.qp import QPResult, initial_bound_set, solve_qp
from defialloc.agents.baselines.risk_parity import risk_parity_newton
from defialloc.agents.baselines.sharpe import solve_tangency


class SolverFallbackWarning(RuntimeWarning):
    """An optimizer could not solve its problem and returned fallback weights."""


@dataclass(frozen=True)
class SolveInfo:
    """What an optimizer did.

    Attributes:
        status: ``"optimal"``, or why the solve failed: ``"nan_input"``, ``"singular_cov"``,
            ``"max_iter"``, ``"singular_kkt"``, ``"inaccurate"``; max Sharpe only:
            ``"no_positive_excess_return"`` (no feasible portfolio beats ``risk_free``) and
            ``"no_tangency"`` (the unconstrained long-short tangency is net short).
        iterations: active-set iterations (KKT solves) or Newton steps taken.
        fallback_used: True when the weights are not the solution of the requested problem.
        fallback: ``"none"``, ``"prev_weights"``, ``"equal_weight"`` or ``"min_variance"``.
        message: human-readable explanation (empty when optimal).
    """

    status: str
    iterations: int
    fallback_used: bool
    fallback: str = "none"
    message: str = ""


def _fallback(
    func: str, status: str, reason: str, prev: np.ndarray | None, cons: WeightConstraints, n: int,
    iterations: int = 0,
) -> tuple[np.ndarray, SolveInfo]:  # fmt: skip
    """Previous weights (or equal weights), a warning, and the SolveInfo that says so."""
    if prev is not None:
        weights, kind = prev.copy(), "prev_weights"
    else:
        weights, kind = cons.equal_weight(n), "equal_weight"
    message = f"{func}: {reason}; returning {kind.replace('_', ' ')} instead"
    warnings.warn(message, SolverFallbackWarning, stacklevel=3)
    return weights, SolveInfo(status, iterations, True, kind, message)


_STATUS_REASON = {
    "nan_input": "cov or mu contains NaN or inf",
    "singular_cov": "cov is singular (not positive definite); shrink it, e.g. ledoit_wolf_cov",
    "max_iter": "the active-set solver hit its iteration cap",
    "singular_kkt": "the KKT system was singular",
    "inaccurate": "the solution violated the constraints",
}


def _solve_weights(
    hessian: np.ndarray,
    linear: np.ndarray,
    cons: WeightConstraints,
    prev: np.ndarray | None,
    turnover_penalty: float = 0.0,
) -> QPResult:
    """min ``0.5 w'Hw + g'w [+ tau ||w - prev||_1]`` over the constraint set (budget row, box,
    optional gross cap), started at ``prev`` when it is feasible (warm start) else equal weights."""
    n = linear.shape[0]
    lower, upper = cons.bounds(n)
    x0 = cons.equal_weight(n)
    if cons.single_point(n):
        none = np.zeros(n, dtype=bool)
        return QPResult(x0, "optimal", 0, none, none, none[:0], np.zeros(n), np.zeros(0))
    if prev is not None:
        # warm start at prev when it is feasible once its tiny budget error is spread evenly
        start = prev + (cons.budget - float(prev.sum())) / n
        if cons.is_feasible(start) and (start >= lower).all() and (start <= upper).all():
            x0 = start
    if not cons.gross_is_binding:
        return _solve_without_gross(hessian, linear, cons, x0, prev, turnover_penalty)
    # the gross cap often does not bind: solve without it first (fast PDAS path); when it binds,
    # start from the mix of that solution and x0 whose gross exposure is exactly the cap (feasible
    # by convexity, and with the optimum's short legs already on their way)
    gross = float(cons.max_gross_leverage)
    uncapped = _solve_without_gross(hessian, linear, cons, x0, prev, turnover_penalty)
    used = uncapped.iterations
    if uncapped.status == "optimal":
        gross_uncapped = float(abs(uncapped.x).sum())
        if gross_uncapped <= gross:
            return uncapped
        gross_start = float(abs(x0).sum())
        mix = (gross - gross_start) / (gross_uncapped - gross_start)
        x0 = mix * uncapped.x + (1.0 - mix) * x0
    result = solve_qp_l1(
        hessian, linear, lower, upper, x0, eq_matrix=np.ones((1, n)),
        eq_rhs=np.array([cons.budget]), turnover_anchor=prev,
        turnover_penalty=turnover_penalty, gross_rhs=gross,
    )  # fmt: skip
    result.iterations += used
    return result


def _solve_without_gross(
    hessian: np.ndarray,
    linear: np.ndarray,
    cons: WeightConstraints,
    x0: np.ndarray,
    prev: np.ndarray | None,
    turnover_penalty: float,
) -> QPResult:
    """The budget + box problem (plus the turnover term), ignoring any gross cap."""
    n = linear.shape[0]
    lower, upper = cons.bounds(n)
    ones = np.ones((1, n))
    rhs = np.array([cons.budget])
    if turnover_penalty > 0.0:
        return solve_qp_l1(
            hessian, linear, lower, upper, x0, eq_matrix=ones, eq_rhs=rhs,
            turnover_anchor=prev, turnover_penalty=turnover_penalty,
        )  # fmt: skip
    wl, wu = initial_bound_set(x0, lower, upper, 1)
    return solve_qp(
        hessian, linear, lower, upper, x0, eq_matrix=ones, eq_rhs=rhs, at_lower=wl, at_upper=wu
    )


def _finish(
    func: str, result: QPResult, cons: WeightConstraints, prev: np.ndarray | None
) -> tuple[np.ndarray, SolveInfo]:
    """Clean the QP result into weights, or fall back when it failed."""
    n = result.x.shape[0]
    if result.status != "optimal":
        reason = _STATUS_REASON[result.status]
        return _fallback(func, result.status, reason, prev, cons, n, result.iterations)
    lower, upper = cons.bounds(n)
    weights = np.minimum(np.maximum(result.x, lower), upper)
    if not cons.is_feasible(weights):
        return _fallback(
            func, "inaccurate", _STATUS_REASON["inaccurate"], prev, cons, n, result.iterations
        )
    return weights, SolveInfo("optimal", result.iterations, False)


def solve_min_variance(
    cov: np.ndarray,
    *,
    long_only: bool = True,
    max_weight: float | None = None,
    budget: float = 1.0,
    max_gross_leverage: float | None = None,
    prev_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, SolveInfo]:
    """Minimum-variance weights ``argmin w'Σw`` s.t. ``sum(w) = budget`` and the caps.

    Args:
        cov: ``(N, N)`` per-step covariance of asset returns.
        long_only: forbid short positions.
        max_weight: cap on ``|w_i|`` in (0, 1]; needs ``max_weight * N >= |budget|``.
        budget: sum of the risky weights (``< 1`` holds cash, ``> 1`` is levered).
        max_gross_leverage: cap on ``sum|w_i|`` (long-short only; must be ``>= |budget|``).
        prev_weights: ``(N,)`` current risky weights: warm start and fallback.

    Returns:
        ``(weights (N,), SolveInfo)``.
    """
    cov = cons_mod.as_cov(cov)
    n = cov.shape[0]
    cons = make_constraints(
        n, long_only=long_only, max_weight=max_weight, budget=budget,
        max_gross_leverage=max_gross_leverage,
    )  # fmt: skip
    prev = cons_mod.as_prev_weights(prev_weights, n)
    hessian, scale, status = cons_mod.prepare_cov(cov)
    if status:
        return _fallback("min_variance", status, _STATUS_REASON[status], prev, cons, n)
    result = _solve_weights(hessian, np.zeros(n), cons, prev)
    return _finish("min_variance", result, cons, prev)


def min_variance_weights(
    cov: np.ndarray,
    *,
    long_only: bool = True,
    max_weight: float | None = None,
    budget: float = 1.0,
    max_gross_leverage: float | None = None,
    prev_weights: np.ndarray | None = None,
) -> np.ndarray:
    """``(N,)`` minimum-variance weights; see :func:`solve_min_variance`."""
    return solve_min_variance(
        cov, long_only=long_only, max_weight=max_weight, budget=budget,
        max_gross_leverage=max_gross_leverage, prev_weights=prev_weights,
    )[0]  # fmt: skip


def solve_mean_variance(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_aversion: float,
    *,
    long_only: bool = True,
    max_weight: float | None = None,
    budget: float = 1.0,
    max_gross_leverage: float | None = None,
    prev_weights: np.ndarray | None = None,
    turnover_penalty: float = 0.0,
) -> tuple[np.ndarray, SolveInfo]:
    """Quadratic-utility weights ``argmax w'mu - (risk_aversion/2) w'Σw - tau ||w - prev||_1``.

    Same convention as PyPortfolioOpt's ``max_quadratic_utility`` (``delta = risk_aversion``).

    Args:
        mu: ``(N,)`` per-step expected returns.
        cov: ``(N, N)`` per-step covariance.
        risk_aversion: ``gamma > 0`` (dimensionless; 1-10 is typical for annual moments).
        turnover_penalty: ``tau >= 0``, cost per unit of one-way turnover in per-step return
            units: the proportional trading cost (0.001 = 10 bps) if it is paid over one step.
            Needs ``prev_weights``. A no-trade region appears around ``prev_weights``.
        long_only, max_weight, budget, max_gross_leverage, prev_weights: as in
            :func:`solve_min_variance`.

    Returns:
        ``(weights (N,), SolveInfo)``.
    """
    cov = cons_mod.as_cov(cov)
    n = cov.shape[0]
    mu_arr = cons_mod.as_vector(mu, n, "mu")
    assert mu_arr is not None
    gamma = float(risk_aversion)
    if not gamma > 0.0 or not np.isfinite(gamma):
        raise ValueError(f"risk_aversion must be a finite number > 0, got {risk_aversion}")
    tau = float(turnover_penalty)
    if not tau >= 0.0 or not np.isfinite(tau):
        raise ValueError(f"turnover_penalty must be a finite number >= 0, got {turnover_penalty}")
    cons = make_constraints(
        n, long_only=long_only, max_weight=max_weight, budget=budget,
        max_gross_leverage=max_gross_leverage,
    )  # fmt: skip
    prev = cons_mod.as_prev_weights(prev_weights, n)
    if tau > 0.0 and prev is None:
        raise ValueError("turnover_penalty > 0 needs prev_weights (the weights turnover is from)")
    hessian, scale, status = cons_mod.prepare_cov(cov)
    if not status and not np.all(np.isfinite(mu_arr)):
        status = "nan_input"
    if status:
        return _fallback("mean_variance", status, _STATUS_REASON[status], prev, cons, n)
    # divide the objective by gamma * scale so that H is the unit-scaled cov
    factor = gamma * scale
    result = _solve_weights(hessian, -mu_arr / factor, cons, prev, tau / factor)
    return _finish("mean_variance", result, cons, prev)


def mean_variance_weights(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_aversion: float,
    *,
    long_only: bool = True,
    max_weight: float | None = None,
    budget: float = 1.0,
    max_gross_leverage: float | None = None,
    prev_weights: np.ndarray | None = None,
    turnover_penalty: float = 0.0,
) -> np.ndarray:
    """``(N,)`` quadratic-utility weights; see :func:`solve_mean_variance`."""
    return solve_mean_variance(
        mu, cov, risk_aversion, long_only=long_only, max_weight=max_weight, budget=budget,
        max_gross_leverage=max_gross_leverage, prev_weights=prev_weights,
        turnover_penalty=turnover_penalty,
    )[0]  # fmt: skip


def solve_max_sharpe(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_free: float = 0.0,
    *,
    long_only: bool = True,
    max_weight: float | None = None,
    budget: float = 1.0,
    max_gross_leverage: float | None = None,
    prev_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, SolveInfo]:
    """Tangency weights maximizing ``(mu - risk_free)'w / sqrt(w'Σw)`` s.t. ``sum(w) = budget``.

    Solved by the kappa substitution (see :mod:`defialloc.agents.baselines.sharpe`). When no feasible
    portfolio has a positive excess return (e.g. no asset has ``mu > risk_free`` long-only), or the
    long-short tangency is net short, it returns the minimum-variance weights under the same
    constraints, warns, and reports ``fallback="min_variance"``.

    Args:
        mu: ``(N,)`` per-step expected returns.
        cov: ``(N, N)`` per-step covariance.
        risk_free: per-step risk-free rate (same units as ``mu``).
        budget: ``> 0``; scales the tangency portfolio (Sharpe is scale-free).
        long_only, max_weight, max_gross_leverage, prev_weights: as in :func:`solve_min_variance`.

    Returns:
        ``(weights (N,), SolveInfo)``.
    """
    cov = cons_mod.as_cov(cov)
    n = cov.shape[0]
    mu_arr = cons_mod.as_vector(mu, n, "mu")
    assert mu_arr is not None
    rf = float(risk_free)
    if float(budget) <= 0.0:
        raise ValueError(f"budget must be > 0 for the tangency portfolio, got {budget}")
    cons = make_constraints(
        n, long_only=long_only, max_weight=max_weight, budget=budget,
        max_gross_leverage=max_gross_leverage,
    )  # fmt: skip
    prev = cons_mod.as_prev_weights(prev_weights, n)
    hessian, scale, status = cons_mod.prepare_cov(cov)
    if not status and not (np.all(np.isfinite(mu_arr)) and np.isfinite(rf)):
        status = "nan_input"
    if status:
        return _fallback("max_sharpe", status, _STATUS_REASON[status], prev, cons, n)
    weights, status, iterations = solve_tangency(hessian, mu_arr - rf, cons)
    if status in ("no_positive_excess_return", "no_tangency"):
        reason = (
            "no feasible portfolio has mu'w > risk_free * budget"
            if status == "no_positive_excess_return"
            else "the long-short tangency portfolio is net short (risk_free >= the min-variance mean)"
        )
        message = f"max_sharpe: {reason}; returning the minimum-variance weights instead"
        mv_weights, mv_info = solve_min_variance(
            cov, long_only=long_only, max_weight=max_weight, budget=budget,
            max_gross_leverage=max_gross_leverage, prev_weights=prev,
        )  # fmt: skip
        if mv_info.fallback_used:
            return mv_weights, mv_info
        warnings.warn(message, SolverFallbackWarning, stacklevel=2)
        return mv_weights, SolveInfo(status, mv_info.iterations, True, "min_variance", message)
    if weights is None:
        return _fallback("max_sharpe", status, _STATUS_REASON[status], prev, cons, n, iterations)
    lower, upper = cons.bounds(n)
    weights = np.clip(weights, lower, upper)
    if not cons.is_feasible(weights):
        reason = _STATUS_REASON["inaccurate"]
        return _fallback("max_sharpe", "inaccurate", reason, prev, cons, n, iterations)
    return weights, SolveInfo("optimal", iterations, False)


def max_sharpe_weights(
    mu: np.ndarray,
    cov: np.ndarray,
    risk_free: float = 0.0,
    *,
    long_only: bool = True,
    max_weight: float | None = None,
    budget: float = 1.0,
    max_gross_leverage: float | None = None,
    prev_weights: np.ndarray | None = None,
) -> np.ndarray:
    """``(N,)`` tangency weights; see :func:`solve_max_sharpe`."""
    return solve_max_sharpe(
        mu, cov, risk_free, long_only=long_only, max_weight=max_weight, budget=budget,
        max_gross_leverage=max_gross_leverage, prev_weights=prev_weights,
    )[0]  # fmt: skip


def solve_risk_parity(
    cov: np.ndarray, *, budget: float = 1.0, prev_weights: np.ndarray | None = None
) -> tuple[np.ndarray, SolveInfo]:
    """Long-only equal-risk-contribution weights: ``w_i (Σw)_i = w'Σw / N`` for every i.

    Args:
        cov: ``(N, N)`` per-step covariance (positive definite).
        budget: ``> 0``, sum of the weights.
        prev_weights: ``(N,)`` fallback weights.

    Returns:
        ``(weights (N,), SolveInfo)`` with ``iterations`` = Newton steps.
    """
    cov = cons_mod.as_cov(cov)
    n = cov.shape[0]
    cons = make_constraints(
        n, long_only=True, max_weight=None, budget=budget, max_gross_leverage=None
    )
    prev = cons_mod.as_prev_weights(prev_weights, n)
    hessian, scale, status = cons_mod.prepare_cov(cov)
    if status:
        return _fallback("risk_parity", status, _STATUS_REASON[status], prev, cons, n)
    y, status, steps = risk_parity_newton(hessian)
    if status != "optimal" or not np.all(np.isfinite(y)):
        reason = "Newton's method did not converge"
        return _fallback("risk_parity", "max_iter", reason, prev, cons, n, steps)
    return cons.budget * y / float(np.sum(y)), SolveInfo("optimal", steps, False)


def risk_parity_weights(
    cov: np.ndarray, *, budget: float = 1.0, prev_weights: np.ndarray | None = None
) -> np.ndarray:
    """``(N,)`` equal-risk-contribution weights; see :func:`solve_risk_parity`."""
    return solve_risk_parity(cov, budget=budget, prev_weights=prev_weights)[0]
