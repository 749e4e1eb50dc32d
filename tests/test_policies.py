"""Baseline policies: registry, trailing-data-only behaviour, schedules, and the oracle's true moments."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.covariance import LedoitWolf

from defialloc.agents.baselines import BASELINES, make_policy
from defialloc.agents.baselines.oracle import true_moments_by_regime
from defialloc.agents.baselines.policies import PROTOCOL_BASELINES
from defialloc.agents.policy import MarketView
from defialloc.envs.config import load_config
from defialloc.envs.market.sources import sample_paths
from defialloc.envs.market.synthetic import generate_synthetic_paths
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.rollout import run_policy

#: the baselines a spot config runs (the lending/perps ones: tests/test_strong_baselines.py)
ALL = [n for n in BASELINES if n not in PROTOCOL_BASELINES]


@pytest.fixture(scope="module")
def cfg():
    # risk pays (expected simple return 30 %/yr in every regime), so the oracle holds risky assets
    drift = {"kind": "arithmetic", "simple_return_per_year": 0.3}
    return load_config({"market": {"synthetic": {"drift": drift}}, "env": {"horizon": 60}})


@pytest.fixture(autouse=True)
def _quiet_fallbacks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def test_registry_names_and_errors(cfg):
    assert ALL == [
        "equal_weight",
        "buy_and_hold",
        "min_variance",
        "max_sharpe",
        "mean_variance",
        "risk_parity",
        "oracle_mean_variance",
        "static_tangency",
        "equal_weight_band",
        "inverse_vol",
        "vol_target",
        "ceiling",
    ]
    protocol = ["levered_vol_target", "carry", "covered_call", "protective_put", "delta_hedger"]
    assert sorted(BASELINES) == sorted([*ALL, *protocol])
    for name in ALL:
        assert make_policy(name, cfg).name == name
    with pytest.raises(ValueError, match="unknown policy 'nope'.*equal_weight"):
        make_policy("nope", cfg)
    with pytest.raises(ValueError, match="rebalance_every"):
        make_policy("min_variance", cfg, rebalance_every=0)
    with pytest.raises(ValueError, match="lookbak"):
        make_policy("min_variance", cfg, lookbak=10)
    with pytest.raises(ValueError, match="max_weight=0.1.*infeasible"):
        make_policy("min_variance", cfg, max_weight=0.1)  # 5 assets x 0.1 < 1
    replay = load_config(cfg, {"market.source": "replay"})
    with pytest.raises(ValueError, match="synthetic"):
        make_policy("oracle_mean_variance", replay)


def test_yaml_params_are_the_defaults_and_kwargs_override(cfg):
    p = make_policy("equal_weight", cfg)
    assert p.params.rebalance_every == 90  # configs/evaluation/default.yaml (tuned)
    assert make_policy("equal_weight", cfg, rebalance_every=3).params.rebalance_every == 3


def test_buy_and_hold_never_trades_after_the_first_step(cfg):
    rec = run_policy(cfg, make_policy("buy_and_hold", cfg), scenario_seeds("test", 4))
    assert np.all(rec.turnover[:, 0] > 0.4)  # cash -> fully invested: one-sided turnover ~0.5
    assert np.all(rec.turnover[:, 1:] == 0.0)
    for kind, cost in rec.costs_usd.items():
        assert np.all(cost[:, 1:] == 0.0), kind
    # the risky units never change, so after step 0 the value moves only with prices
    w0 = rec.weights[:, 0, :-1]
    np.testing.assert_allclose(w0, 0.2, atol=0.02)


def test_equal_weight_trades_only_on_its_schedule(cfg):
    policy = make_policy("equal_weight", cfg, rebalance_every=10, no_trade_band=0.0)
    rec = run_policy(cfg, policy, scenario_seeds("test", 4))
    steps = np.arange(rec.horizon)
    assert np.all(rec.turnover[:, steps % 10 != 0] == 0.0)
    # right after a rebalance every asset is near 1/5 (env band 1%, buys scaled down to pay costs)
    np.testing.assert_allclose(rec.weights[:, steps % 10 == 0, :-1], 0.2, atol=0.025)


@pytest.mark.parametrize("name", ALL)
def test_baselines_act_only_on_trailing_data(cfg, name):
    """Same paths up to a cut, different futures after it: identical decisions up to the cut."""
    seeds = scenario_seeds("test", 3)
    warmup, horizon = cfg.env.warmup, cfg.env.horizon
    paths = sample_paths(cfg.market, seeds, warmup + horizon + 1, warmup)
    cut = 30  # decisions at steps 0..cut see prices up to index warmup + cut
    shock = np.exp(
        np.random.default_rng(1).normal(0, 0.2, paths.close[:, warmup + cut + 1 :].shape)
    )
    future = dict(
        close=paths.close.copy(),
        high=paths.high.copy(),
        low=paths.low.copy(),
    )
    for key in future:
        future[key][:, warmup + cut + 1 :] *= shock
    altered = dataclasses.replace(paths, **future)
    daily = {} if name == "ceiling" else {"rebalance_every": 1}  # the ceiling acts every step
    a = run_policy(cfg, make_policy(name, cfg, **daily), seeds, paths=paths)
    b = run_policy(cfg, make_policy(name, cfg, **daily), seeds, paths=altered)
    np.testing.assert_array_equal(a.weights[:, : cut + 1], b.weights[:, : cut + 1])
    assert not np.array_equal(a.value_usd[:, cut + 2 :], b.value_usd[:, cut + 2 :])


def test_min_variance_target_matches_an_independent_estimate_and_solver(cfg):
    """The policy's window -> Ledoit-Wolf -> capped long-only min variance, recomputed by hand."""
    rng = np.random.default_rng(3)
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, (2, 61, 5)), axis=1))
    weights = np.tile([0, 0, 0, 0, 0, 1.0], (2, 1))
    view = MarketView(tuple(cfg.market.assets), prices, weights, np.zeros(2, dtype=np.int64))
    policy = make_policy("min_variance", cfg, max_weight=0.3, no_trade_band=0.0)
    target = policy.target_weights(view)
    for b in range(2):
        simple = np.array(
            [[prices[b, t, i] / prices[b, t - 1, i] - 1 for i in range(5)] for t in range(1, 61)]
        )
        cov = LedoitWolf().fit(simple).covariance_
        ref = minimize(
            lambda w, c=cov: w @ c @ w,
            np.full(5, 0.2),
            method="SLSQP",
            bounds=[(0, 0.3)] * 5,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            options={"ftol": 1e-15, "maxiter": 500},
        ).x
        np.testing.assert_allclose(target[b, :-1], ref, atol=1e-4)
        assert target[b, -1] == pytest.approx(0.0, abs=1e-9)


