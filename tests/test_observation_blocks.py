"""Selectable observation blocks: the GARCH forecast, the regime filter, layouts and names, validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from defialloc.envs import make_env, make_vec_env
from defialloc.envs.config import (
    DEFAULT_OBSERVATION_BLOCKS,
    OBSERVATION_BLOCKS,
    ConfigError,
    ObservationConfig,
    load_config,
)
from defialloc.envs.features import (
    GarchModel,
    RegimeModel,
    TraderModel,
    block_size,
    feature_names,
    garch_forecast,
    market_features,
    n_market_features,
    observation_size,
    regime_filter,
)
from defialloc.envs.market.sources import sample_paths

ALL_BLOCKS = list(OBSERVATION_BLOCKS)
SHORT = {"env.horizon": 40}


def _garch(omega, alpha, beta, cap=np.inf) -> GarchModel:
    omega, alpha, beta = (np.asarray(x, dtype=float) for x in (omega, alpha, beta))
    h_bar = omega / (1 - alpha - beta)
    return GarchModel(omega, alpha, beta, h_bar, np.broadcast_to(cap, omega.shape) * 1.0)


def _log_returns(close: np.ndarray) -> np.ndarray:
    """Time-major ``(L, B, N)`` log returns (row 0 = 0) of ``(B, L, N)`` prices."""
    r = np.zeros((close.shape[1], close.shape[0], close.shape[2]))
    r[1:] = np.log(close[:, 1:] / close[:, :-1]).transpose(1, 0, 2)
    return r


# ---------------------------------------------------------------------------- GARCH forecast
def test_garch_forecast_matches_a_hand_recursion_and_its_cap():
    r = np.array([[0.0, 0.0], [0.02, -0.05], [-0.01, 0.30], [0.04, 0.0]])[
        :, None, :
    ]  # (L=4, B=1, N=2)
    g = _garch([1e-5, 2e-4], [0.05, 0.1], [0.9, 0.8])
    f = garch_forecast(r, g)[:, 0]
    h_bar = [1e-5 / 0.05, 2e-4 / 0.1]
    expected = np.empty((4, 2))
    expected[0] = h_bar
    for t in range(1, 4):
        for a in range(2):
            om, al, be = g.omega[a], g.alpha[a], g.beta[a]
            expected[t, a] = om + al * r[t, 0, a] ** 2 + be * expected[t - 1, a]
    np.testing.assert_allclose(f, expected, rtol=1e-14)
    # the 30 % move lifts asset 1's forecast to 0.0112; a cap at 0.005 binds from that row on
    capped = garch_forecast(r, _garch([1e-5, 2e-4], [0.05, 0.1], [0.9, 0.8], cap=[1.0, 0.005]))
    assert capped[2, 0, 1] == 0.005
    assert capped[3, 0, 1] == pytest.approx(2e-4 + 0.8 * 0.005, rel=1e-14)
    np.testing.assert_array_equal(capped[:, 0, 0], f[:, 0])


def test_garch_forecast_equals_arch_with_the_same_fixed_parameters():
    from arch import arch_model
    from arch.univariate import GARCH

    rng = np.random.default_rng(3)
    y = 0.03 * rng.standard_t(5, size=300)
    omega, alpha, beta = 2e-5, 0.08, 0.9
    g = _garch([omega], [alpha], [beta])
    r = np.concatenate([[0.0], y])[:, None, None]
    f = garch_forecast(r, g)[:, 0, 0]
    # arch's own recursion, started from the unconditional variance (backcast = h_bar):
    # sigma2[j] is the variance of y[j], our forecast made one step before, f[j]
    sigma2 = np.empty(len(y))
    bounds = np.tile([0.0, 1e10], (len(y), 1))
    GARCH().compute_variance(np.array([omega, alpha, beta]), y, sigma2, g.h_bar[0], bounds)
    np.testing.assert_allclose(f[:-1], sigma2, rtol=1e-12)
    # arch's one-step forecast at the end (its own backcast has long been forgotten: 0.5^300)
    fast = _garch([2e-4], [0.1], [0.5])
    res = arch_model(y, mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fix([2e-4, 0.1, 0.5])
    expected = res.forecast(horizon=1).variance.to_numpy()[-1, 0]
    assert garch_forecast(r, fast)[-1, 0, 0] == pytest.approx(expected, rel=1e-10)


def test_garch_vol_is_the_annualized_forecast():
    rng = np.random.default_rng(4)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, size=(2, 50, 2)), axis=1))
    cfg = load_config(
        None, {"market.assets": ["BTC", "ETH"], "env.observation.blocks": ["garch_vol"]}
    )
    model = TraderModel.from_market(cfg.market)
    ones = np.ones((2, 50))
    feats = market_features(close, ones, ones, ones * 30, cfg.env.observation, model=model)
    f = garch_forecast(_log_returns(close), model.garch).transpose(1, 0, 2)
    np.testing.assert_allclose(feats, np.sqrt(f * 365.0), rtol=1e-12)
    g = cfg.market.synthetic.garch["ETH"]
    assert model.garch.omega[1] == g.omega_daily and model.garch.beta[1] == g.beta


# ---------------------------------------------------------------------------- regime filter
def _tiny_regime_model(emission: str) -> RegimeModel:
    corr = np.array([[[1.0, 0.2], [0.2, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.9], [0.9, 1.0]]])
    chol = np.linalg.cholesky(corr)
    return RegimeModel(
        transition=np.array([[0.9, 0.06, 0.04], [0.1, 0.85, 0.05], [0.2, 0.05, 0.75]]),
        initial=np.array([0.5, 0.3, 0.2]),
        vol_multiplier=np.array([0.8, 1.0, 1.6]),
        chol=chol,
        chol_inv=np.linalg.inv(chol),
        drift_const=np.array([[0.001, 0.0], [0.003, 0.002], [-0.004, -0.006]]),
        drift_vol_coef=0.1,
        drift_var_coef=0.5,
        nu=5.0,
        emission=emission,
    )


@pytest.mark.parametrize("emission", ["student_t", "gaussian"])
def test_regime_filter_matches_a_hand_computed_two_step_filter(emission):
    model = _tiny_regime_model(emission)
    r = np.array([[0.0, 0.0], [0.01, 0.015], [-0.08, -0.09]])[:, None, :]  # (L=3, B=1, N=2)
    h = np.array([[4e-4, 9e-4], [5e-4, 8e-4], [6e-4, 1e-3]])[:, None, :]
    probs = regime_filter(r, h, model)[:, 0]

    def density(k, ret, var):  # scipy's densities: an independent implementation
        s = model.vol_multiplier[k] * np.sqrt(var)
        mu = model.drift_const[k] + model.drift_vol_coef * s - model.drift_var_coef * s * s
        corr = model.chol[k] @ model.chol[k].T
        cov = np.outer(s, s) * corr
        if emission == "gaussian":
            return stats.multivariate_normal(mu, cov).pdf(ret)
        nu = model.nu
        return stats.multivariate_t(mu, cov * (nu - 2) / nu, df=nu).pdf(ret)

    pi = model.initial
    np.testing.assert_allclose(probs[0], pi)
    for t in (1, 2):  # the return of step t has the variance forecast made at t - 1
        joint = (pi @ model.transition) * [density(k, r[t, 0], h[t - 1, 0]) for k in range(3)]
        pi = joint / joint.sum()
        np.testing.assert_allclose(probs[t], pi, rtol=1e-10)
    assert probs[2].argmax() == 2  # a joint -8 % / -9 % day reads as a crash


def test_regime_probabilities_sum_to_one_and_match_the_true_regime_far_above_chance():
    """On 64 synthetic paths of the calibrated market the filter's most likely regime is the
    generator's true regime on 77 % of the decision days (Student-t emission; 75 % Gaussian), against
    49 % for always guessing the most frequent regime (calm) and 37 % for guessing by its frequencies."""
    cfg = load_config(None)
    paths = sample_paths(cfg.market, np.arange(64), 427, 61)
    r = _log_returns(paths.close)
    accuracy = {}
    for emission in ("student_t", "gaussian"):
        model = TraderModel.from_market(cfg.market, emission)
        probs = regime_filter(r, garch_forecast(r, model.garch), model.regime)
        assert probs.shape == (427, 64, 3)
        assert np.all(probs >= 0.0) and np.all(probs <= 1.0)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-12)
        guess = probs.argmax(axis=-1).T[:, 61:]
        accuracy[emission] = (guess == paths.regime[:, 61:]).mean()
        truth = paths.regime[:, 61:]
        for k in range(3):  # every regime is recognized far above its base rate
            assert (guess[truth == k] == k).mean() > 0.5
    chance = cfg.market.synthetic.stationary_distribution().max()
    assert accuracy["student_t"] > 0.72 and accuracy["gaussian"] > 0.68
    assert accuracy["student_t"] > chance + 0.2


# ---------------------------------------------------------------------------- causality
def test_every_market_block_row_t_does_not_depend_on_the_future():
    cfg = load_config(None, {"env.observation.blocks": ALL_BLOCKS})
    model = TraderModel.from_market(cfg.market)
    paths = sample_paths(cfg.market, np.array([5, 6]), 150, 61)
    args = [paths.close, paths.numeraire_usd, paths.depth_multiplier, paths.gas_price_gwei]
    base = market_features(*args, cfg.env.observation, model=model)
    shocked = [a.copy() for a in args]
    shocked[0][:, 91:] *= np.array([0.5, 1.3, 0.7, 1.0, 2.0])  # moves after t = 90
    for a in shocked[1:]:
        a[:, 91:] *= 1.2
    feats = market_features(*shocked, cfg.env.observation, model=model)
    np.testing.assert_array_equal(feats[:, :91], base[:, :91])
    names = feature_names(tuple(cfg.market.assets), cfg.env.observation)
    for prefix in ("garch_vol_", "regime_p_", "ret_lag0", "vol_", "corr_", "log_gas"):
        cols = [i for i, x in enumerate(names) if x.startswith(prefix)]
        assert not np.allclose(feats[:, 91, cols], base[:, 91, cols]), prefix


def test_blocks_need_the_model_and_a_matching_step():
    cfg = ObservationConfig(blocks=["regime"])
    ones = np.ones((1, 10))
    close = np.ones((1, 10, 5))
    with pytest.raises(ValueError, match=r"blocks \['regime'\] need the market's model"):
        market_features(close, ones, ones, ones, cfg)
    model = TraderModel.from_market(load_config(None).market)
    with pytest.raises(ValueError, match="step_days"):
        market_features(close, ones, ones, ones, cfg, 7.0, model=model)


# ---------------------------------------------------------------------------- layout and names
def test_default_blocks_keep_the_previous_layout():
    cfg = ObservationConfig()
    assert cfg.blocks == list(DEFAULT_OBSERVATION_BLOCKS)
    assert cfg.history_needed == 61
    n, w = 5, cfg.return_window
    assert n_market_features(n, cfg) == w * n + n + n * (n - 1) // 2 + 3
    assert observation_size(n, cfg) == n_market_features(n, cfg) + n + 2
    names = feature_names(("A", "B"), cfg)
    assert names[:2] == ["ret_lag0_A", "ret_lag0_B"] and names[-4:] == [
        "weight_A",
        "weight_B",
        "weight_cash",
        "drawdown",
    ]


def test_block_sizes_and_history_needed_follow_the_blocks():
    cfg = ObservationConfig(blocks=["garch_vol", "regime", "weights"])
    assert [block_size(b, 5, cfg) for b in cfg.blocks] == [5, 3, 6]
    assert observation_size(5, cfg) == 14 and n_market_features(5, cfg) == 8
    assert cfg.history_needed == 2  # the recursions need one return
    assert ObservationConfig(blocks=["realized_vol", "weights"]).history_needed == 21
    assert feature_names(("A", "B"), cfg) == [
        "garch_vol_A",
        "garch_vol_B",
        "regime_p_calm",
        "regime_p_bull",
        "regime_p_crash",
        "weight_A",
        "weight_B",
        "weight_cash",
    ]


def _named_observation(blocks: list[str], extra: dict | None = None) -> dict[str, float]:
    env = make_env(**{**SHORT, **(extra or {}), "env.observation.blocks": blocks})
    env.reset(seed=9)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    sim = env.unwrapped.sim
    from defialloc.agents.export import observation_names

    names = observation_names(sim, env.unwrapped.config)
    assert len(names) == len(set(names)) == sim.obs_dim == obs.shape[0]
    return dict(zip(names, obs.tolist(), strict=True))


def test_block_order_permutes_the_same_named_values():
    """Any order of the blocks gives the same value under each name (names and layout agree)."""
    default = _named_observation(list(DEFAULT_OBSERVATION_BLOCKS) + ["garch_vol", "regime"])
    shuffled = ["drawdown", "regime", "market", "weights", "correlations", "garch_vol"]
    shuffled += ["protocol", "returns", "realized_vol"]
    assert _named_observation(shuffled) == default
    subset = _named_observation(["weights", "regime"])
    assert subset == {k: default[k] for k in subset}
    assert list(subset)[:2] == ["weight_BTC", "weight_ETH"]
    assert sum(v for k, v in subset.items() if k.startswith("regime_p_")) == pytest.approx(1.0)


def test_protocol_block_sits_where_the_blocks_put_it():
    blocks = ["weights", "protocol", "market", "drawdown"]
    named = _named_observation(blocks, {"env.lending.enabled": True, "env.perps.enabled": True})
    keys = list(named)
    assert keys[6:9] == ["log_health_factor", "leverage", "borrow_rate_x10"]
    assert keys[9:14] == [f"perp_exposure_{a}" for a in ("BTC", "ETH", "SOL", "LINK", "AVAX")]
    assert keys[-4:] == ["log_depth", "log_gas", "numeraire_peg", "drawdown"]
    spot = _named_observation(blocks)
    assert list(spot) == keys[:6] + keys[-4:]


def test_batched_env_equals_single_envs_with_non_default_blocks():
    blocks = ["regime", "weights", "garch_vol", "drawdown", "realized_vol"]
    cfg = {**SHORT, "env.observation.blocks": blocks}
    n_envs, seed = 3, 5
    venv = make_vec_env(n_envs=n_envs, seed=seed, **cfg)
    singles = [make_env(**cfg) for _ in range(n_envs)]
    obs_single = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(singles)])
    np.testing.assert_allclose(venv.reset(), obs_single, rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(1)
    for _ in range(90):  # crosses the episode boundary (horizon 40): auto-reset included
        actions = rng.uniform(-1, 1, (n_envs, venv.action_space.shape[0])).astype(np.float32)
        obs_batch, rewards, dones, _ = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, term, trunc, _ = env.step(actions[i])
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-7)
            if term or trunc:
                o, _ = env.reset()
            np.testing.assert_allclose(obs_batch[i], o, rtol=1e-6, atol=1e-7)


def test_model_features_of_a_path_do_not_depend_on_its_batch():
    cfg = load_config(None, {"env.observation.blocks": ALL_BLOCKS})
    model = TraderModel.from_market(cfg.market)
    paths = sample_paths(cfg.market, np.arange(70), 120, 61)  # 70 x 5 columns: the wide-row loops
    args = [paths.close, paths.numeraire_usd, paths.depth_multiplier, paths.gas_price_gwei]
    batch = market_features(*args, cfg.env.observation, model=model)
    one = market_features(*[a[7:8] for a in args], cfg.env.observation, model=model)
    np.testing.assert_array_equal(batch[7:8], one)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "blocks, match",
    [
        (
            ["returns", "garch"],
            r"env\.observation\.blocks.*unknown observation block\(s\) \['garch'\]",
        ),
        (["weights", "weights"], r"env\.observation\.blocks.*\['weights'\] listed more than once"),
        ([], r"env\.observation\.blocks"),
        (["protocol"], "is empty without lending"),
    ],
)
def test_bad_blocks_get_clear_errors(blocks, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, {"env.observation.blocks": blocks})


def test_unknown_block_error_lists_the_allowed_names():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"env.observation.blocks": ["regimes"]})
    assert "allowed: " + ", ".join(OBSERVATION_BLOCKS) in str(err.value)


def test_model_blocks_need_the_market_model_tables():
    over = {"market.source": "replay", "market.assets": ["BTC", "DOGE"]}
    assert load_config(None, over).market.assets == ["BTC", "DOGE"]  # fine without model blocks
    with pytest.raises(ConfigError, match=r"market\.synthetic\.garch\[DOGE\]"):
        load_config(None, {**over, "env.observation.blocks": ["garch_vol", "weights"]})


def test_warmup_must_cover_the_selected_windows():
    with pytest.raises(ConfigError, match="warmup=30 must be >= 61"):
        load_config(None, {"env.warmup": 30})
    cfg = load_config(None, {"env.warmup": 30, "env.observation.blocks": ["garch_vol", "weights"]})
    assert cfg.env.observation.history_needed == 2
