"""Batched estimators, QP solves and optimizers against their per-window / per-problem counterparts.

The references are independent where one exists (scikit-learn's LedoitWolf, numpy's cov) and
otherwise the per-problem functions, themselves tested against closed forms and SLSQP in
tests/test_baselines_optimizers.py. Problems are strictly convex, so any correct solver returns the
same weights: agreement is required to 1e-8.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from defialloc.agents.baselines import batch_inputs, batch_qp, constraints, make_policy
from defialloc.agents.baselines.batch_inputs import prepare_cov_batch
from defialloc.agents.baselines.batch_l1_qp import solve_qp_l1_batch
from defialloc.agents.baselines.batch_optimizers import (
    solve_max_sharpe_batch,
    solve_mean_variance_batch,
    solve_min_variance_batch,
    solve_risk_parity_batch,
)
from defialloc.agents.baselines.batch_qp import initial_bound_set_batch, solve_qp_batch
from defialloc.agents.baselines.constraints import prepare_cov
from defialloc.agents.baselines.estimators import (
    ewma_cov,
    ewma_cov_batch,
    ledoit_wolf_cov_batch,
    sample_cov,
    sample_cov_batch,
    shrunk_mean,
    shrunk_mean_batch,
)
from defialloc.agents.baselines.l1_qp import solve_qp_l1
from defialloc.agents.baselines.optimizers import (
    solve_max_sharpe,
    solve_mean_variance,
    solve_min_variance,
    solve_risk_parity,
)
from defialloc.agents.baselines.qp import initial_bound_set, solve_qp
from defialloc.agents.policy import MarketView, Policy
from defialloc.envs.config import load_config
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.rollout import run_policy

TOL = 1e-8


@pytest.fixture(autouse=True)
def _quiet_fallbacks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def windows(seed: int, b: int, t: int, n: int) -> np.ndarray:
    """``(b, t, n)`` correlated daily-scale returns; window 0 has a constant column and window 1
    a near-constant one (the edge cases of the shrinkage formula)."""
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0, 0.03, (b, t, 1))
    out = 0.001 + market * rng.uniform(0.5, 1.5, (b, 1, n)) + rng.normal(0.0, 0.02, (b, t, n))
    if b > 1:
        out[0, :, 0] = 0.004
        out[1, :, -1] = 0.002 + 1e-9 * rng.normal(size=t)
    return out


def close(a: np.ndarray, b: np.ndarray, rtol: float = TOL) -> None:
    """Equal to ``rtol`` relative to each matrix's (or vector's) largest entry."""
    axes = tuple(range(1, a.ndim))
    scale = np.maximum(np.abs(b).max(axis=axes, keepdims=True), 1e-300)
    assert np.all(np.abs(a - b) <= rtol * scale), float(np.max(np.abs(a - b) / scale))


# ------------------------------------------------------------------------------------ estimators
@pytest.mark.parametrize(("t", "n"), [(60, 5), (3, 8), (2, 4), (8, 8), (250, 10), (30, 1)])
def test_batched_ledoit_wolf_equals_sklearn(t, n):
    r = windows(t * n, 7, t, n)
    ours = ledoit_wolf_cov_batch(r)
    close(ours, np.stack([LedoitWolf().fit(w).covariance_ for w in r]))
    assert ours.shape == (7, n, n)


@pytest.mark.parametrize(("t", "n"), [(60, 5), (3, 8), (2, 1)])
def test_batched_sample_ewma_and_mean_equal_the_per_window_functions(t, n):
    r = windows(t + n, 6, t, n)
    for ddof in (0, 1):
        close(sample_cov_batch(r, ddof), np.stack([sample_cov(w, ddof) for w in r]))
    close(sample_cov_batch(r), np.stack([np.atleast_2d(np.cov(w, rowvar=False)) for w in r]))
    for halflife, demean in [(1.0, True), (11.2, True), (30.0, False)]:
        close(
            ewma_cov_batch(r, halflife, demean=demean),
            np.stack([ewma_cov(w, halflife, demean=demean) for w in r]),
        )
    for target, s in [("zero", 0.5), ("grand_mean", 0.8), ("grand_mean", 0.0)]:
        close(shrunk_mean_batch(r, target, s), np.stack([shrunk_mean(w, target, s) for w in r]))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: ledoit_wolf_cov_batch(r[0]), r"returns_windows must be a \(B, T, N\)"),
        (lambda r: ledoit_wolf_cov_batch(r[:, :1]), "T >= 2"),
        (
            lambda r: sample_cov_batch(np.where(r > 0.06, np.nan, r)),
            r"returns_windows must be finite, got nan in window \d+ at step \d+, asset",
        ),
        (lambda r: ewma_cov_batch(r, -1.0), "halflife must be"),
        (lambda r: shrunk_mean_batch(r, "zero", 2.0), r"shrinkage must be in \[0, 1\]"),
        (lambda r: shrunk_mean_batch(r, "median"), "target must be"),
        (lambda r: sample_cov_batch(r, ddof=3), "ddof must be 0 or 1"),
    ],
)
def test_batched_estimators_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(windows(0, 3, 20, 4))


# ------------------------------------------------------------------------------------ QP solves
def factor_problems(seed: int, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``b`` daily-scale ``(mu, cov)`` factor-model problems."""
    rng = np.random.default_rng(seed)
    loadings = np.concatenate(
        (rng.uniform(0.6, 1.4, (b, n, 1)), rng.normal(0, 0.5, (b, n, 2))), axis=2
    ) * np.array([0.035, 0.015, 0.015])
    idio = rng.uniform(0.015, 0.04, (b, n)) ** 2
    cov = loadings @ loadings.transpose(0, 2, 1) + idio[:, :, None] * np.eye(n)
    mu = rng.normal(0.001, 0.002, (b, n))
    return mu, cov


