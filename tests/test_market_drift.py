"""Drift convention of the synthetic market (``synthetic.drift``): expected simple returns by regime and
conditional variance against simulation, hand-computed drift terms, determinism for every kind, and the
log kind's paths against values recorded before the convention became explicit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defialloc.envs.market import synthetic
from defialloc.envs.market.config import MarketConfig
from defialloc.envs.market.synthetic import generate_synthetic_paths
from defialloc.envs.market.synthetic_model import expected_simple_return_step, model_of

R_YEAR = 0.3
LOG_R = {"calm": math.log(1.3), "bull": math.log(1.3), "crash": math.log(1.3)}
ARITHMETIC = {"kind": "arithmetic", "simple_return_per_year": R_YEAR}
LOG = {"kind": "log", "log_return_per_year": LOG_R}  # the same log growth in every regime
ASSETS = ["BTC", "SOL", "AVAX"]  # no ETH: the ETH fallback column is simulated too
N_PATHS, LENGTH, N_GROUPS = 600, 366, 20


def _market(drift: dict, assets: list[str] = ASSETS, **update) -> MarketConfig:
    """The default priors (regime vol multipliers 0.8 / 1.05 / 1.4, GARCH, down-jumps) with ``drift``."""
    return MarketConfig.model_validate(
        {"assets": assets, "synthetic": {"drift": drift, "nu": 6.0}, **update}
    )


def _paths_and_vol(cfg: MarketConfig, n_paths: int, length: int):
    """Paths and the steps' diffusive vols ``s_t = vm[k_t] sqrt(h_t)`` ``(B, L, M)`` (read off the
    generator's ``_log_returns``: ``paths.cond_var`` has the assets' columns only, not the ETH
    fallback's)."""
    captured = {}
    original = synthetic._log_returns

    def spy(*args, **kwargs):
        returns, vol, var = original(*args, **kwargs)
        captured["vol"] = np.swapaxes(vol, 0, 1).astype(np.float64)
        return returns, vol, var

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "_log_returns", spy)
        paths = generate_synthetic_paths(cfg, np.arange(n_paths), length, 0)
    return paths, captured["vol"]


class _Sample:
    """Simple returns of the steps ``t = 1..L-1`` with their regime and conditional diffusive vol."""

    def __init__(self, drift: dict, step_days: float = 1.0, length: int = LENGTH):
        self.cfg = _market(drift, step_days=step_days)
        paths, vol = _paths_and_vol(self.cfg, N_PATHS, length)
        self.ret = paths.close[:, 1:] / paths.close[:, :-1] - 1.0  # (B, L-1, N)
        self.eth = paths.eth_usd[:, 1:] / paths.eth_usd[:, :-1] - 1.0  # (B, L-1)
        self.regime = paths.regime[:, 1:]  # regime of the step each return ends on
        self.vol = vol[:, 1:, : len(ASSETS)]
        self.eth_vol = vol[:, 1:, len(ASSETS)]

    def grouped(self, stat) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard error of ``stat(paths)`` over ``N_GROUPS`` disjoint groups of paths
        (paths are independent; steps and assets within a path are not)."""
        groups = np.array_split(np.arange(N_PATHS), N_GROUPS)
        values = np.array([stat(g) for g in groups])
        return values.mean(axis=0), values.std(axis=0, ddof=1) / np.sqrt(N_GROUPS)

    def regime_means(self, g: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """``(3,)`` mean simple return per step on each regime's steps, pooled over assets."""
        x = self.ret if x is None else x
        return np.array([x[g][self.regime[g] == k].mean() for k in range(3)])

    def variance_slope(self, g: np.ndarray) -> float:
        """OLS slope of the simple return on the step's conditional diffusive variance ``s_t^2``."""
        return float(np.polyfit((self.vol[g] ** 2).ravel(), self.ret[g].ravel(), 1)[0])


@pytest.fixture(scope="module")
def arithmetic() -> _Sample:
    return _Sample(ARITHMETIC)


@pytest.fixture(scope="module")
def log() -> _Sample:
    return _Sample(LOG)  # the same seeds: the paths differ only by the drift


def test_arithmetic_simple_returns_are_equal_across_regimes_and_log_ones_are_not(arithmetic, log):
    step = (1 + R_YEAR) ** (1 / 365) - 1  # 7.19e-4 a day
    mean, se = arithmetic.grouped(arithmetic.regime_means)
    assert np.all(np.abs(mean - step) < 4 * se), ((mean - step) / se, mean * 365)
    gap, gap_se = arithmetic.grouped(
        lambda g: arithmetic.regime_means(g)[2] - arithmetic.regime_means(g)[0]
    )
    assert abs(gap) < 4 * gap_se, gap / gap_se
    eth, eth_se = arithmetic.grouped(lambda g: arithmetic.regime_means(g, arithmetic.eth))
    assert np.all(np.abs(eth - step) < 4 * eth_se), (eth - step) / eth_se  # ETH fallback too
    # the same check on the log convention's paths fails: the crash regime pays the most
    mean, se = log.grouped(log.regime_means)
    assert np.all(mean - step > 4 * se), (mean - step) / se
    gap, gap_se = log.grouped(lambda g: log.regime_means(g)[2] - log.regime_means(g)[0])
    assert gap > 6 * gap_se and gap * 365 > 1.0, (gap / gap_se, gap * 365)


