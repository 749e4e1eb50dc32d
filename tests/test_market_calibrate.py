"""Calibration on development data (<= 2022-12-31): hygiene, building blocks, fitted-vs-data tolerances."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from defialloc.envs.market.calibrate import (
    _depeg_params,
    arithmetic_drift,
    calibrate_market,
    detect_jumps,
    nearest_correlation,
    run_calibration,
    sharpe_drift,
    transition_counts,
    write_market_config,
)
from defialloc.envs.market.calibration_report import calibration_report
from defialloc.envs.market.config import REPO_ROOT, load_market_config
from defialloc.envs.market.replay import label_regimes, load_ohlcv

DATA = REPO_ROOT / "data" / "crypto-daily"
ASSETS = ["BTC", "ETH", "SOL", "LINK", "AVAX"]


@pytest.fixture(scope="module")
def fitted():
    return calibrate_market(DATA, ASSETS, end="2022-12-31")


@pytest.fixture(scope="module")
def report(fitted) -> pd.DataFrame:
    data = load_ohlcv(DATA, ASSETS, fitted.start, fitted.end)
    return calibration_report(fitted, data, n_paths=150, seed=0).set_index(["metric", "asset"])


def test_refuses_held_out_data_unless_explicit():
    with pytest.raises(ValueError, match="held-out period"):
        calibrate_market(DATA, ASSETS, end="2023-01-01")


def test_annualized_vol_within_25_percent(report):
    vol = report.loc["ann_vol"]
    rel = (vol["model_median"] - vol["data"]).abs() / vol["data"]
    assert (rel < 0.25).all(), rel
    assert ((vol["data"] >= vol["model_p05"]) & (vol["data"] <= vol["model_p95"])).all()


def test_worst_day_sign_and_magnitude(report):
    worst = report.loc["worst_day"]
    assert (worst["data"] < 0).all() and (worst["model_median"] < 0).all()
    ratio = worst["model_median"] / worst["data"]
    assert ((ratio > 0.67) & (ratio < 1.5)).all(), ratio
    assert ((worst["data"] >= worst["model_p05"]) & (worst["data"] <= worst["model_p95"])).all()


def test_correlation_higher_in_crash_for_data_and_model(report):
    calm, crash = report.loc[("corr_calm", "all")], report.loc[("corr_crash", "all")]
    assert crash["data"] > calm["data"] + 0.15
    assert crash["model_median"] > calm["model_median"] + 0.15
    assert (
        abs(crash["model_median"] - crash["data"]) < 0.05
        and abs(calm["model_median"] - calm["data"]) < 0.05
    )


def test_data_kurtosis_is_inside_the_model_range(report):
    kurt = report.loc["excess_kurtosis"]
    assert ((kurt["data"] >= kurt["model_p05"]) & (kurt["data"] <= kurt["model_p95"])).all()


def test_fitted_parameters_are_sane(fitted):
    syn = fitted.synthetic
    for name, g in syn.garch.items():
        assert g.alpha + g.beta < 1 and g.omega_daily > 0, name
    assert syn.nu > 2
    assert all(syn.jumps.mean_log[a] < 0 for a in ASSETS)  # jumps biased negative in 2021-22
    assert syn.jumps.common_intensity_per_year.crash > syn.jumps.common_intensity_per_year.calm
    assert syn.drift.kind == "arithmetic" and -0.9 < syn.drift.simple_return_per_year < 5.0
    assert fitted.end.isoformat() == "2022-12-31" and fitted.source == "synthetic"


def test_shipped_default_yaml_is_reproducible(fitted):
    shipped = load_market_config(REPO_ROOT / "configs" / "market" / "default.yaml")
    a, b = shipped.synthetic.model_dump(), fitted.synthetic.model_dump()
    flat_a, flat_b = pd.json_normalize(a).iloc[0], pd.json_normalize(b).iloc[0]
    assert (
        list(flat_a.index) == list(flat_b.index) and shipped.synthetic.correlation.assets == ASSETS
    )
    assert shipped.synthetic.drift.kind == fitted.synthetic.drift.kind == "arithmetic"
    for key in flat_a.index.drop(["correlation.assets", "drift.kind"]):
        np.testing.assert_allclose(
            np.asarray(flat_a[key], float),
            np.asarray(flat_b[key], float),
            rtol=1e-4,
            atol=1e-9,
            err_msg=key,
        )


def test_detect_jumps_hand_case():
    rng = np.random.default_rng(1)
    r = rng.standard_normal((300, 2)) * 0.01
    r[100, 0], r[200, 1] = -0.2, 0.15  # 20 and 15 sigma
    jump, diffusive = detect_jumps(r)
    assert set(zip(*np.nonzero(jump), strict=True)) == {(100, 0), (200, 1)}
    assert abs(diffusive[100, 0]) < 0.01 and diffusive[5, 0] == r[5, 0]


def test_transition_counts_and_correlation_repair():
    np.testing.assert_array_equal(
        transition_counts(np.array([0, 0, 2, 2, 1, 0])), [[1, 0, 1], [1, 0, 0], [0, 1, 1]]
    )
    bad = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    fixed = nearest_correlation(bad)
    assert np.linalg.eigvalsh(fixed).min() > 0 and np.allclose(np.diag(fixed), 1.0)
    good = np.array([[1.0, 0.3], [0.3, 1.0]])
    np.testing.assert_allclose(nearest_correlation(good), good, atol=1e-12)


def test_depeg_statistics_hand_case():
    days = pd.date_range("2021-01-01", periods=730, freq="D")
    low = np.ones(730)
    close = np.ones(730)
    low[[100, 500]], close[[100, 500]] = [0.98, 0.95], [0.995, 0.99]
    frame = pd.DataFrame({"Low": low, "Close": close}, index=days)
    stationary = np.array([0.5, 0.25, 0.25])
    dp = _depeg_params({"USDC": frame}, ["USDC"], stationary)
    assert (dp.depth_min, dp.depth_max) == pytest.approx((0.02, 0.05))
    # 2 events in 2 years; crash days 4x as likely, normalized to the stationary mix: 1 = w . (1, 1, 4) x
    x = 1.0 / (0.5 + 0.25 + 1.0)
    assert dp.intensity_per_year.calm == pytest.approx(
        x
    ) and dp.intensity_per_year.crash == pytest.approx(4 * x)


@pytest.mark.parametrize("drift", ["arithmetic", "sharpe", "log"])
def test_run_calibration_writes_loadable_yaml_and_prints_tables(tmp_path, drift):
    out = tmp_path / "market.yaml"
    buf = io.StringIO()
    cfg, table, expected = run_calibration(
        DATA,
        out,
        ["BTC", "ETH"],
        end="2022-06-30",
        n_report_paths=20,
        console=Console(file=buf, width=140),
        drift=drift,
    )
    loaded = load_market_config(out)
    assert loaded.assets == ["BTC", "ETH"] and str(loaded.end) == "2022-06-30"
    assert loaded.synthetic.drift.kind == drift
    text = out.read_text()
    assert text.startswith("# Calibrated synthetic market") and "defialloc calibrate" in text
    assert f"--end 2022-06-30 --drift {drift}" in text.split("source:")[0]
    printed = buf.getvalue()
    assert "ann_vol" in printed and "expected simple return per year" in printed
    assert set(table["metric"]) >= {"ann_vol", "worst_day", "best_day", "corr_crash"}
    best = table[table["metric"] == "best_day"]
    assert (best["data"] > 0).all() and (best["model_median"] > 0).all()
    # expected simple returns: data = next-day simple return after each causal label, x 365
    assert list(expected.columns) == [
        "regime",
        "asset",
        "data",
        "data_se",
        "model",
        "model_median",
        "model_p05",
        "model_p95",
    ]
    assert len(expected) == 6 and (expected["data_se"] > 0).all()
    frames = load_ohlcv(DATA, ["BTC", "ETH"], cfg.start, cfg.end)
    close = np.stack([frames[a]["Close"].to_numpy() for a in ("BTC", "ETH")], axis=1)
    calm = label_regimes(close, cfg.regime_rule)[:-1] == 0
    eth_next = close[1:, 1] / close[:-1, 1] - 1.0
    row = expected.set_index(["regime", "asset"]).loc[("calm", "ETH")]
    assert row["data"] == pytest.approx(365 * eth_next[calm].mean(), rel=1e-9)
    simple = np.expm1(np.diff(np.log(close), axis=0))
    if (
        drift == "arithmetic"
    ):  # R = (1 + pooled mean daily simple return)^365 - 1, model = 365 x mean
        r_year = (1 + simple.mean()) ** 365 - 1
        assert loaded.synthetic.drift.simple_return_per_year == pytest.approx(r_year, rel=1e-6)
        np.testing.assert_allclose(expected["model"], 365 * simple.mean(), rtol=1e-6)
    elif drift == "sharpe":
        assert np.sign(loaded.synthetic.drift.sharpe_per_year) == np.sign(simple.sum())
    else:  # full shrinkage: every regime's log drift is the pooled mean log return
        log_mean = np.diff(np.log(close), axis=0).mean() * 365
        np.testing.assert_allclose(
            loaded.synthetic.drift.log_return_per_year.array(), log_mean, rtol=1e-6
        )
    write_market_config(loaded, tmp_path / "again.yaml")
    assert load_market_config(tmp_path / "again.yaml") == loaded


def test_drift_fits_hand_cases():
    returns = np.log(np.array([[1.02, 0.99], [0.98, 1.03]]))  # simple +2 %, -1 %, -2 %, +3 %
    assert arithmetic_drift(returns).simple_return_per_year == pytest.approx(1.005**365 - 1)
    vol = np.array([[0.05, 0.05], [0.1, 0.1]])  # sum 0.3; sum of simple returns 0.02
    assert sharpe_drift(returns, vol).sharpe_per_year == pytest.approx(0.02 / 0.3 * np.sqrt(365))
    with pytest.raises(
        ValueError, match="drift='geometric' must be one of arithmetic, log, sharpe"
    ):
        calibrate_market(DATA, ASSETS, drift="geometric")
