"""The true ceiling: its QP (batched solver vs solve_qp and SLSQP), its actions, the true state the
rollout tells it, the ex-ante growth of every policy (bounded per step by the ceiling's), refusals
off synthetic markets, and the share-of-gap statistics of the report."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

from defialloc.agents.baselines import FEASIBLE_BASELINES, UPPER_REFERENCES, make_policy
from defialloc.agents.baselines.batched_qp import solve_batch
from defialloc.agents.baselines.ceiling import CeilingPolicy, CeilingProblem
from defialloc.agents.baselines.qp import solve_qp
from defialloc.agents.policy import (
    FixedLeveredPolicy,
    FixedWeightsPolicy,
    Policy,
    RandomPolicy,
    parse_weights,
)
from defialloc.envs.actions import actions_to_weights, weights_to_actions
from defialloc.envs.config import REPO_ROOT, load_config
from defialloc.envs.leverage_actions import ActionLayout, leverage_target
from defialloc.envs.market.config import DAYS_PER_YEAR
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.seeds import scenario_seeds
from defialloc.envs.step_moments import (
    InstrumentSpec,
    StepMoments,
    expected_log_growth,
    step_moments,
    true_state,
)
from defialloc.evaluation import statistics as st
from defialloc.evaluation.backtest import run_backtest, run_period_backtest
from defialloc.evaluation.ex_ante import protocol_series
from defialloc.evaluation.report_ex_ante import BOUND_ROW, ex_ante_frame, ex_ante_statements
from defialloc.evaluation.rollout import run_policy
from defialloc.evaluation.tracking_policies import policy_metrics

LEVERAGE = REPO_ROOT / "configs" / "leverage.yaml"


@pytest.fixture(autouse=True)
def _quiet_fallbacks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@pytest.fixture(scope="module")
def spot_cfg():
    return load_config(None, {"env.horizon": 40})


@pytest.fixture(scope="module")
def lev_cfg():
    return load_config(LEVERAGE, {"env.horizon": 40})


def _states(cfg, k: int = 3):
    """``StepMoments`` ``(k, T)`` of the true states of ``k`` test scenarios."""
    seeds = scenario_seeds("test", k)
    w, t = cfg.env.warmup, cfg.env.horizon
    paths = sample_paths(cfg.market, seeds, w + t + 1, w)
    tau = w + np.broadcast_to(np.arange(t), (k, t))
    state = true_state(paths, protocol_series(cfg, paths, seeds), tau)
    return (
        InstrumentSpec.from_config(cfg),
        state,
        step_moments(InstrumentSpec.from_config(cfg), state),
    )


# ------------------------------------------------------------------------------------ the QP
def test_batched_solver_matches_solve_qp_on_random_problems():
    """Random definite Hessians, shared random rows (with bounds as rows), feasible start 0: the
    batched primal active-set optimum equals solve_qp's, cold and warm-started."""
    rng = np.random.default_rng(3)
    b, n, m = 40, 7, 9
    rows = np.vstack([rng.normal(size=(m, n)), -np.eye(n)])  # general rows and z >= 0
    rhs = np.concatenate([rng.uniform(0.5, 2.0, m), np.zeros(n)])
    a = rng.normal(size=(b, n, n))
    hessian = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(n)
    linear = rng.normal(size=(b, n)) * 3
    cold = solve_batch(hessian, linear, rows, rhs, np.zeros((b, n)))
    assert (cold.status == "optimal").all() and cold.fallbacks == 0
    for s in range(b):
        ref = solve_qp(
            hessian[s], linear[s], np.full(n, -np.inf), np.full(n, np.inf), np.zeros(n),
            ineq_matrix=rows, ineq_rhs=rhs,
        )  # fmt: skip
        assert ref.status == "optimal"
        np.testing.assert_allclose(cold.z[s], ref.x, atol=1e-9)
    assert np.all(cold.z @ rows.T <= rhs + 1e-12)
    warm = solve_batch(hessian, linear * 1.05, rows, rhs, cold.z, cold.working)
    again = solve_batch(hessian, linear * 1.05, rows, rhs, np.zeros((b, n)))
    np.testing.assert_allclose(warm.z, again.z, atol=1e-9)
    assert warm.iterations.mean() < again.iterations.mean()