def test_simple_returns_do_not_rise_with_the_conditional_variance(arithmetic, log):
    slope, se = arithmetic.grouped(arithmetic.variance_slope)
    assert abs(slope) < 4 * se, (slope, se)
    slope, se = log.grouped(log.variance_slope)
    assert slope > 4 * se, (slope, se)  # ~0.5: E[exp(r)] = exp(mu + s^2 / 2)


def test_expected_simple_return_step_matches_simulation_in_every_regime(arithmetic, log):
    """The helper at each step's own (regime, h) against the simulated simple returns."""
    for sample in (arithmetic, log):
        vm = sample.cfg.synthetic.vol_multiplier.array()
        h = (sample.vol / vm[sample.regime][..., None]) ** 2
        predicted = expected_simple_return_step(sample.cfg, sample.regime, h)
        gap, se = sample.grouped(lambda g, p=predicted, s=sample: s.regime_means(g, s.ret - p))
        assert np.all(np.abs(gap) < 4 * se), (sample.cfg.synthetic.drift.kind, gap / se)


@pytest.mark.parametrize("step_days", [1.0, 7.0])
def test_sharpe_drift_pays_excess_return_in_proportion_to_the_conditional_vol(step_days):
    s_year = 1.5
    sample = _Sample({"kind": "sharpe", "sharpe_per_year": s_year}, step_days, length=200)
    per_vol = sample.ret / sample.vol  # E[R / s] = E[exp(c s) - 1] / s ~ c (+ c^2 s / 2 ~ 0.3 %)
    expected = s_year * math.sqrt(step_days / 365)
    ratio, se = sample.grouped(lambda g: per_vol[g].mean())
    assert abs(ratio - expected) < 4 * se and se < 0.1 * expected, (ratio, expected, se)
    by_regime, se = sample.grouped(lambda g: sample.regime_means(g, per_vol))
    assert np.all(np.abs(by_regime - expected) < 4 * se), (by_regime, expected)
    eth, se = sample.grouped(lambda g: (sample.eth[g] / sample.eth_vol[g]).mean())
    assert abs(eth - expected) < 4 * se, (eth, expected)


# ------------------------------------------------------------------ hand-computed drift terms
def _hand_config(drift: dict) -> MarketConfig:
    """One asset, step 2 days; crash regime: common events 36.5 / year, own jumps 18.25 / year, so
    P(jump in a step) = 1 - exp(-0.2) exp(-0.1) = 1 - exp(-0.3); jump log size N(-0.1, 0.05^2)."""
    return MarketConfig.model_validate(
        {
            "assets": ["BTC"],
            "step_days": 2.0,
            "synthetic": {
                "drift": drift,
                "vol_multiplier": {"calm": 0.8, "bull": 1.0, "crash": 1.5},
                "jumps": {
                    "common_intensity_per_year": {"calm": 0.0, "bull": 0.0, "crash": 36.5},
                    "idio_intensity_per_year": {"calm": 0.0, "bull": 0.0, "crash": 18.25},
                    "mean_log": {"BTC": -0.1},
                    "std_log": {"BTC": 0.05},
                },
            },
        }
    )


H = 4e-4  # GARCH variance of a 2-day step; crash: s^2 = 1.5^2 x 4e-4 = 9e-4, s = 0.03
P_JUMP = 1 - math.exp(-0.3)  # 0.2591818
JUMP_MGF = 1 - P_JUMP + P_JUMP * math.exp(-0.1 + 0.05**2 / 2)  # E[exp(J)] = 0.975637


@pytest.mark.parametrize(
    "drift, mu_hand, expected_hand, fallback_hand",
    [
        (  # mu = log(1+R) dt/365 - s^2/2 - log E[exp J]; E[P'/P] = (1+R)^(dt/365)
            {"kind": "arithmetic", "simple_return_per_year": 0.2},
            math.log(1.2) * 2 / 365 - 9e-4 / 2 - math.log(JUMP_MGF),
            1.2 ** (2 / 365) - 1,
            1.2 ** (2 / 365) - 1,
        ),
        (  # mu = S sqrt(dt/365) s - s^2/2 - log E[exp J]; E[P'/P] = exp(S sqrt(dt/365) s)
            {"kind": "sharpe", "sharpe_per_year": 1.5},
            1.5 * math.sqrt(2 / 365) * 0.03 - 9e-4 / 2 - math.log(JUMP_MGF),
            math.exp(1.5 * math.sqrt(2 / 365) * 0.03) - 1,
            math.exp(1.5 * math.sqrt(2 / 365) * 0.03) - 1,
        ),
        (  # mu = mu_log dt/365 - P m; E[P'/P] = exp(mu + s^2/2) E[exp J]
            {"kind": "log", "log_return_per_year": {"calm": 0.0, "bull": 0.0, "crash": -0.73}},
            -0.73 * 2 / 365 + 0.1 * P_JUMP,
            math.exp(-0.73 * 2 / 365 + 0.1 * P_JUMP + 9e-4 / 2) * JUMP_MGF - 1,
            math.exp(-0.73 * 2 / 365 + 9e-4 / 2) - 1,  # no jumps, no compensator
        ),
    ],
    ids=["arithmetic", "sharpe", "log"],
)
def test_drift_terms_and_expected_simple_return_match_hand_values(
    drift, mu_hand, expected_hand, fallback_hand
):
    cfg = _hand_config(drift)
    model = model_of(cfg)
    d = model.drift
    mu = d.const[2, 0] + d.vol_coef * 0.03 - d.var_coef * 9e-4  # the generator's log drift, crash
    assert mu == pytest.approx(mu_hand, rel=1e-6)
    assert model.mean_step[2, 0] == pytest.approx(d.const[2, 0], rel=1e-6)  # its float32 copy
    got = expected_simple_return_step(cfg, 2, np.array([H]))
    assert got.shape == (1,) and got[0] == pytest.approx(expected_hand, rel=1e-6)
    # ETH is not an asset: column 1 is the ETH fallback, the same convention without jumps
    both = expected_simple_return_step(model, np.array([2, 2, 2]), np.full((3, 2), H))
    assert model.n_shocks == 2 and both.shape == (3, 2)
    np.testing.assert_allclose(both, [[expected_hand, fallback_hand]] * 3, rtol=1e-6)


