"""The synthetic market's true state and true next-step moments (the ceiling's inputs).

- ``MarketPaths.cond_var``: prices unchanged bit for bit, batch independence, ``take``; ``h_{t+1}`` is
  the GARCH recursion of the path's own returns and regimes (known at ``t``).
- ``next_step_moments`` and ``step_moments`` against Monte Carlo of the generator (and of the env's
  basis process) at fixed states; ``g`` of a hand-built portfolio against a hand computation.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from defialloc.agents.baselines.oracle import true_moments_by_regime
from defialloc.envs.config import load_config
from defialloc.envs.leverage_paths import ProtocolSetup
from defialloc.envs.market.conditional_moments import next_step_moments
from defialloc.envs.market.config import DAYS_PER_YEAR, REGIME_NAMES, REPO_ROOT, load_market_config
from defialloc.envs.market.synthetic import generate_synthetic_paths
from defialloc.envs.market.synthetic_model import model_of
from defialloc.envs.step_moments import (
    InstrumentSpec,
    decision_vector,
    expected_log_growth,
    step_moments,
)

ASSETS = ["BTC", "ETH", "SOL", "LINK", "AVAX"]
ZERO = {"calm": 0.0, "bull": 0.0, "crash": 0.0}
NO_JUMPS = {
    "common_intensity_per_year": ZERO,
    "idio_intensity_per_year": ZERO,
    "mean_log": dict.fromkeys(ASSETS, 0.0),
    "std_log": dict.fromkeys(ASSETS, 0.0),
}


@pytest.fixture(scope="module")
def default_market():
    return load_market_config(REPO_ROOT / "configs" / "market" / "default.yaml")


def _digest(p) -> str:
    """sha256 of the paths' values, rounded where a 1-ulp difference of a platform's exp/log SIMD
    kernels could otherwise flip bits (float32 of the float64 series; high/low to 1e-6 in log)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(p.regime).tobytes())
    for a in (
        np.log(p.close),
        p.numeraire_usd,
        p.depth_multiplier,
        p.gas_price_gwei,
        np.log(p.eth_usd),
    ):
        h.update(np.asarray(a, dtype=np.float32).tobytes())
    for a in (np.log(p.high / p.close), np.log(p.low / p.close)):
        h.update(np.round(a, 6).astype(np.float32).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------ cond_var
def test_keeping_the_variance_leaves_every_price_unchanged(default_market):
    """Digest of the generator's output BEFORE it kept ``cond_var`` (commit b72210c, same seeds)."""
    paths = generate_synthetic_paths(default_market, np.array([3, 17, 2000001]), 200, 20)
    assert _digest(paths) == "edc999b6bd6449b4"
    assert paths.cond_var is not None and paths.cond_var.shape == (3, 200, 5)
    assert paths.cond_var.dtype == np.float32 and np.all(paths.cond_var > 0)


def test_cond_var_is_batch_independent_and_taken(default_market):
    batch = generate_synthetic_paths(default_market, np.array([1, 2, 3]), 120, 10)
    alone = generate_synthetic_paths(default_market, np.array([2]), 120, 10)
    np.testing.assert_array_equal(batch.cond_var[1:2], alone.cond_var)
    sub = batch.take([2, 0])
    np.testing.assert_array_equal(sub.cond_var, batch.cond_var[[2, 0]])
    sub.validate()
    broken = sub.take([0])
    object.__setattr__(broken, "cond_var", broken.cond_var[:, :-1])
    with pytest.raises(ValueError, match="cond_var"):
        broken.validate()


def test_next_variance_is_the_garch_recursion_of_the_path_known_at_t(default_market):
    """``h_{t+1} = min(omega dt + alpha e_t^2 + beta h_t, cap)`` with ``e_t = r_t - drift_t`` recomputed
    from the path's own log returns and regimes (no jumps, so that ``r_t`` is drift + diffusion):
    ``cond_var[:, t + 1]`` uses nothing after ``t``."""
    market = default_market.model_copy(deep=True)
    market.synthetic.jumps = market.synthetic.jumps.model_validate(NO_JUMPS)
    paths = generate_synthetic_paths(market, np.arange(16), 300, 0)
    model = model_of(market)
    h = paths.cond_var.astype(np.float64)
    r = np.diff(np.log(paths.close), axis=1)  # r[:, t - 1] is the return of the step ending at t
    k = paths.regime[:, 1:]
    s = model.drift.vol_multiplier[k][..., None] * np.sqrt(h[:, 1:])
    drift = model.drift.const[:, :5][k] + model.drift.vol_coef * s - model.drift.var_coef * s * s
    e = r - drift
    g = model.garch
    omega, alpha, beta, cap = (
        np.asarray(a, dtype=np.float64) for a in (g.omega, g.alpha, g.beta, g.h_cap)
    )
    expected = np.minimum(omega + alpha * e * e + beta * h[:, 1:], cap)
    np.testing.assert_allclose(h[:, 2:], expected[:, :-1], rtol=2e-5)


# ------------------------------------------------------------------------------------ moments
def _constant_variance_market(h: np.ndarray, **synthetic):
    """The calibrated market with GARCH switched off: every step has variance ``h`` (per asset)."""
    garch = {
        a: {"omega_daily": float(v), "alpha": 0.0, "beta": 0.0}
        for a, v in zip(ASSETS, h, strict=True)
    }
    return load_config({"market": {"synthetic": {"garch": garch, **synthetic}}})


def _mc_by_regime(market, n_paths: int, length: int):
    """Gross returns ``X = P_{t+1} / P_t`` grouped by the regime at ``t``, with the next regime."""
    paths = generate_synthetic_paths(market, np.arange(n_paths), length, 0)
    x = paths.close[:, 1:] / paths.close[:, :-1]
    now, nxt = paths.regime[:, :-1], paths.regime[:, 1:]
    return paths, {k: (x[now == k], nxt[now == k]) for k in range(3)}


def _assert_moments(sample: np.ndarray, mean: np.ndarray, cov: np.ndarray, rel: float) -> None:
    """Sample mean within 5 standard errors; each covariance entry within 5 standard errors of its
    estimate (``sd((a - ma)(b - mb)) / sqrt(n)``) plus ``rel`` of its size (the second-order
    approximation's Student-t fourth-moment term, ~0.2 % here)."""
    n = len(sample)
    se_mean = sample.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(sample.mean(axis=0) - mean) < 5 * se_mean), (
        sample.mean(axis=0) - mean
    ) / se_mean
    c = sample - sample.mean(axis=0)
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(axis=0) / np.sqrt(n)
    err = np.abs(np.cov(sample.T) - cov)
    assert np.all(err < 5 * se_cov + rel * np.abs(cov)), err / (se_cov + 1e-300)


