"""Baseline optimizers against closed forms (unconstrained) and independent solvers (constrained).

Reference values come from np.linalg.solve on the textbook formulas and from scipy's SLSQP at tight
tolerance (smooth reformulations of the L1 terms with split variables), never from our own code.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from defialloc.agents.baselines import optimizers, qp
from defialloc.agents.baselines.optimizers import (
    SolverFallbackWarning,
    max_sharpe_weights,
    mean_variance_weights,
    min_variance_weights,
    risk_parity_weights,
    solve_max_sharpe,
    solve_mean_variance,
    solve_min_variance,
    solve_risk_parity,
)

N = 8


def factor_problem(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Daily-scale ``(mu, cov)``: one market factor, two sector factors, idiosyncratic noise."""
    rng = np.random.default_rng(seed)
    loadings = np.column_stack((rng.uniform(0.6, 1.4, n), rng.normal(0, 0.5, (n, 2))))
    loadings = loadings * np.array([0.035, 0.015, 0.015])
    cov = loadings @ loadings.T + np.diag(rng.uniform(0.015, 0.04, n) ** 2)
    mu = rng.normal(0.001, 0.002, n)
    mu[0] = abs(mu[0]) + 0.001  # at least one asset beats rf = 0
    return mu, cov


@pytest.fixture(params=["pdas_then_primal", "primal_only"])
def qp_mode(request, monkeypatch):
    """Run constrained tests twice: default (PDAS guess first) and the pure primal active set."""
    if request.param == "primal_only":
        monkeypatch.setattr(qp, "PDAS_ROUNDS", 0)
    return request.param


def slsqp(objective, gradient, lower, upper, *, budget=1.0):
    """Independent reference: SLSQP with analytic gradients at tight tolerance (objectives are
    pre-scaled to O(1)). Status 8 (line search stuck at ftol=1e-15) still ends at the optimum."""
    res = minimize(
        objective,
        np.full(N, budget / N),
        jac=gradient,
        method="SLSQP",
        bounds=list(zip(lower, upper, strict=True)),
        constraints=[
            {"type": "eq", "fun": lambda x: np.sum(x) - budget, "jac": lambda x: np.ones(N)}
        ],
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    assert res.success or res.status == 8, res.message
    assert abs(res.x.sum() - budget) < 1e-9
    return res.x


def sharpe_and_gradient(mu, cov, risk_free):
    """``-(w'mu - rf) / sqrt(w'Σw)`` scaled to O(1), and its gradient."""

    def value(w):
        return -(w @ mu - risk_free) / np.sqrt(w @ cov @ w)

    def grad(w):
        s = np.sqrt(w @ cov @ w)
        return -(mu * s - (w @ mu - risk_free) * (cov @ w) / s) / s**2

    return value, grad


# ---------------------------------------------------------------- closed forms (long_only=False)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("budget", [1.0, 0.6, 2.0])
def test_min_variance_unconstrained_matches_closed_form(seed, budget):
    _, cov = factor_problem(seed)
    inv_one = np.linalg.solve(cov, np.ones(N))
    expected = budget * inv_one / inv_one.sum()
    w = min_variance_weights(cov, long_only=False, budget=budget)
    np.testing.assert_allclose(w, expected, atol=1e-10)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("risk_free", [0.0, -0.0005])
def test_max_sharpe_unconstrained_matches_closed_form(seed, risk_free):
    mu, cov = factor_problem(seed)
    mu = np.abs(mu) + 0.001  # every asset above rf: the tangency is net long
    y = np.linalg.solve(cov, mu - risk_free)
    assert y.sum() > 0
    w = max_sharpe_weights(mu, cov, risk_free, long_only=False, budget=1.5)
    np.testing.assert_allclose(w, 1.5 * y / y.sum(), atol=1e-9)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(("gamma", "budget"), [(1.0, 1.0), (5.0, 1.0), (20.0, 0.5), (3.0, 1.8)])
def test_mean_variance_unconstrained_matches_closed_form(seed, gamma, budget):
    mu, cov = factor_problem(seed)
    inv_mu = np.linalg.solve(cov, mu)
    inv_one = np.linalg.solve(cov, np.ones(N))
    eta = (inv_mu.sum() - gamma * budget) / inv_one.sum()  # budget multiplier: 1'w = budget
    expected = (inv_mu - eta * inv_one) / gamma
    w = mean_variance_weights(mu, cov, gamma, long_only=False, budget=budget)
    np.testing.assert_allclose(w, expected, atol=1e-9)


def test_two_asset_min_variance_hand_value():
    # vols 10% and 20%, correlation 0.5: w1 = (s2^2 - s12) / (s1^2 + s2^2 - 2 s12) = 1.0
    cov = np.array([[0.01, 0.01], [0.01, 0.04]])
    np.testing.assert_allclose(min_variance_weights(cov, long_only=False), [1.0, 0.0], atol=1e-12)
    # correlation -1 hedges perfectly... use 0: w1 = 0.04 / 0.05 = 0.8
    cov0 = np.diag([0.01, 0.04])
    np.testing.assert_allclose(min_variance_weights(cov0), [0.8, 0.2], atol=1e-12)


# ------------------------------------------------------- constrained: independent SLSQP reference


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cap", [None, 0.2])
def test_min_variance_long_only_matches_slsqp(qp_mode, seed, cap):
    _, cov = factor_problem(seed)
    upper = np.full(N, 1.0 if cap is None else cap)
    ref = slsqp(lambda w: 1e4 * w @ cov @ w, lambda w: 2e4 * cov @ w, np.zeros(N), upper)
    w, info = solve_min_variance(cov, max_weight=cap)
    assert info.status == "optimal" and not info.fallback_used
    np.testing.assert_allclose(w, ref, atol=1e-5)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    ("gamma", "cap", "budget"), [(2.0, None, 1.0), (5.0, 0.3, 1.0), (8.0, 0.5, 1.5)]
)
def test_mean_variance_long_only_matches_slsqp(qp_mode, seed, gamma, cap, budget):
    mu, cov = factor_problem(seed)
    upper = np.full(N, budget if cap is None else cap)
    ref = slsqp(
        lambda w: -1e3 * (w @ mu - 0.5 * gamma * w @ cov @ w),
        lambda w: -1e3 * (mu - gamma * cov @ w),
        np.zeros(N),
        upper,
        budget=budget,
    )
    w = mean_variance_weights(mu, cov, gamma, max_weight=cap, budget=budget)
    np.testing.assert_allclose(w, ref, atol=1e-5)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("cap", "risk_free"), [(None, 0.0), (0.25, 0.0), (0.4, 0.0005)])