def test_no_trade_band_keeps_current_weights(cfg):
    policy = make_policy("equal_weight", cfg, no_trade_band=0.05)
    current = np.array([[0.22, 0.18, 0.21, 0.19, 0.20, 0.0], [0.5, 0.1, 0.1, 0.1, 0.2, 0.0]])
    view = MarketView(
        tuple(cfg.market.assets), np.ones((2, 1, 5)), current, np.zeros(2, dtype=np.int64)
    )
    target = policy.target_weights(view)
    np.testing.assert_allclose(target[0], current[0])  # max drift 0.02 < band: hold
    np.testing.assert_allclose(target[1], [0.2] * 5 + [0.0])  # drift 0.3 > band: rebalance


def test_mean_variance_may_hold_cash_and_respects_budget(cfg):
    rng = np.random.default_rng(5)
    falling = 100 * np.exp(
        np.cumsum(rng.normal(-0.01, 0.03, (1, 61, 5)), axis=1)
    )  # every asset falls
    view = MarketView(
        tuple(cfg.market.assets),
        falling,
        np.tile([0.2] * 5 + [0.0], (1, 1)),
        np.zeros(1, dtype=np.int64),
    )
    w = make_policy("mean_variance", cfg, mean_shrinkage=0.0, turnover_cost=0.0).target_weights(
        view
    )
    assert w[0, -1] > 0.9 and np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    w_fixed = make_policy("mean_variance", cfg, allow_cash=False, cash_weight=0.25).target_weights(
        view
    )
    assert w_fixed[0, -1] == pytest.approx(0.25, abs=1e-8)


def _mc_conditional_moments(market, n_paths: int, length: int):
    paths = generate_synthetic_paths(market, np.arange(n_paths), length, 0)
    r = paths.close[:, 1:] / paths.close[:, :-1] - 1.0  # return of step t -> t+1
    now = paths.regime[:, :-1]  # regime at the decision time t
    return {k: r[now == k] for k in range(3)}


def test_oracle_moments_match_monte_carlo_without_jumps():
    """Gaussian regimes, constant vol: the mixture over the next regime is the exact law."""
    cfg = load_config(
        {
            "market": {
                "synthetic": {
                    "nu": 200.0,
                    "vol_multiplier": {"calm": 0.6, "bull": 1.0, "crash": 2.0},
                    "drift": {
                        "kind": "log",
                        "log_return_per_year": {"calm": 0.5, "bull": 3.0, "crash": -4.0},
                    },
                    "jumps": {
                        "common_intensity_per_year": {"calm": 0, "bull": 0, "crash": 0},
                        "idio_intensity_per_year": {"calm": 0, "bull": 0, "crash": 0},
                        "mean_log": {a: 0.0 for a in ["BTC", "ETH", "SOL", "LINK", "AVAX"]},
                        "std_log": {a: 0.0 for a in ["BTC", "ETH", "SOL", "LINK", "AVAX"]},
                    },
                    "garch": {
                        a: {"omega_daily": 4e-4, "alpha": 0.0, "beta": 0.0}
                        for a in ["BTC", "ETH", "SOL", "LINK", "AVAX"]
                    },
                }
            }
        }
    )
    mu, cov = true_moments_by_regime(cfg.market)
    samples = _mc_conditional_moments(cfg.market, 200, 1500)
    for k in range(3):
        x = samples[k]
        se_mean = x.std(axis=0) / np.sqrt(len(x))
        assert np.all(np.abs(x.mean(axis=0) - mu[k]) < 5 * se_mean), k
        np.testing.assert_allclose(np.cov(x.T), cov[k], rtol=0.06, atol=2e-6)
    # a crash today makes a crash tomorrow likely: the oracle's crash mean is the lowest
    assert np.all(mu[2] < mu[0]) and np.all(mu[0] < mu[1])