def unit_hessians(cov: np.ndarray) -> np.ndarray:
    return cov / (np.einsum("bii->b", cov) / cov.shape[1])[:, None, None]


@pytest.mark.parametrize(("n", "cap"), [(5, None), (5, 0.3), (10, 0.15), (6, 0.5)])
def test_solve_qp_batch_equals_solve_qp(n, cap):
    b = 60
    mu, cov = factor_problems(n, b, n)
    H = unit_hessians(cov)
    g = -mu / 0.0001
    lo, up = np.zeros((b, n)), np.full((b, n), np.inf if cap is None else cap)
    rng = np.random.default_rng(1)
    x0 = np.minimum(rng.dirichlet(np.ones(n), b), up)
    x0 = np.where(x0.sum(1, keepdims=True) < 1.0, np.full((b, n), 1.0 / n), x0)
    wl = x0 <= lo
    res = solve_qp_batch(H, g, lo, up, x0, eq_matrix=np.ones((1, n)), eq_rhs=[1.0], at_lower=wl)
    for i in range(b):
        ref = solve_qp(H[i], g[i], lo[i], up[i], x0[i], eq_matrix=np.ones((1, n)),
                       eq_rhs=np.ones(1), at_lower=wl[i])  # fmt: skip
        assert res.status[i] == ref.status == "optimal"
        np.testing.assert_allclose(res.x[i], ref.x, atol=TOL)