def test_max_sharpe_long_only_matches_slsqp(qp_mode, seed, cap, risk_free):
    mu, cov = factor_problem(seed)
    mu[1] = risk_free + 0.002  # guarantee a positive-excess portfolio even under the cap
    upper = np.full(N, 1.0 if cap is None else cap)

    neg_sharpe, neg_sharpe_grad = sharpe_and_gradient(mu, cov, risk_free)
    ref = slsqp(neg_sharpe, neg_sharpe_grad, np.zeros(N), upper)
    w, info = solve_max_sharpe(mu, cov, risk_free, max_weight=cap)
    assert info.status == "optimal"
    assert neg_sharpe(w) <= neg_sharpe(ref) + 1e-9
    np.testing.assert_allclose(w, ref, atol=1e-4)


@pytest.mark.parametrize("seed", range(8))
def test_max_sharpe_long_short_capped_matches_slsqp(qp_mode, seed):
    mu, cov = factor_problem(seed)
    cap = 0.5

    neg_sharpe, neg_sharpe_grad = sharpe_and_gradient(mu, cov, 0.0)
    ref = slsqp(neg_sharpe, neg_sharpe_grad, np.full(N, -cap), np.full(N, cap))
    w = max_sharpe_weights(mu, cov, long_only=False, max_weight=cap)
    assert neg_sharpe(w) <= neg_sharpe(ref) + 1e-9
    np.testing.assert_allclose(w, ref, atol=1e-4)