def test_oracle_jump_moments_match_monte_carlo():
    """Jumps dominate (tiny diffusion): the jump mean/covariance formulas against simulation (the
    arithmetic drift compensates the jumps in simple terms: mean 0 in every regime)."""
    assets = ["BTC", "ETH", "SOL", "LINK", "AVAX"]
    cfg = load_config(
        {
            "market": {
                "synthetic": {
                    "nu": 200.0,
                    "drift": {"kind": "arithmetic", "simple_return_per_year": 0.0},
                    "garch": {a: {"omega_daily": 1e-8, "alpha": 0.0, "beta": 0.0} for a in assets},
                    "jumps": {
                        "common_intensity_per_year": {"calm": 20, "bull": 10, "crash": 60},
                        "idio_intensity_per_year": {"calm": 15, "bull": 15, "crash": 30},
                        "mean_log": dict(
                            zip(assets, [-0.05, -0.06, -0.08, -0.07, -0.09], strict=True)
                        ),
                        "std_log": dict(zip(assets, [0.05, 0.06, 0.09, 0.08, 0.1], strict=True)),
                        "size_correlation": 0.7,
                    },
                }
            }
        }
    )
    mu, cov = true_moments_by_regime(cfg.market)
    samples = _mc_conditional_moments(cfg.market, 200, 1500)
    for k in range(3):
        x = samples[k]
        np.testing.assert_allclose(
            x.mean(axis=0), mu[k], atol=6 * (x.std(axis=0) / np.sqrt(len(x))).max()
        )
        np.testing.assert_allclose(np.cov(x.T), cov[k], rtol=0.15, atol=2e-5)


def test_oracle_means_follow_the_drift_convention():
    """Arithmetic: (1 + R)^(dt/365) - 1 whatever the regime; sharpe: the mixture over the next regime of
    exp(S sqrt(dt/365) vm_j sqrt(h_bar)) - 1 (hand-computed from the config)."""
    base = {"vol_multiplier": {"calm": 0.5, "bull": 1.0, "crash": 2.0}}
    arith = load_config(
        {"market": {"synthetic": {**base, "drift": {"simple_return_per_year": 0.25}}}}
    ).market
    mu, _ = true_moments_by_regime(arith)
    np.testing.assert_allclose(mu, 1.25 ** (1 / 365) - 1, rtol=1e-9)
    sharpe = load_config(
        {"market": {"synthetic": {**base, "drift": {"kind": "sharpe", "sharpe_per_year": 2.0}}}}
    ).market
    mu, _ = true_moments_by_regime(sharpe)
    syn = sharpe.synthetic
    h_bar = np.array([syn.garch[a].unconditional_variance_daily for a in sharpe.assets])
    per_regime = np.expm1(2.0 / np.sqrt(365) * np.outer([0.5, 1.0, 2.0], np.sqrt(h_bar)))
    np.testing.assert_allclose(mu, syn.transition_array() @ per_regime, rtol=1e-9)
    assert np.all(mu[2] > mu[0])  # crash: the most vol, the most expected return


def test_oracle_reads_the_true_regime_and_is_labelled(cfg):
    policy = make_policy("oracle_mean_variance", cfg)
    assert policy.uses_oracle
    assert not make_policy("min_variance", cfg).uses_oracle
    view = MarketView(
        tuple(cfg.market.assets),
        np.ones((2, 1, 5)),
        np.tile([0.0] * 5 + [1.0], (2, 1)),
        np.zeros(2, dtype=np.int64),
        oracle={"regime": np.array([1, 2])},
    )
    w = policy.target_weights(view)
    assert w[0, :-1].sum() > w[1, :-1].sum()  # invested in a bull, de-risked in a crash
    with pytest.raises(ValueError, match="oracle"):
        policy.target_weights(dataclasses.replace(view, oracle=None))


def test_default_baselines_are_the_ones_the_market_can_run(cfg):
    from defialloc.agents.baselines.policies import baselines_for

    names = ["equal_weight", "levered_vol_target", "carry", "ceiling", "oracle_mean_variance"]
    kept, dropped = baselines_for(cfg, names)
    assert kept == ["equal_weight", "ceiling", "oracle_mean_variance"]
    assert (
        set(dropped) == {"levered_vol_target", "carry"}
        and "lending" in dropped["levered_vol_target"]
    )
    defi = load_config("configs/leverage.yaml")
    kept, dropped = baselines_for(defi, names)
    assert kept == names and not dropped
    kept, dropped = baselines_for(defi, names, synthetic_truth=False)  # a replayed period
    assert kept == ["equal_weight", "levered_vol_target", "carry"]
    assert "true state" in dropped["ceiling"]