def test_solve_qp_batch_with_rows_equals_solve_qp():
    # max Sharpe's kappa problem: per-problem equality row excess'y = 1, cap rows e_i' - c 1' <= 0
    n, b, c = 6, 50, 0.3
    mu, cov = factor_problems(7, b, n)
    excess = np.abs(mu) + 1e-4
    excess[::3, :3] *= -1.0
    excess /= np.abs(excess).max(axis=1, keepdims=True)
    H = unit_hessians(cov)
    G, h = np.eye(n) - c, np.zeros(n)
    w0 = np.full((b, n), 1.0 / n)
    y0 = w0 / np.einsum("bi,bi->b", excess, w0)[:, None]
    y0 = np.where((y0 > 0).all(1, keepdims=True), y0, np.nan)
    keep = np.flatnonzero(np.isfinite(y0).all(1))
    H, excess, y0 = H[keep], excess[keep], y0[keep]
    lo, up = np.zeros_like(y0), np.full_like(y0, np.inf)
    res = solve_qp_batch(H, np.zeros_like(y0), lo, up, y0, eq_matrix=excess[:, None, :],
                         eq_rhs=np.ones((len(keep), 1)), ineq_matrix=G, ineq_rhs=h)  # fmt: skip
    for i in range(len(keep)):
        ref = solve_qp(H[i], np.zeros(n), lo[i], up[i], y0[i], eq_matrix=excess[i][None],
                       eq_rhs=np.ones(1), ineq_matrix=G, ineq_rhs=h)  # fmt: skip
        assert res.status[i] == ref.status
        np.testing.assert_allclose(res.x[i], ref.x, atol=TOL * max(1.0, np.abs(ref.x).max()))


@pytest.mark.parametrize(("n", "cap", "tau"), [(6, None, 2e-4), (5, 0.4, 1e-3), (8, None, 0.0)])
def test_solve_qp_l1_batch_equals_solve_qp_l1(n, cap, tau):
    b = 64
    mu, cov = factor_problems(3 * n, b, n)
    H = unit_hessians(cov)
    scale = 2.0 * np.einsum("bii->b", cov) / n
    rng = np.random.default_rng(n)
    prev = rng.dirichlet(np.ones(n), b)
    if cap is not None:
        prev = np.full((b, n), 1.0 / n) + rng.uniform(-0.05, 0.05, (b, n))
        prev += (1.0 - prev.sum(1, keepdims=True)) / n
    lo, up = np.zeros((b, n)), np.full((b, n), np.inf if cap is None else cap)
    g, taus = -mu / scale[:, None], tau / scale
    res = solve_qp_l1_batch(H, g, lo, up, prev, eq_matrix=np.ones((1, n)), eq_rhs=[1.0],
                            turnover_anchor=prev, turnover_penalty=taus)  # fmt: skip
    for i in range(b):
        ref = solve_qp_l1(H[i], g[i], lo[i], up[i], prev[i], eq_matrix=np.ones((1, n)),
                          eq_rhs=np.ones(1), turnover_anchor=prev[i], turnover_penalty=taus[i])  # fmt: skip
        assert res.status[i] == ref.status == "optimal"
        np.testing.assert_allclose(res.x[i], ref.x, atol=TOL)


def test_initial_bound_set_batch_equals_initial_bound_set():
    rng = np.random.default_rng(3)
    x0 = np.where(rng.random((40, 6)) < 0.5, 0.0, rng.uniform(0.0, 0.3, (40, 6)))
    x0[::4] = 0.3  # every variable at its upper bound: the lowest indices are freed
    lo, up = np.zeros(6), np.full(6, 0.3)
    for n_eq in (1, 2):
        wl, wu = initial_bound_set_batch(x0, lo, up, n_eq)
        for i in range(len(x0)):
            ref_l, ref_u = initial_bound_set(x0[i], lo, up, n_eq)
            assert (wl[i] == ref_l).all() and (wu[i] == ref_u).all()


def test_problems_the_batch_does_not_finish_go_to_the_per_problem_solver(monkeypatch):
    n, b = 6, 20
    mu, cov = factor_problems(11, b, n)
    H, g = unit_hessians(cov), -mu / 1e-4
    lo, up, x0 = np.zeros((b, n)), np.full((b, n), 0.3), np.full((b, n), 1.0 / n)
    wl, wu = initial_bound_set_batch(x0, lo, up, 1)
    fast = solve_qp_batch(H, g, lo, up, x0, eq_matrix=np.ones((1, n)), eq_rhs=[1.0],
                          at_lower=wl, at_upper=wu)  # fmt: skip
    monkeypatch.setattr(batch_qp, "BATCH_ROUNDS", 1)
    slow = solve_qp_batch(H, g, lo, up, x0, eq_matrix=np.ones((1, n)), eq_rhs=[1.0],
                          at_lower=wl, at_upper=wu)  # fmt: skip
    assert slow.serial.sum() > 0 and fast.serial.sum() < slow.serial.sum()
    np.testing.assert_allclose(slow.x, fast.x, atol=TOL)