def split_gross_reference(mu, cov, gamma, cap, gross, prev=None, tau=0.0):
    """SLSQP on the smooth split form: w = u - v with 0 <= u, v <= cap, sum(u + v) <= gross, and
    the turnover ``|w - prev|`` as ``dp + dm`` with ``w - prev = dp - dm``, dp, dm >= 0."""
    prev = np.zeros(N) if prev is None else prev
    eye = np.eye(N)
    weight_of = np.hstack((eye, -eye, 0 * eye, 0 * eye))  # w = weight_of @ z
    trade_of = np.hstack((eye, -eye, -eye, eye))  # w - dp + dm = prev

    def objective(z):
        w = weight_of @ z
        return -1e3 * (w @ mu - 0.5 * gamma * w @ cov @ w - tau * np.sum(z[2 * N :]))

    def gradient(z):
        w = weight_of @ z
        return -1e3 * np.concatenate(
            (weight_of.T[: 2 * N] @ (mu - gamma * cov @ w), np.full(2 * N, -tau))
        )

    cons = [
        {
            "type": "eq",
            "fun": lambda z: np.sum(weight_of @ z) - 1.0,
            "jac": lambda z: weight_of.sum(0),
        },
        {
            "type": "ineq",
            "fun": lambda z: gross - np.sum(z[: 2 * N]),
            "jac": lambda z: -np.concatenate((np.ones(2 * N), np.zeros(2 * N))),
        },
        {"type": "eq", "fun": lambda z: trade_of @ z - prev, "jac": lambda z: trade_of},
    ]
    w0 = np.full(N, 1.0 / N)
    z0 = np.concatenate((w0, np.zeros(N), np.maximum(w0 - prev, 0), np.maximum(prev - w0, 0)))
    res = minimize(
        objective, z0, jac=gradient, method="SLSQP", constraints=cons,
        bounds=[(0, cap)] * (2 * N) + [(0, None)] * (2 * N),
        options={"ftol": 1e-15, "maxiter": 3000},
    )  # fmt: skip
    assert res.success or res.status == 8, res.message
    return weight_of @ res.x


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("gamma", "gross"), [(2.0, 1.4), (10.0, 2.0)])
def test_mean_variance_gross_leverage_matches_split_slsqp(qp_mode, seed, gamma, gross):
    mu, cov = factor_problem(seed)
    ref = split_gross_reference(mu, cov, gamma, 0.6, gross)
    w = mean_variance_weights(
        mu, cov, gamma, long_only=False, max_weight=0.6, max_gross_leverage=gross
    )
    assert np.abs(w).sum() <= gross + 1e-9
    np.testing.assert_allclose(w, ref, atol=1e-4)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tau", [2e-4, 1e-3])