@pytest.mark.parametrize(("level", "rel"), [(0.5, 0.005), (2.0, 0.02)])
def test_next_step_moments_match_monte_carlo_of_the_generator(level, rel):
    """At fixed states (regime i, h): the calibrated regimes, Student-t shocks and co-jumps, with a
    constant GARCH variance ``h`` (two levels), against 400 x 1200 steps of the generator itself.
    ``rel`` allows the Student-t fourth-moment term the second-order moments leave out
    (``~ (kappa - 3) (2 s)^4 / 24`` on a variance ``s^2``: 0.4 % at the low level, 1.5 % at the high).
    At the low level (jumps matter most) the oracle's lognormal matching of the jumps fails the
    same check in a crash: the exact jump moment generating function is needed."""
    h = level * np.array([1.2e-3, 1.8e-3, 3.0e-3, 2.5e-3, 3.5e-3])
    market = _constant_variance_market(h).market
    paths, samples = _mc_by_regime(market, 400, 1200)
    h32 = paths.cond_var[0, 1].astype(np.float64)  # the generator's float32 h
    np.testing.assert_allclose(h32, h, rtol=1e-6)
    law = next_step_moments(market, np.arange(3), np.tile(h32, (3, 1)))
    for k in range(3):
        x, _ = samples[k]
        _assert_moments(x - 1.0, law.mu[k], law.cov[k], rel=rel)
    if level < 1.0:
        _, oracle_cov = true_moments_by_regime(market)  # its h_bar is h here (no GARCH)
        with pytest.raises(AssertionError):
            _assert_moments(samples[2][0] - 1.0, law.mu[2], oracle_cov[2], rel=rel)