def _slsqp_ceiling(spec: InstrumentSpec, mean: np.ndarray, cov: np.ndarray) -> float:
    """max g by SLSQP on an independent split form: x >= 0, d, short s >= 0 and long p >= 0 perps
    (y = p - s) with s + p <= x and the margin on s + p."""
    n = spec.n_assets
    nd = int(spec.lending)
    npp = n if spec.perps else 0

    def unpack(z):
        x, d = z[:n], (z[n] if spec.lending else 0.0)
        s, p = z[n + nd : n + nd + npp], z[n + nd + npp :]
        return x, d, s, p

    def vec(z):
        x, d, s, p = unpack(z)
        return np.concatenate([x, [d] if spec.lending else [], p - s])

    def neg_g(z):
        v = vec(z)
        return -(v @ mean - 0.5 * v @ cov @ v)

    cons = []
    cash = lambda z: 1 + unpack(z)[1] - unpack(z)[0].sum()  # noqa: E731
    if spec.perps:
        cons.append({"type": "ineq", "fun": lambda z: unpack(z)[0] - unpack(z)[2] - unpack(z)[3]})
        cons.append(
            {
                "type": "ineq",
                "fun": lambda z: (
                    cash(z) - spec.margin_buffer * spec.imf @ (unpack(z)[2] + unpack(z)[3])
                ),
            }
        )
    else:
        cons.append({"type": "ineq", "fun": cash})
    if spec.lending:
        cons.append(
            {
                "type": "ineq",
                "fun": lambda z: spec.ltv_buffer * spec.ltv @ unpack(z)[0] - unpack(z)[1],
            }
        )
    bounds = (
        [(0, None)] * n + ([(0, spec.max_leverage)] if spec.lending else []) + [(0, None)] * 2 * npp
    )
    best = np.inf
    for start in (np.zeros(len(bounds)), np.full(len(bounds), 0.1)):
        res = minimize(
            neg_g,
            start,
            method="SLSQP",
            bounds=bounds,
            constraints=cons,
            options={"ftol": 1e-15, "maxiter": 2000},
        )
        best = min(best, res.fun)
    return -best


@pytest.mark.parametrize("which", ["spot", "lev"])
def test_ceiling_matches_an_independent_solver(which, spot_cfg, lev_cfg):
    cfg = spot_cfg if which == "spot" else lev_cfg
    spec, _, m = _states(cfg, 2)
    problem = CeilingProblem(spec)
    for k, t in ((0, 0), (1, 17), (0, 39)):
        one = StepMoments(m.const[k, t : t + 1], m.mean[k, t : t + 1], m.cov[k, t : t + 1])
        v, res = problem.solve(one)
        assert res.status[0] == "optimal"
        g = float(expected_log_growth(one, v)[0]) - float(one.const[0])
        g_ref = _slsqp_ceiling(spec, m.mean[k, t], m.cov[k, t])
        assert g >= g_ref - 1e-10  # never below a general-purpose solver
        assert g - g_ref < 1e-7  # and the same optimum (SLSQP's precision)
        assert np.all(res.z[0] @ problem.rows.T <= problem.rhs + 1e-12)