def test_mean_variance_turnover_matches_split_slsqp(qp_mode, seed, tau):
    mu, cov = factor_problem(seed)
    prev = np.random.default_rng(100 + seed).dirichlet(np.ones(N))
    ref = split_gross_reference(mu, cov, 3.0, 0.6, 1.8, prev=prev, tau=tau)
    w, info = solve_mean_variance(
        mu, cov, 3.0, long_only=False, max_weight=0.6, max_gross_leverage=1.8,
        prev_weights=prev, turnover_penalty=tau,
    )  # fmt: skip
    assert info.status == "optimal"
    np.testing.assert_allclose(w, ref, atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_caps_that_leave_one_portfolio_return_it(qp_mode, seed):
    # max_weight * N == budget: every weight must sit at the cap (a degenerate vertex where the
    # kappa-trick rows are linearly dependent); a hair above it the answer is within the hair
    mu, cov = factor_problem(seed)
    for cap, atol in ((1.0 / N, 1e-15), (1.0 / N + 1e-9, 1e-8)):
        for w, info in (
            solve_min_variance(cov, max_weight=cap),
            solve_mean_variance(mu, cov, 2.0, max_weight=cap),
            solve_max_sharpe(mu, cov, max_weight=cap),
        ):
            assert info.status == "optimal" and not info.fallback_used
            np.testing.assert_allclose(w, np.full(N, 1.0 / N), atol=atol)


@pytest.mark.parametrize("seed", range(6))
def test_max_sharpe_at_degenerate_corner_matches_slsqp(qp_mode, seed):
    # four assets far above the rest, cap 1/4: the optimum has four caps and N - 4 zeros active,
    # more active constraints than variables
    mu, cov = factor_problem(seed)
    mu[:4] += 0.02
    neg_sharpe, neg_sharpe_grad = sharpe_and_gradient(mu, cov, 0.0)
    ref = slsqp(neg_sharpe, neg_sharpe_grad, np.zeros(N), np.full(N, 0.25))
    w, info = solve_max_sharpe(mu, cov, max_weight=0.25)
    assert info.status == "optimal"
    np.testing.assert_allclose(w, ref, atol=1e-5)


def test_gross_cap_equal_to_budget_means_long_only():
    mu, cov = factor_problem(2)
    for long_short, long_only in (
        (
            min_variance_weights(cov, long_only=False, max_gross_leverage=1.0),
            min_variance_weights(cov),
        ),
        (
            max_sharpe_weights(mu, cov, long_only=False, max_gross_leverage=1.0),
            max_sharpe_weights(mu, cov),
        ),
        (
            mean_variance_weights(mu, cov, 4.0, long_only=False, max_gross_leverage=1.0),
            mean_variance_weights(mu, cov, 4.0),
        ),
    ):
        np.testing.assert_allclose(long_short, long_only, atol=1e-9)


def test_loose_gross_cap_changes_nothing():
    mu, cov = factor_problem(3)
    free = mean_variance_weights(mu, cov, 10.0, long_only=False)
    capped = mean_variance_weights(
        mu, cov, 10.0, long_only=False, max_gross_leverage=np.abs(free).sum() + 0.1
    )
    np.testing.assert_allclose(capped, free, atol=1e-12)


@pytest.mark.parametrize("seed", [8, 10, 11])
def test_qp_converges_when_active_rows_become_dependent(qp_mode, seed):
    # the raw kappa-trick QP with cap 1/N: at the optimum all N rows y_i - (1/N) 1'y <= 0 are tight
    # but only N - 1 are independent; a rounding-noise step must not add the last one (draws 8
    # and 10 cycled until the iteration cap before that was handled)
    from defialloc.agents.baselines.bench import random_problem

    rng = np.random.default_rng(seed)
    for mu, cov in [random_problem(10, rng) for _ in range(10)]:
        excess = mu / np.abs(mu).max()
        if excess.sum() <= 0:
            continue
        y0 = np.full(10, 1.0 / excess.sum())
        result = qp.solve_qp(
            cov / np.mean(np.diag(cov)), np.zeros(10), np.zeros(10), np.full(10, np.inf), y0,
            eq_matrix=excess[None, :], eq_rhs=np.ones(1),
            ineq_matrix=np.eye(10) - 0.1, ineq_rhs=np.zeros(10),
        )  # fmt: skip
        assert result.status == "optimal"
        np.testing.assert_allclose(result.x / result.x.sum(), 0.1, atol=1e-12)


def test_turnover_penalty_creates_no_trade_region():
    mu, cov = factor_problem(3)
    prev = np.full(N, 1.0 / N)
    # a penalty far above any marginal utility gain: holding prev is optimal
    w = mean_variance_weights(mu, cov, 5.0, prev_weights=prev, turnover_penalty=1.0)
    np.testing.assert_allclose(w, prev, atol=1e-12)
    # zero penalty: the plain optimum
    plain = mean_variance_weights(mu, cov, 5.0)
    np.testing.assert_allclose(
        mean_variance_weights(mu, cov, 5.0, prev_weights=prev, turnover_penalty=0.0), plain
    )
    # a small penalty trades less than the plain optimum does
    small = mean_variance_weights(mu, cov, 5.0, prev_weights=prev, turnover_penalty=2e-4)
    assert np.abs(small - prev).sum() < np.abs(plain - prev).sum()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    gamma=st.floats(0.5, 50.0),
    cap=st.sampled_from([None, 0.15, 0.35, 1.0]),
    budget=st.sampled_from([0.5, 1.0, 1.3]),
)
def test_mean_variance_is_feasible_and_no_worse_than_slsqp(seed, gamma, cap, budget):
    mu, cov = factor_problem(seed)
    if cap is not None and cap * N < budget:
        return

    def utility(w):
        return w @ mu - 0.5 * gamma * w @ cov @ w

    w = mean_variance_weights(mu, cov, gamma, max_weight=cap, budget=budget)
    upper = np.full(N, budget if cap is None else cap)
    ref = slsqp(
        lambda x: -1e3 * utility(x),
        lambda x: -1e3 * (mu - gamma * cov @ x),
        np.zeros(N),
        upper,
        budget=budget,
    )
    assert abs(w.sum() - budget) <= 1e-12 and w.min() >= 0.0 and w.max() <= upper[0] + 1e-15
    assert utility(w) >= utility(ref) - 1e-12