# ------------------------------------------------------------------------------------ optimizers
def optimizer_inputs(seed: int, b: int = 40, n: int = 6):
    """Problems with the optimizers' edge cases: a NaN covariance, a singular one, NaN means and
    all-negative means (no positive excess return) in the first rows."""
    mu, cov = factor_problems(seed, b, n)
    rng = np.random.default_rng(seed)
    prev = rng.dirichlet(np.ones(n), b) * rng.uniform(0.97, 1.0, (b, 1))
    cov[0, 0, 0] = np.nan
    x = rng.normal(0, 0.02, (3, n))
    cov[1] = np.cov(x, rowvar=False)  # rank 2: singular
    mu[2, 1] = np.nan
    mu[3] = -np.abs(mu[3]) - 1e-4
    return mu, cov, prev


@pytest.mark.parametrize("cap", [None, 0.4])
def test_batch_optimizers_equal_the_per_problem_ones(cap):
    mu, cov, prev = optimizer_inputs(5)
    b = len(mu)
    cases = [
        (
            solve_min_variance_batch(cov, max_weight=cap, budget=0.9, prev_weights=prev * 0.9),
            [solve_min_variance(cov[i], max_weight=cap, budget=0.9, prev_weights=prev[i] * 0.9)
             for i in range(b)],
        ),
        (
            solve_max_sharpe_batch(mu, cov, 0.0, max_weight=cap, prev_weights=prev),
            [solve_max_sharpe(mu[i], cov[i], 0.0, max_weight=cap, prev_weights=prev[i])
             for i in range(b)],
        ),
    ]  # fmt: skip
    for tau in (0.0, 3e-4):
        batch = solve_mean_variance_batch(
            mu, cov, 2.0, max_weight=cap, prev_weights=prev, turnover_penalty=tau
        )
        ref = [
            solve_mean_variance(mu[i], cov[i], 2.0, max_weight=cap, prev_weights=prev[i],
                                turnover_penalty=tau)
            for i in range(b)
        ]  # fmt: skip
        cases.append((batch, ref))
    if cap is None:
        cases.append(
            (
                solve_risk_parity_batch(cov, prev_weights=prev),
                [solve_risk_parity(cov[i], prev_weights=prev[i]) for i in range(b)],
            )
        )
    for (weights, info), refs in cases:
        np.testing.assert_allclose(weights, np.stack([w for w, _ in refs]), atol=TOL)
        assert list(info.status) == [r.status for _, r in refs]
        assert list(info.fallback) == [r.fallback for _, r in refs]
    statuses = set(cases[1][0][1].status)
    assert {"nan_input", "singular_cov", "no_positive_excess_return", "optimal"} <= statuses


def test_prepare_cov_batch_equals_prepare_cov_and_names_the_bad_matrix():
    _, cov, _ = optimizer_inputs(9, b=8)
    hessian, scale, status = prepare_cov_batch(cov)
    for i in range(len(cov)):
        h_ref, s_ref, st_ref = prepare_cov(cov[i])
        assert status[i] == st_ref
        if not st_ref:
            np.testing.assert_allclose(hessian[i], h_ref, rtol=1e-14)
            assert scale[i] == pytest.approx(s_ref, rel=1e-14)
    bad = cov.copy()
    bad[4, 0, 1] += 1e-3
    with pytest.raises(ValueError, match=r"cov\[4\] must be symmetric"):
        prepare_cov_batch(bad)
    bad = cov.copy()
    bad[5] = -np.eye(bad.shape[1]) * 1e-4
    with pytest.raises(ValueError, match=r"cov\[5\] must be positive semi-definite"):
        prepare_cov_batch(bad)
    with pytest.raises(ValueError, match=r"cov must be a \(B, N, N\) stack"):
        prepare_cov_batch(cov[0])