def test_ceiling_actions_ask_the_env_for_its_exposures(lev_cfg):
    """Decoding the actions as the env does (weights, leverage target and its clip, hedge ratios)
    gives back x, d and y."""
    policy = make_policy("ceiling", lev_cfg)
    spec = policy.spec
    v = np.array(
        [
            [0.9, 1.2, 0.0, 0.2, 0.0, 1.3, 0.0, -1.2, 0.0, 0.1, 0.0],
            [0.5, 0.0, 0.3, 0.0, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    layout = ActionLayout.for_config(lev_cfg.env, 5)
    spot, lev_a, hedge = layout.split(policy.actions(v))
    w = actions_to_weights(spot)
    lev = leverage_target(lev_a, w, spec.ltv, spec.max_leverage, spec.ltv_buffer)
    np.testing.assert_allclose(lev, v[:, 5], atol=1e-12)
    x = w[:, :-1] * (1 + lev)[:, None]
    np.testing.assert_allclose(x, v[:, :5], atol=1e-12)
    np.testing.assert_allclose(-hedge * x, v[:, 6:], atol=1e-12)
    spot_policy = make_policy("ceiling", load_config())
    np.testing.assert_allclose(
        spot_policy.actions(np.array([[0.2, 0.3, 0.0, 0.0, 0.1]])),
        weights_to_actions(np.array([[0.2, 0.3, 0, 0, 0.1, 0.4]])),
    )


# ------------------------------------------------------------------------------------ the true state
class _Spy(Policy):
    """Records what an upper reference is told; holds cash."""

    name = "spy"
    uses_oracle = True

    def __init__(self, layout: ActionLayout) -> None:
        self.seen: list[dict] = []
        self.layout = layout

    def act(self, observation, view):
        self.seen.append({k: v.copy() for k, v in view.oracle.items()})
        return np.tile(self.layout.safe_action(), (observation.shape[0], 1))


def test_the_rollout_tells_upper_references_the_true_state(lev_cfg):
    seeds = scenario_seeds("test", 2)
    w = lev_cfg.env.warmup
    paths = sample_paths(lev_cfg.market, seeds, w + 41, w)
    spy = _Spy(ActionLayout.for_config(lev_cfg.env, 5))
    run_policy(lev_cfg, spy, seeds)
    series = protocol_series(lev_cfg, paths, seeds)
    for t in (0, 13, 39):
        seen = spy.seen[t]
        np.testing.assert_array_equal(seen["regime"], paths.regime[:, w + t])
        np.testing.assert_array_equal(seen["cond_var"], paths.cond_var[:, w + t + 1])  # h_{t+1}
        for name in ("borrow_rate", "cash_supply_rate", "supply_rate", "basis", "funding"):
            np.testing.assert_array_equal(seen[name], series[name][:, w + t])
    # the carries the moments assume are the env's own growth factors of the quoted rates
    dt = lev_cfg.market.step_days / DAYS_PER_YEAR
    np.testing.assert_allclose(
        series["debt_growth"], np.exp(series["borrow_rate"] * dt), rtol=1e-15
    )
    np.testing.assert_allclose(series["supply_growth"], 1 + series["supply_rate"] * dt, rtol=1e-15)
    np.testing.assert_allclose(
        series["cash_growth"], 1 + series["cash_supply_rate"] * dt, rtol=1e-15
    )


def test_the_rollout_records_post_trade_debt_and_perps(lev_cfg):
    weights = parse_weights("BTC=0.3,ETH=0.3", tuple(lev_cfg.market.assets))
    policy = FixedLeveredPolicy(weights, lev_cfg, leverage=0.5, hedge=0.5)
    rec = run_policy(lev_cfg, policy, scenario_seeds("test", 2))
    assert rec.debt_to_equity.shape == (2, 40) and rec.perp_to_equity.shape == (2, 40, 5)
    np.testing.assert_allclose(rec.debt_to_equity, 0.5, atol=0.03)  # band and costs
    x = rec.weights[:, :, :5] * (1 + rec.debt_to_equity)[..., None]
    np.testing.assert_allclose(x[:, :, :2], 0.45, atol=0.03)
    np.testing.assert_allclose(rec.perp_to_equity[:, :, :2], -0.5 * x[:, :, :2], atol=0.02)
    assert np.all(rec.perp_to_equity[:, :, 2:] == 0)
    spot = run_policy(
        load_config(None, {"env.horizon": 5}),
        FixedWeightsPolicy(weights),
        scenario_seeds("test", 1),
    )
    assert spot.debt_to_equity is None and spot.perp_to_equity is None


# ------------------------------------------------------------------------------------ the bound
def _policies(cfg, levered: bool) -> list:
    names = ["equal_weight", "buy_and_hold", "min_variance", "oracle_mean_variance"]
    out: list = list(names)
    if levered:
        w = parse_weights("BTC=0.3,ETH=0.3,SOL=0.1", tuple(cfg.market.assets))
        out.append(FixedLeveredPolicy(w, cfg, leverage=0.6, hedge=0.7, name="levered_hedged"))
    out.append(RandomPolicy(ActionLayout.for_config(cfg.env, 5).dim, seed=7))
    return out


@pytest.mark.parametrize("which", ["spot", "lev"])
def test_the_ceiling_bounds_every_policys_ex_ante_growth_at_every_step(which, spot_cfg, lev_cfg):
    cfg = spot_cfg if which == "spot" else lev_cfg
    result = run_backtest(
        cfg, _policies(cfg, which == "lev"), scenario_seeds("test", 4), progress=False, chunk_size=3
    )
    detail = result.ex_ante_detail
    assert detail is not None and detail.ceiling.shape == (4, 40)
    assert detail.solver["solves"] == 160 and set(detail.solver) == {"solves", "fallbacks"}
    for name, g in detail.steps.items():
        live = result.records[name].alive
        assert np.isfinite(g[live]).all(), name
        assert np.all(g[live] <= detail.ceiling[live] + 1e-10), name  # per step
        assert np.all(result.ex_ante[name] <= result.ex_ante_ceiling + 1e-10), (
            name
        )  # and on the mean
    assert (detail.ceiling > detail.steps["equal_weight"]).mean() > 0.9  # a real gap, not a tie
    if which == "lev":
        assert (detail.steps["levered_hedged"] != detail.steps["equal_weight"]).all()
    table = result.metrics_table()
    for col in ("ex_ante_log_growth", "ex_ante_ceiling_log_growth"):
        assert table[col].notna().all()
    means = policy_metrics(table, "min_variance")  # what the policy's MLflow run logs
    assert means["ex_ante_log_growth"] == pytest.approx(result.ex_ante["min_variance"].mean())
    frame = result.series_frame()
    assert {"ex_ante_log_growth", "ex_ante_ceiling_log_growth"} <= set(frame.columns)
    assert result.diagnostics["equal_weight"]["ex_ante_outside_steps"] == 0


def test_the_executed_ceiling_runs_through_the_env(spot_cfg):
    """Spot: it trades to its targets, so its own ex-ante growth is the bound's up to the band and
    costs; it pays costs like any policy."""
    result = run_backtest(
        spot_cfg, ["equal_weight", "ceiling"], scenario_seeds("test", 3), progress=False
    )
    detail = result.ex_ante_detail
    gap = detail.ceiling - detail.steps["ceiling"]
    assert np.all(gap >= -1e-10) and np.median(gap) < 0.02 * np.median(detail.ceiling)
    assert result.records["ceiling"].fees_usd.sum() > 0
    assert result.diagnostics["ceiling"]["solves"] == 3 * 40


def test_upper_references_are_refused_off_synthetic_markets(spot_cfg):
    assert set(UPPER_REFERENCES) == {"oracle_mean_variance", "ceiling"}
    assert not set(UPPER_REFERENCES) & set(FEASIBLE_BASELINES)
    replay = load_config(None, {"market.source": "replay"})
    with pytest.raises(ValueError, match="synthetic"):
        make_policy("ceiling", replay)
    with pytest.raises(ValueError, match="upper reference"):
        run_period_backtest(spot_cfg, ["equal_weight", "ceiling"], "2022-01-01", "2022-02-01")
    with pytest.raises(ValueError, match="ceiling"):
        CeilingPolicy(5, spot_cfg, risk_aversion=2.0)  # no tuning parameters


# ------------------------------------------------------------------------------------ statistics
def test_ratio_of_means_ci_and_the_share_of_the_gap():
    rng = np.random.default_rng(0)
    den = rng.uniform(1.0, 2.0, 50)
    ci = st.ratio_of_means_ci(0.3 * den, den, n_boot=500)
    assert ci == pytest.approx((0.3, 0.3, 0.3))
    num = rng.normal(0.5, 0.2, 50)
    ci = st.ratio_of_means_ci(num, den, n_boot=500)
    assert ci.point == pytest.approx(num.mean() / den.mean()) and ci.low < ci.point < ci.high
    with pytest.raises(ValueError, match="mean 0"):
        st.ratio_of_means_ci(num, np.zeros(50))
    # hand-built group: equal weight at 1, the ceiling at 3, a policy at 2 -> half of the gap
    ceiling = np.full(20, 3e-3) + rng.normal(0, 1e-5, 20)
    ew = np.full((1, 20), 1e-3)
    frame = ex_ante_frame({"equal_weight": ew, "p": (ew + ceiling) / 2}, ceiling, 365.0, n_boot=200)
    assert frame.loc["p", "share_of_gap"] == pytest.approx(0.5)
    assert frame.loc["equal_weight", "share_of_gap"] == 0.0
    assert frame.loc[BOUND_ROW, "share_of_gap"] == pytest.approx(1.0)
    assert frame.loc[BOUND_ROW, "g_annual"] == pytest.approx(365 * ceiling.mean())
    text = " ".join(ex_ante_statements(frame))
    assert "captures 50%" in text and "not realized results" in text
