"""Observation features: causal (no look-ahead) and equal to direct computations."""

import numpy as np

from defialloc.envs.config import ObservationConfig
from defialloc.envs.features import (
    ewma_correlation,
    feature_names,
    market_features,
    n_market_features,
)


def _inputs(rng, b=2, length=120, n=3):
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, size=(b, length, n)), axis=1))
    ones = np.ones((b, length))
    return close, ones, ones * 0.8, ones * 45.0


def test_row_t_does_not_depend_on_the_future():
    rng = np.random.default_rng(0)
    cfg = ObservationConfig()
    close, num, depth, gas = _inputs(rng)
    base = market_features(close, num, depth, gas, cfg)
    shocked = close.copy()
    shocked[:, 91:] *= 0.5  # crash after t = 90
    feats = market_features(shocked, num, depth, gas, cfg)
    np.testing.assert_allclose(feats[:, :91], base[:, :91], atol=1e-9)
    assert not np.allclose(feats[:, 91], base[:, 91])


def test_blocks_match_direct_computation():
    rng = np.random.default_rng(1)
    cfg = ObservationConfig(return_window=3, vol_window=5, corr_window=10, corr_halflife=4.0)
    close, num, depth, gas = _inputs(rng, b=1, length=40, n=2)
    feats = market_features(close, num, depth, gas, cfg)
    t = 30
    r = np.log(close[0, 1:] / close[0, :-1])  # r[j] is the return ending at t = j + 1
    row = feats[0, t]
    np.testing.assert_allclose(row[0:2], r[t - 1] / cfg.return_scale)
    np.testing.assert_allclose(row[4:6], r[t - 3] / cfg.return_scale)
    np.testing.assert_allclose(row[6:8], r[t - 5 : t].std(axis=0) * np.sqrt(365), rtol=1e-9)
    lam = 0.5 ** (1 / 4.0)
    w = lam ** np.arange(10)
    window = r[t - 10 : t][::-1]
    cov = (w[:, None, None] * window[:, :, None] * window[:, None, :]).sum(0)
    corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    np.testing.assert_allclose(row[8], corr, rtol=1e-9)
    np.testing.assert_allclose(row[9:12], [np.log(0.8), np.log(45 / 30), 0.0])
    assert feats.shape[-1] == n_market_features(2, cfg)
    assert (
        len(feature_names(("A", "B"), cfg)) == n_market_features(2, cfg) + 2 + 2
    )  # weights (N+1) + drawdown


def test_crash_correlation_is_near_one():
    rng = np.random.default_rng(2)
    common = rng.normal(0, 0.05, size=(1, 200, 1))
    r = np.concatenate([common, common * 1.5 + rng.normal(0, 0.001, size=(1, 200, 1))], axis=-1)
    corr = ewma_correlation(r, halflife=20, window=60)
    assert corr[0, -1, 0, 1] > 0.99
