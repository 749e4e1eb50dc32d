"""Stationary block bootstrap: whole historical days resampled jointly, geometric blocks, dev window only."""

from __future__ import annotations

import numpy as np
import pytest

from defialloc.envs.market.bootstrap import bootstrap_paths, stationary_bootstrap_indices
from defialloc.envs.market.config import REPO_ROOT, MarketConfig, load_market_config
from defialloc.envs.market.replay import load_ohlcv

DATA = REPO_ROOT / "data" / "crypto-daily"
ASSETS = ["BTC", "ETH", "SOL", "LINK", "AVAX"]


@pytest.fixture(scope="module")
def cfg() -> MarketConfig:
    return load_market_config(REPO_ROOT / "configs" / "market" / "bootstrap.yaml")


@pytest.fixture(scope="module")
def history():
    frames = load_ohlcv(DATA, [*ASSETS, "USDC"])  # the whole file span, held-out days included
    close = np.stack([frames[a]["Close"].to_numpy() for a in ASSETS], axis=1)
    return (
        frames["BTC"].index,
        np.diff(np.log(close), axis=0),
        frames["USDC"]["Close"].to_numpy()[1:],
    )


def test_blocks_are_geometric_with_the_configured_mean():
    rng = np.random.default_rng(0)
    u = rng.random((2, 200, 5000))
    idx = stationary_bootstrap_indices(u[0], u[1], n_rows=300, mean_block=8.0)
    cont = (idx[:, 1:] - idx[:, :-1]) % 300 == 1
    assert 1.0 - cont.mean() == pytest.approx(1 / 8.0, rel=0.03)  # a new block starts w.p. 1/8
    assert idx.min() >= 0 and idx.max() <= 299
    # hand case: restarts at t = 0 and 3, rows 5 and 9 of 10 (wraps circularly)
    hand = stationary_bootstrap_indices(
        np.array([[0.9, 0.9, 0.9, 0.1, 0.9]]), np.array([[0.55, 0, 0, 0.95, 0]]), 10, 2.0
    )
    np.testing.assert_array_equal(hand, [[5, 6, 7, 9, 0]])


def test_each_step_is_one_whole_historical_day_from_the_window(cfg, history):
    dates, returns, usdc = history
    paths = bootstrap_paths(cfg, np.arange(16), 300, 30)
    paths.validate()
    sim = np.diff(np.log(paths.close), axis=1).reshape(-1, len(ASSETS))
    dev = dates[1:] <= "2022-12-31"
    rows = {tuple(np.round(r, 10)) for r in returns[dev]}
    assert all(
        tuple(np.round(r, 10)) in rows for r in sim
    )  # joint across assets, never a 2023+ day
    # the numeraire price is that same day's USDC close
    lookup = {tuple(np.round(r, 10)): u for r, u in zip(returns[dev], usdc[dev], strict=True)}
    num = paths.numeraire_usd[:, 1:].ravel()
    assert all(lookup[tuple(np.round(r, 10))] == n for r, n in zip(sim, num, strict=True))


def test_bars_determinism_and_eth(cfg):
    a = bootstrap_paths(cfg, np.array([4, 5, 6]), 200, 10)
    b = bootstrap_paths(cfg, np.array([5]), 200, 10)
    for name in (
        "close",
        "high",
        "low",
        "numeraire_usd",
        "regime",
        "depth_multiplier",
        "gas_price_gwei",
    ):
        np.testing.assert_array_equal(getattr(a, name)[1:2], getattr(b, name), err_msg=name)
    assert np.all(a.high >= a.close) and np.all(a.low <= a.close)
    np.testing.assert_array_equal(a.eth_usd, a.close[:, :, 1])
    no_eth = bootstrap_paths(
        cfg.model_copy(update={"assets": ["BTC", "SOL"]}), np.array([5]), 200, 10
    )
    no_eth.validate()
    assert no_eth.eth_usd.min() > 100


def test_window_must_hold_data(cfg):
    with pytest.raises(ValueError, match="holds 0 usable days"):
        bootstrap_paths(
            cfg.model_copy(update={"start": None, "end": MarketConfig().end.replace(year=2020)}),
            np.array([0]),
            50,
            5,
        )