# ------------------------------------------------------------------------------- budgets, warm start


def test_levered_budget_scales_uncapped_long_only_solution():
    # without caps the feasible set scales with the budget, so min variance scales too
    _, cov = factor_problem(5)
    np.testing.assert_allclose(
        min_variance_weights(cov, budget=2.5), 2.5 * min_variance_weights(cov), atol=1e-12
    )


def test_warm_start_from_prev_gives_same_answer():
    mu, cov = factor_problem(7)
    cold = mean_variance_weights(mu, cov, 4.0, max_weight=0.3)
    warm = mean_variance_weights(mu, cov, 4.0, max_weight=0.3, prev_weights=cold)
    np.testing.assert_allclose(warm, cold, atol=1e-12)


# ------------------------------------------------------------------------------------ risk parity


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("budget", [1.0, 2.0])
def test_risk_parity_contributions_equal(seed, budget):
    _, cov = factor_problem(seed, n=12)
    w, info = solve_risk_parity(cov, budget=budget)
    assert info.status == "optimal"
    contributions = w * (cov @ w) / (w @ cov @ w)
    np.testing.assert_allclose(contributions, 1.0 / 12, atol=1e-6 / 12)
    assert np.all(w > 0) and abs(w.sum() - budget) < 1e-12


def test_risk_parity_inverse_vol_for_diagonal_and_two_assets():
    vols = np.array([0.02, 0.04, 0.05])
    expected = (1 / vols) / np.sum(1 / vols)
    np.testing.assert_allclose(risk_parity_weights(np.diag(vols**2)), expected, atol=1e-12)
    # two assets: ERC is inverse-vol whatever the correlation
    cov = np.array([[0.0004, 0.0006], [0.0006, 0.0025]])  # vols 2% and 5%, correlation 0.6
    np.testing.assert_allclose(risk_parity_weights(cov), [5 / 7, 2 / 7], atol=1e-12)


# --------------------------------------------------------------------------------- fallback paths


def test_nan_cov_returns_prev_weights_and_warns():
    _, cov = factor_problem(0)
    cov[2, 3] = cov[3, 2] = np.nan
    prev = np.random.default_rng(0).dirichlet(np.ones(N))
    with pytest.warns(SolverFallbackWarning, match="NaN"):
        w, info = solve_min_variance(cov, prev_weights=prev)
    np.testing.assert_array_equal(w, prev)
    assert info.fallback_used and info.fallback == "prev_weights" and info.status == "nan_input"
    for call in (
        lambda: mean_variance_weights(np.zeros(N), cov, 2.0, prev_weights=prev),
        lambda: max_sharpe_weights(np.ones(N), cov, prev_weights=prev),
        lambda: risk_parity_weights(cov, prev_weights=prev),
    ):
        with pytest.warns(SolverFallbackWarning):
            np.testing.assert_array_equal(call(), prev)


def test_nan_mu_without_prev_returns_equal_weight():
    mu, cov = factor_problem(1)
    mu[0] = np.nan
    with pytest.warns(SolverFallbackWarning, match="equal weight"):
        w, info = solve_mean_variance(mu, cov, 3.0, budget=0.8)
    np.testing.assert_allclose(w, np.full(N, 0.1))
    assert info.fallback == "equal_weight"


def test_singular_cov_falls_back():
    rng = np.random.default_rng(2)
    returns = rng.normal(0, 0.02, (4, N))  # T < N: rank-deficient sample covariance
    cov = np.cov(returns, rowvar=False)
    with pytest.warns(SolverFallbackWarning, match="singular"):
        _, info = solve_min_variance(cov)
    assert info.status == "singular_cov"