def test_batch_optimizers_reject_bad_arguments():
    mu, cov, prev = optimizer_inputs(2, b=4)
    with pytest.raises(ValueError, match=r"prev_weights must have shape \(4, 6\)"):
        solve_min_variance_batch(cov, prev_weights=prev[:, :3])
    with pytest.raises(ValueError, match="risk_aversion must be"):
        solve_mean_variance_batch(mu, cov, 0.0)
    with pytest.raises(ValueError, match="turnover_penalty > 0 needs prev_weights"):
        solve_mean_variance_batch(mu, cov, 1.0, turnover_penalty=0.1)
    with pytest.raises(ValueError, match=r"mu must have shape \(4, 6\)"):
        solve_max_sharpe_batch(mu[:, :2], cov)
    with pytest.raises(ValueError, match="max_weight"):
        solve_min_variance_batch(cov, max_weight=0.1)
    with pytest.raises(ValueError, match="prev_weights must be finite.*row 1"):
        solve_risk_parity_batch(
            cov, prev_weights=np.where(np.arange(4)[:, None] == 1, np.nan, prev)
        )


# ------------------------------------------------------------------------------------ policies
class Twin(Policy):
    """Acts with the batched policy and records how far the per-env path's targets are from its
    targets on the same views (the per-env copy keeps its own state: the same trades follow)."""

    def __init__(self, policy):  # noqa: ANN001
        self.fast, self.ref = policy, copy.deepcopy(policy)
        self.ref.batched = False
        self.name, self.lookback, self.uses_oracle = (
            policy.name,
            policy.lookback,
            policy.uses_oracle,
        )
        self.max_diff = 0.0

    def target_weights(self, view: MarketView) -> np.ndarray:
        fast, ref = self.fast.target_weights(view), self.ref.target_weights(view)
        self.max_diff = max(self.max_diff, float(np.abs(fast - ref).max()))
        return fast


@pytest.fixture(scope="module")
def short_cfg():
    return load_config(None, {"env.horizon": 30})


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("min_variance", {}),
        ("min_variance", {"cov_estimator": "ewma", "rebalance_every": 2, "max_weight": 0.3}),
        ("max_sharpe", {"cov_estimator": "sample", "mean_target": "zero"}),
        ("max_sharpe", {"rebalance_every": 3}),
        ("mean_variance", {"rebalance_every": 2}),
        ("mean_variance", {"allow_cash": False, "max_weight": 0.4, "cash_weight": 0.1}),
        ("risk_parity", {"rebalance_every": 3, "lookback": 20}),
        ("oracle_mean_variance", {}),
        ("oracle_mean_variance", {"allow_cash": False, "turnover_cost": 0.0}),
    ],
)
def test_batched_policy_targets_equal_the_per_env_path_in_a_backtest(short_cfg, name, params):
    twin = Twin(make_policy(name, short_cfg, **params))
    run_policy(short_cfg, twin, scenario_seeds("test", 16))
    assert twin.fast.solves > 0 and twin.fast.solves == twin.ref.solves
    assert twin.max_diff <= TOL
    fallbacks = {k: v for k, v in twin.fast.diagnostics.items() if k.startswith("fallback_")}
    assert fallbacks == {k: v for k, v in twin.ref.diagnostics.items() if k.startswith("fallback_")}


def test_oracle_validates_its_fixed_covariances_once(short_cfg, monkeypatch):
    policy = make_policy("oracle_mean_variance", short_cfg)

    def refuse(*args, **kwargs):
        raise AssertionError("covariance validated again during the backtest")

    monkeypatch.setattr(batch_inputs, "prepare_cov_batch", refuse)
    monkeypatch.setattr(constraints, "check_symmetric", refuse)
    monkeypatch.setattr(constraints, "prepare_cov", refuse)
    run_policy(short_cfg, policy, scenario_seeds("test", 4))
    assert policy.solves == 4 * short_cfg.env.horizon
