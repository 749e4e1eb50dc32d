"""Synthetic market: stylized facts of the calibrated default, hand-computed moments of the building
blocks (GARCH, Student-t, jumps, regimes, depeg, bridge), determinism and batch independence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from defialloc.envs.market.config import REPO_ROOT, MarketConfig, load_market_config
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.synthetic import (
    bridge_extremes,
    generate_synthetic_paths,
    liquidity_and_gas,
)
from defialloc.envs.market.synthetic_model import step_transition

FIELDS = (
    "close",
    "high",
    "low",
    "numeraire_usd",
    "regime",
    "depth_multiplier",
    "gas_price_gwei",
    "eth_usd",
)
ZERO = {"calm": 0.0, "bull": 0.0, "crash": 0.0}
ONE = {"calm": 1.0, "bull": 1.0, "crash": 1.0}


@pytest.fixture(scope="module")
def default_cfg() -> MarketConfig:
    return load_market_config(REPO_ROOT / "configs" / "market" / "default.yaml")


@pytest.fixture(scope="module")
def default_paths(default_cfg) -> MarketPaths:
    return generate_synthetic_paths(default_cfg, np.arange(128), 731, 0)


def _config(assets: list[str], **synthetic) -> MarketConfig:
    """A config with a plain model: one regime law (vm 1, log drift 0), no jumps, no depeg, unless overridden."""
    n = len(assets)
    base = {
        "transition_daily": np.full((3, 3), 1 / 3).tolist(),
        "drift": {"kind": "log", "log_return_per_year": ZERO},
        "vol_multiplier": ONE,
        "correlation": {
            "assets": assets,
            "calm": np.eye(n).tolist(),
            "bull": np.eye(n).tolist(),
            "crash": np.eye(n).tolist(),
        },
        "garch": {a: {"omega_daily": 1e-4, "alpha": 0.0, "beta": 0.0} for a in assets},
        "nu": 200.0,
        "initial_price_usd": {a: 100.0 for a in assets},
        "jumps": {
            "common_intensity_per_year": ZERO,
            "idio_intensity_per_year": ZERO,
            "mean_log": {a: -0.1 for a in assets},
            "std_log": {a: 0.0 for a in assets},
        },
        "depeg": {"intensity_per_year": ZERO, "noise_bps": 0.0},
        "burn_in_steps": 0,
    }
    base.update(synthetic)
    return MarketConfig(assets=assets, synthetic=base)


def _log_returns(paths: MarketPaths) -> np.ndarray:
    return np.diff(np.log(paths.close), axis=1)


def _mean_pairwise_corr(x: np.ndarray) -> float:
    c = np.corrcoef(x, rowvar=False)
    return float(c[np.triu_indices(x.shape[1], 1)].mean())


# ------------------------------------------------------------------ stylized facts (calibrated default)
def test_fat_tails(default_paths):
    r = _log_returns(default_paths)
    for i, name in enumerate(default_paths.asset_names):
        assert stats.kurtosis(r[:, :, i].ravel()) > 3.0, name


def test_volatility_clustering(default_paths):
    """Lag-1 autocorrelation of |r|, within paths, pooled over paths and assets (each in its own units)."""
    r = _log_returns(default_paths)
    a = np.abs(r) / np.abs(r).mean(axis=(0, 1))
    a = a - a.mean(axis=(0, 1))
    acf = (a[:, 1:] * a[:, :-1]).mean() / (a * a).mean()
    assert acf > 0.1


def test_correlations_rise_in_crashes(default_paths):
    r = _log_returns(default_paths)
    regime = default_paths.regime[:, 1:]  # regime of the step each return ends on
    calm, crash = _mean_pairwise_corr(r[regime == 0]), _mean_pairwise_corr(r[regime == 2])
    assert crash > calm + 0.2


def test_large_moves_are_mostly_down(default_paths):
    r = _log_returns(default_paths)
    med = np.median(r, axis=(0, 1))
    sigma = 1.4826 * np.median(np.abs(r - med), axis=(0, 1))
    down = (r < med - 4 * sigma).sum(axis=(0, 1))
    up = (r > med + 4 * sigma).sum(axis=(0, 1))
    assert np.all(down > up), (down, up)
    assert np.all(stats.skew(r.reshape(-1, r.shape[2]), axis=0) < 0)


def test_liquidity_dries_up_and_gas_spikes_in_crashes(default_paths):
    reg = default_paths.regime
    depth, gas = np.log(default_paths.depth_multiplier), np.log(default_paths.gas_price_gwei)
    assert depth[reg == 2].mean() < depth[reg == 0].mean() - 0.3
    assert gas[reg == 2].mean() > gas[reg == 0].mean() + 0.3
    assert np.percentile(default_paths.gas_price_gwei[reg == 2], 99) > 3 * np.median(
        default_paths.gas_price_gwei[reg == 0]
    )


# ------------------------------------------------------------------ contract
def test_paths_are_valid_and_bars_consistent(default_cfg, default_paths):
    p = default_paths
    p.validate()
    prev = p.close[:, :-1]
    assert np.all(p.high[:, 1:] >= np.maximum(prev, p.close[:, 1:]))  # open = previous close
    assert np.all(p.low[:, 1:] <= np.minimum(prev, p.close[:, 1:]))
    np.testing.assert_allclose(
        p.close[:, 0],
        [[default_cfg.synthetic.initial_price_usd[a] for a in p.asset_names]] * p.n_paths,
    )
    np.testing.assert_array_equal(p.eth_usd, p.close[:, :, p.asset_names.index("ETH")])
    assert (
        p.regime.dtype == np.int8
        and p.regime_names == ("calm", "bull", "crash")
        and p.dates is None
    )


def test_determinism_and_batch_independence(default_cfg):
    batch = generate_synthetic_paths(default_cfg, np.array([1, 2, 3]), 120, 10)
    alone = generate_synthetic_paths(default_cfg, np.array([2]), 120, 10)
    again = generate_synthetic_paths(default_cfg, np.array([1, 2, 3]), 120, 10)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(batch, name)[1:2], getattr(alone, name), err_msg=name)
        np.testing.assert_array_equal(getattr(batch, name), getattr(again, name), err_msg=name)
    assert not np.array_equal(batch.close[0], batch.close[1])


def test_eth_fallback_path_when_eth_is_not_an_asset(default_cfg):
    cfg = default_cfg.model_copy(update={"assets": ["BTC", "SOL"]})
    p = generate_synthetic_paths(cfg, np.arange(64), 400, 0)
    p.validate()
    eth_vol = np.diff(np.log(p.eth_usd), axis=1).std() * np.sqrt(365)
    target = np.sqrt(cfg.synthetic.eth_fallback.garch.unconditional_variance_daily * 365)
    assert eth_vol == pytest.approx(target, rel=0.3)
    assert p.eth_usd[0, 0] == cfg.synthetic.eth_fallback.initial_price_usd


# ------------------------------------------------------------------ building blocks vs hand formulas
def test_garch_t_variance_and_kurtosis_match_closed_forms():
    """GARCH(1,1) with unit-variance t(nu) shocks: E[r^2] = omega / (1 - a - b) and
    kurtosis = k_z (1 - (a+b)^2) / (1 - (a+b)^2 - (k_z - 1) a^2), k_z = 3 + 6 / (nu - 4)."""
    omega, a, b, nu = 1e-4, 0.1, 0.8, 30.0
    cfg = _config(
        ["BTC"],
        garch={"BTC": {"omega_daily": omega, "alpha": a, "beta": b}},
        nu=nu,
        burn_in_steps=200,
    )
    r = _log_returns(generate_synthetic_paths(cfg, np.arange(400), 1001, 0)).ravel()
    kz = 3 + 6 / (nu - 4)
    s = (a + b) ** 2
    kurt = kz * (1 - s) / (1 - s - (kz - 1) * a * a)  # 3.94
    assert np.mean(r**2) == pytest.approx(omega / (1 - a - b), rel=0.03)
    assert stats.kurtosis(r, fisher=False) == pytest.approx(kurt, abs=0.25)


def test_student_t_shocks_have_unit_variance_t_tails_and_exact_correlation():
    rho, nu = 0.6, 10.0
    corr = [[1.0, rho], [rho, 1.0]]
    cfg = _config(
        ["BTC", "ETH"],
        nu=nu,
        correlation={"assets": ["BTC", "ETH"], "calm": corr, "bull": corr, "crash": corr},
    )
    r = _log_returns(generate_synthetic_paths(cfg, np.arange(200), 2001, 0)).reshape(-1, 2)
    assert r.var(axis=0) == pytest.approx([1e-4, 1e-4], rel=0.02)
    assert stats.kurtosis(r[:, 0]) == pytest.approx(6 / (nu - 4), abs=0.2)  # t(10): excess 1.0
    assert np.corrcoef(r, rowvar=False)[0, 1] == pytest.approx(rho, abs=0.01)


def test_drift_and_step_days_scaling():
    drift = {"kind": "log", "log_return_per_year": {"calm": 0.365, "bull": 0.365, "crash": 0.365}}
    cfg = _config(["BTC"], drift=drift)
    r = _log_returns(generate_synthetic_paths(cfg, np.arange(200), 1001, 0))
    assert r.mean() == pytest.approx(0.001, abs=1e-4)  # 0.365 / 365 per day (sd of the mean 2.2e-5)
    weekly = cfg.model_copy(update={"step_days": 7.0})
    r7 = _log_returns(generate_synthetic_paths(weekly, np.arange(200), 501, 0))
    assert r7.var() == pytest.approx(7e-4, rel=0.03) and r7.mean() == pytest.approx(0.007, abs=4e-4)


def test_regime_chain_follows_the_transition_matrix():
    p_daily = np.array([[0.9, 0.08, 0.02], [0.1, 0.85, 0.05], [0.2, 0.1, 0.7]])
    for step_days, expected in (
        (1.0, p_daily),
        (3.0, np.linalg.matrix_power(p_daily, 3)),
        (0.5, 0.5 * (np.eye(3) + p_daily)),
    ):
        cfg = _config(["BTC"], transition_daily=p_daily.tolist()).model_copy(
            update={"step_days": step_days}
        )
        reg = generate_synthetic_paths(cfg, np.arange(100), 1000, 0).regime
        counts = np.zeros((3, 3))
        np.add.at(counts, (reg[:, :-1].ravel(), reg[:, 1:].ravel()), 1)
        np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), expected, atol=0.015)
        np.testing.assert_allclose(step_transition(p_daily, step_days), expected, atol=1e-12)


def test_common_jumps_hit_all_assets_with_poisson_rate_and_are_compensated():
    lam = 36.5  # per year -> P(event per day) = 1 - exp(-0.1) = 0.09516
    rate = {"calm": lam, "bull": lam, "crash": lam}
    jumps = {
        "common_intensity_per_year": rate,
        "idio_intensity_per_year": ZERO,
        "mean_log": {"BTC": -0.1, "ETH": -0.2},
        "std_log": {"BTC": 0.005, "ETH": 0.005},
    }
    garch = {a: {"omega_daily": 1e-10, "alpha": 0.0, "beta": 0.0} for a in ("BTC", "ETH")}
    cfg = _config(["BTC", "ETH"], jumps=jumps, garch=garch)
    r = _log_returns(generate_synthetic_paths(cfg, np.arange(100), 2001, 0)).reshape(-1, 2)
    hit = r < -0.03
    assert hit[:, 0].mean() == pytest.approx(1 - np.exp(-0.1), abs=0.004)
    np.testing.assert_array_equal(hit[:, 0], hit[:, 1])  # co-jumps: every asset on the same steps
    assert r[hit[:, 0]].mean(axis=0) == pytest.approx(
        [-0.1 * (1 - 0.09516), -0.2 * (1 - 0.09516)], abs=0.002
    )
    assert r.mean(axis=0) == pytest.approx([0.0, 0.0], abs=1e-3)  # compensated: drift unchanged


def test_depeg_dips_within_range_and_decay_with_half_life():
    depeg = {
        "intensity_per_year": {"calm": 10.0, "bull": 10.0, "crash": 10.0},
        "depth_min": 0.03,
        "depth_max": 0.1,
        "half_life_days": 2.0,
        "noise_bps": 0.0,
    }
    p = generate_synthetic_paths(_config(["BTC"], depeg=depeg), np.arange(50), 1000, 0)
    dev = 1.0 - p.numeraire_usd
    assert dev.max() <= 0.1 + 1e-12 and dev.min() >= 0.0 and (dev > 0.03 - 1e-12).any()
    decay = 2.0**-0.5
    ratio = dev[:, 1:] / np.where(
        dev[:, :-1] > 1e-6, dev[:, :-1], np.nan
    )  # 1 - price loses digits below
    active = np.isfinite(ratio)
    assert np.all(
        ratio[active] >= decay - 1e-9
    )  # never faster than the half-life (new dips only add)
    assert np.mean(np.isclose(ratio[active], decay)) > 0.9


def test_bridge_extremes_match_a_fine_brownian_bridge():
    rng = np.random.default_rng(0)
    n_paths, n_steps, r_end, vol = 4000, 2000, 0.05, 0.1
    w = np.cumsum(rng.standard_normal((n_paths, n_steps)) * vol / np.sqrt(n_steps), axis=1)
    t = np.arange(1, n_steps + 1) / n_steps
    bridge = w - t * w[:, -1:] + t * r_end
    shift = 0.5826 * vol / np.sqrt(n_steps)  # Broadie-Glasserman discrete-monitoring correction
    fine_max = np.maximum(bridge.max(axis=1), 0.0) + shift
    fine_min = np.minimum(bridge.min(axis=1), 0.0) - shift
    e = rng.standard_exponential((2, 200_000))
    up, down = bridge_extremes(np.full(200_000, r_end), np.full(200_000, vol), e[0], e[1])
    q = [10, 50, 90]
    np.testing.assert_allclose(
        np.percentile(up, q), np.percentile(fine_max, q), rtol=0.03, atol=1e-3
    )
    np.testing.assert_allclose(
        np.percentile(down, q), np.percentile(fine_min, q), rtol=0.03, atol=1e-3
    )
    # hand value: r = 0.1, s = 0.2, E = 1 -> max = (0.1 + sqrt(0.01 + 0.08)) / 2 = 0.2
    assert bridge_extremes(np.array(0.1), np.array(0.2), np.array(1.0), np.array(1.0))[
        0
    ] == pytest.approx(0.2)


def test_deterministic_levels_without_noise(default_cfg):
    regime = np.array([[0, 1, 2, 2]])
    depth, gas = liquidity_and_gas(regime, default_cfg.liquidity, default_cfg.gas, 1.0)
    np.testing.assert_array_equal(
        depth, [default_cfg.liquidity.depth_multiplier.array()[[0, 1, 2, 2]]]
    )
    np.testing.assert_array_equal(gas, [default_cfg.gas.gwei.array()[[0, 1, 2, 2]]])