def test_moments_at_the_unconditional_variance_reduce_to_the_oracles_without_jumps(default_market):
    """Same law as ``true_moments_by_regime`` when ``h`` is the unconditional variance and there are
    no jumps (both exact lognormal for the diffusion); with jumps only the covariance differs (the
    oracle's lognormal matching of the jumps vs the exact jump moment generating function)."""
    market = default_market.model_copy(deep=True)
    syn = market.synthetic
    h_bar = np.array([syn.garch[a].unconditional_variance_daily for a in market.assets])
    law = next_step_moments(market, np.arange(3), np.tile(h_bar, (3, 1)))
    mu, cov = true_moments_by_regime(market)
    np.testing.assert_allclose(law.mu, mu, rtol=1e-12)
    assert not np.allclose(law.cov, cov, rtol=1e-3)
    syn.jumps = syn.jumps.model_validate(NO_JUMPS)
    law = next_step_moments(market, np.arange(3), np.tile(h_bar, (3, 1)))
    mu, cov = true_moments_by_regime(market)
    np.testing.assert_allclose(law.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(law.cov, cov, rtol=1e-10)


def test_moments_at_the_paths_own_variance_explain_its_returns(default_market):
    """With the real GARCH (h varies along the path), the predicted moments at each path's
    ``(regime_t, h_{t+1})`` leave standardized residuals with mean 0 and variance 1, and the
    residuals' outer products average to the predicted covariances (the conditioning on ``h``)."""
    paths = generate_synthetic_paths(default_market, np.arange(100), 600, 0)
    law = next_step_moments(default_market, paths.regime[:, :-1], paths.cond_var[:, 1:])
    r = paths.close[:, 1:] / paths.close[:, :-1] - 1.0
    sd = np.sqrt(np.einsum("...ii->...i", law.cov))
    z = ((r - law.mu) / sd).reshape(-1, 5)
    corr = (law.cov / (sd[..., :, None] * sd[..., None, :])).reshape(-1, 5, 5)
    n = len(z)
    assert np.all(np.abs(z.mean(axis=0)) < 5 / np.sqrt(n))
    np.testing.assert_allclose((z * z).mean(axis=0), 1.0, atol=0.05)
    np.testing.assert_allclose(
        (z[:, :, None] * z[:, None, :]).mean(axis=0), corr.mean(axis=0), atol=0.05
    )


def test_bad_states_are_refused_naming_the_argument(default_market):
    with pytest.raises(ValueError, match="cond_var"):
        next_step_moments(default_market, np.array([0, 1]), np.ones((2, 4)))
    with pytest.raises(ValueError, match="cond_var"):
        next_step_moments(default_market, np.array([0]), -np.ones((1, 5)))
    with pytest.raises(ValueError, match="regime"):
        next_step_moments(default_market, np.array([3]), np.ones((1, 5)) * 1e-3)
    replay = default_market.model_copy(update={"source": "replay"})
    with pytest.raises(ValueError, match="synthetic"):
        next_step_moments(replay, np.array([0]), np.ones((1, 5)) * 1e-3)


# ------------------------------------------------------------------------------------ carry, perps
def test_instrument_moments_match_monte_carlo_of_prices_basis_and_carry():
    """Levered env: the step's return vector ``(u - a_c, a_c - a_d, q)`` (spot with supply carry in
    excess of cash, debt carry, perp return per notional) simulated from the generator's prices and
    the env's own basis AR(1) draw (``RegimeProcess.draw`` of the next regime), at fixed quotes."""
    h = np.array([1.0e-3, 1.5e-3, 3.0e-3, 2.5e-3, 3.0e-3])
    cfg = load_config(
        REPO_ROOT / "configs" / "leverage.yaml",
        {
            "market": {
                "synthetic": {
                    "garch": {
                        a: {"omega_daily": float(v), "alpha": 0.0, "beta": 0.0}
                        for a, v in zip(ASSETS, h, strict=True)
                    }
                }
            }
        },
    )
    spec = InstrumentSpec.from_config(cfg)
    paths, samples = _mc_by_regime(cfg.market, 300, 1200)
    dt = cfg.market.step_days / DAYS_PER_YEAR
    quotes = {
        "borrow_rate": 0.09,
        "cash_supply_rate": 0.05,
        "supply_rate": np.array([0.01, 0.02, 0.04, 0.03, 0.05]),
        "basis": np.array([4e-4, -2e-4, 8e-4, 0.0, -6e-4]),
        "funding": np.array([1.2e-3, -6e-4, 2.4e-3, 0.0, -1.8e-3]),
    }
    setup = ProtocolSetup.load(tuple(ASSETS), None, cfg.env.perps.params_path)
    process = setup.perps.basis_by_regime.process(REGIME_NAMES, 5)
    rng = np.random.default_rng(5)
    h32 = paths.cond_var[0, 1].astype(np.float64)
    for k in (0, 2):
        x, nxt = samples[k]
        b1 = process.draw(
            nxt, rng.standard_normal(x.shape), np.broadcast_to(quotes["basis"], x.shape)
        )
        a, a_c, a_d = (
            quotes["supply_rate"] * dt,
            quotes["cash_supply_rate"] * dt,
            np.expm1(quotes["borrow_rate"] * dt),
        )
        u = (1 + a) * x - 1 - a_c
        q = x * (1 + b1) - (1 + quotes["basis"]) - quotes["funding"]
        state = {"regime": np.array([k]), "cond_var": h32[None]} | {
            n: np.asarray(v)[None] for n, v in quotes.items()
        }
        m = step_moments(spec, state)
        np.testing.assert_allclose(m.const, a_c)
        np.testing.assert_allclose(m.mean[0, 5], a_c - a_d, rtol=1e-12)
        assert np.all(m.cov[0, 5] == 0)  # debt is riskless
        sample = np.concatenate([u, q], axis=1)
        keep = np.r_[0:5, 6:11]
        _assert_moments(sample, m.mean[0, keep], m.cov[0][np.ix_(keep, keep)], rel=0.01)


# ------------------------------------------------------------------------------------ hand values
def test_growth_of_a_hand_built_portfolio():
    """Two assets, one regime law (every row of the transition the same, vm 1, log drift, no jumps),
    constant variances: E[X] = exp(m + h/2), Cov = E_a E_b (exp(rho sqrt(h_a h_b)) - 1), hand-coded."""
    assets = ["BTC", "ETH"]
    h = np.array([4e-4, 9e-4])
    rho = 0.6
    corr = [[1.0, rho], [rho, 1.0]]
    market = {
        "assets": assets,
        "synthetic": {
            "transition_daily": np.full((3, 3), 1 / 3).tolist(),
            "drift": {"kind": "log", "log_return_per_year": ZERO},
            "vol_multiplier": {"calm": 1.0, "bull": 1.0, "crash": 1.0},
            "correlation": {"assets": assets, "calm": corr, "bull": corr, "crash": corr},
            "garch": {
                a: {"omega_daily": float(v), "alpha": 0.0, "beta": 0.0}
                for a, v in zip(assets, h, strict=True)
            },
            "jumps": {
                "common_intensity_per_year": ZERO,
                "idio_intensity_per_year": ZERO,
                "mean_log": dict.fromkeys(assets, 0.0),
                "std_log": dict.fromkeys(assets, 0.0),
            },
        },
    }
    spot = load_config({"market": market})
    spec = InstrumentSpec.from_config(spot)
    state = {"regime": np.array([1]), "cond_var": h[None]}
    m = step_moments(spec, state)
    e = np.exp(0.5 * h)  # E[X] with zero log drift
    cov = np.outer(e, e) * (
        np.exp(np.array([[h[0], rho * np.sqrt(h[0] * h[1])], [rho * np.sqrt(h[0] * h[1]), h[1]]]))
        - 1
    )
    w = np.array([0.6, 0.3])
    g_hand = w @ (e - 1) - 0.5 * w @ cov @ w
    v = decision_vector(spec, np.array([[0.6, 0.3, 0.1]]))
    np.testing.assert_allclose(expected_log_growth(m, v), [g_hand], rtol=1e-12, atol=1e-15)
    # with lending: x = (0.9, 0.6), d = 0.5 (cash 0), supply carry a, cash a_c, debt a_d
    lev = load_config(
        {"market": market, "env": {"lending": {"enabled": True}, "perps": {"enabled": False}}}
    )
    spec = InstrumentSpec.from_config(lev)
    dt = 1 / 365
    quotes = {
        "borrow_rate": np.array([0.1]),
        "cash_supply_rate": np.array([0.04]),
        "supply_rate": np.array([[0.02, 0.03]]),
    }
    m = step_moments(spec, state | quotes)
    a, a_c, a_d = np.array([0.02, 0.03]) * dt, 0.04 * dt, np.exp(0.1 * dt) - 1
    x, d = np.array([0.9, 0.6]), 0.5
    mean_u = (1 + a) * e - 1
    cov_u = np.outer(1 + a, 1 + a) * cov
    cash = 1 + d - x.sum()
    g_hand = x @ mean_u + cash * a_c - d * a_d - 0.5 * x @ cov_u @ x
    weights = np.append(x, cash) / (1 + d)  # over gross assets, as the rollout records them
    v = decision_vector(spec, weights[None], np.array([d]))
    np.testing.assert_allclose(v[0], [0.9, 0.6, 0.5], rtol=1e-12)
    np.testing.assert_allclose(expected_log_growth(m, v), [g_hand], rtol=1e-12, atol=1e-15)