def test_solver_failure_falls_back(monkeypatch):
    _, cov = factor_problem(4)
    prev = np.full(N, 1.0 / N)

    def failing(*args, **kwargs):
        out = qp.solve_qp(*args, **kwargs)
        out.status = "max_iter"
        return out

    monkeypatch.setattr(optimizers, "solve_qp", failing)
    with pytest.warns(SolverFallbackWarning, match="iteration cap"):
        w, info = solve_min_variance(cov, prev_weights=prev)
    np.testing.assert_array_equal(w, prev)
    assert info.status == "max_iter" and info.fallback_used


def test_max_sharpe_without_positive_excess_returns_min_variance():
    mu, cov = factor_problem(6)
    mu = -np.abs(mu) - 1e-4  # every asset below rf = 0
    with pytest.warns(SolverFallbackWarning, match="minimum-variance"):
        w, info = solve_max_sharpe(mu, cov)
    np.testing.assert_allclose(w, min_variance_weights(cov), atol=1e-12)
    assert info.status == "no_positive_excess_return" and info.fallback == "min_variance"


def test_optimal_solves_do_not_warn():
    mu, cov = factor_problem(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        min_variance_weights(cov)
        max_sharpe_weights(mu, cov)
        mean_variance_weights(mu, cov, 2.0)
        risk_parity_weights(cov)


# ---------------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda cov, mu: min_variance_weights(cov[:, :3]), "cov must be a square"),
        (lambda cov, mu: min_variance_weights(cov + np.triu(cov, 1)), "cov must be symmetric"),
        (lambda cov, mu: min_variance_weights(cov - 2 * np.eye(N) * cov[0, 0]), "semi-definite"),
        (lambda cov, mu: mean_variance_weights(mu[:3], cov, 1.0), r"mu must have shape \(8,\)"),
        (lambda cov, mu: mean_variance_weights(mu, cov, 0.0), "risk_aversion must be"),
        (
            lambda cov, mu: min_variance_weights(cov, max_weight=1.5),
            r"max_weight must be in \(0, 1\]",
        ),
        (lambda cov, mu: min_variance_weights(cov, max_weight=0.1), "max_weight \\* n_assets"),
        (lambda cov, mu: min_variance_weights(cov, budget=-1.0), "budget must be > 0"),
        (
            lambda cov, mu: min_variance_weights(cov, long_only=False, max_gross_leverage=0.5),
            "max_gross_leverage must be",
        ),
        (
            lambda cov, mu: mean_variance_weights(mu, cov, 1.0, turnover_penalty=0.01),
            "needs prev_weights",
        ),
        (lambda cov, mu: min_variance_weights(cov, prev_weights=np.ones(3)), "prev_weights"),
        (lambda cov, mu: max_sharpe_weights(mu, cov, long_only=False, budget=0.0), "budget"),
    ],
)
def test_invalid_arguments_raise(call, match):
    mu, cov = factor_problem(0)
    with pytest.raises(ValueError, match=match):
        call(cov, mu)


# ------------------------------------------------------------------------------------- benchmark


def test_bench_agrees_with_pypfopt_and_prints(capsys):
    pytest.importorskip("pypfopt")
    from defialloc.agents.baselines.bench import bench_baselines, print_bench_table

    result = bench_baselines(n_assets=6, n_problems=3, seed=1, max_weight=0.4)
    assert result["pypfopt_error"] is None and result["passed"]
    for name in ("min_variance", "max_sharpe", "mean_variance"):
        row = result["methods"][name]
        assert row["max_abs_weight_diff"] <= 1e-4 and row["ours_fallbacks"] == 0
        assert row["speed_ratio"] > 0
    assert result["methods"]["risk_parity"]["pypfopt_mean_s"] is None
    print_bench_table(result)
    assert "max_sharpe" in capsys.readouterr().out


def test_bench_reports_missing_pypfopt(monkeypatch):
    import builtins

    from defialloc.agents.baselines.bench import bench_baselines

    real_import = builtins.__import__

    def no_pypfopt(name, *args, **kwargs):
        if name.startswith("pypfopt"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pypfopt)
    result = bench_baselines(n_assets=4, n_problems=2)
    assert "not installed" in result["pypfopt_error"] and not result["passed"]
    assert result["methods"]["min_variance"]["speed_ratio"] is None