def test_arithmetic_expected_return_ignores_regime_and_variance():
    cfg = _hand_config({"kind": "arithmetic", "simple_return_per_year": -0.4})
    h = np.array([[1e-5], [1e-3], [2e-2]])
    got = expected_simple_return_step(cfg, np.array([0, 1, 2]), h)
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got, 0.6 ** (2 / 365) - 1, rtol=1e-9)


# ------------------------------------------------------------------ determinism, reference paths
@pytest.mark.parametrize(
    "drift", [ARITHMETIC, LOG, {"kind": "sharpe", "sharpe_per_year": 0.8}], ids=lambda d: d["kind"]
)
@pytest.mark.parametrize("assets", [["BTC", "ETH", "SOL"], ["BTC", "SOL"]], ids=["eth", "fallback"])
def test_determinism_and_batch_independence_for_every_drift_kind(drift, assets):
    cfg = _market(drift, assets)
    batch = generate_synthetic_paths(cfg, np.array([1, 2, 3]), 120, 10)
    alone = generate_synthetic_paths(cfg, np.array([2]), 120, 10)
    again = generate_synthetic_paths(cfg, np.array([1, 2, 3]), 120, 10)
    for name in ("close", "high", "low", "eth_usd", "regime"):
        np.testing.assert_array_equal(getattr(batch, name)[1:2], getattr(alone, name), err_msg=name)
        np.testing.assert_array_equal(getattr(batch, name), getattr(again, name), err_msg=name)


# Recorded on main at e896f34 (before the drift convention), with the then config key
# ``drift_log_per_year: {calm: 0.2, bull: 0.5, crash: -0.3}`` on the default priors:
# ``generate_synthetic_paths(cfg, np.array([3, 11]), 200, 0)``, closes at t = 57 and t = 199 (every
# step's return enters the latter) and ETH's price at t = 199, printed with repr(float(x)).
REFERENCE = {
    ("BTC", "ETH", "SOL", "LINK", "AVAX"): {
        57: [
            [
                17422.774181093104,
                1254.2496646223965,
                7.645175977481869,
                7.614549774774961,
                17.15805057481177,
            ],
            [
                15590.664356077987,
                574.6090043596737,
                4.114953235910257,
                3.5000261921230758,
                2.075498310727282,
            ],
        ],
        199: [
            [
                16790.35011092359,
                1367.6034338818404,
                6.056313479197227,
                9.014414547706568,
                17.72257903812672,
            ],
            [
                31458.2536053278,
                333.8018665037715,
                2.775069090365035,
                5.493957649694653,
                1.2848606807527645,
            ],
        ],
        "eth": [1367.6034338818404, 333.8018665037715],
    },
    ("BTC", "SOL"): {
        57: [[12480.69092277669, 9.135423194923193], [22366.813568930334, 12.47978735463479]],
        199: [[11023.024334474563, 3.1563978268267623], [53799.45201892108, 133.15764271090754]],
        "eth": [19446.539284052706, 499.8485237292247],
    },
}


@pytest.mark.parametrize("assets", list(REFERENCE), ids=["eth", "fallback"])
def test_log_kind_reproduces_the_paths_from_before_the_drift_convention(assets):
    drift = {"kind": "log", "log_return_per_year": {"calm": 0.2, "bull": 0.5, "crash": -0.3}}
    cfg = MarketConfig.model_validate({"assets": list(assets), "synthetic": {"drift": drift}})
    paths = generate_synthetic_paths(cfg, np.array([3, 11]), 200, 0)
    ref = REFERENCE[assets]
    for t in (57, 199):
        np.testing.assert_array_equal(paths.close[:, t], ref[t], err_msg=str(t))
    np.testing.assert_array_equal(paths.eth_usd[:, 199], ref["eth"])
