"""Calibration on development data (<= 2022-12-31): hygiene, building blocks, fitted-vs-data tolerances."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from envs.market.calibrate import (
    _depeg_params,
    calibrate_market,
    detect_jumps,
    nearest_correlation,
    run_calibration,
    transition_counts,
    write_market_config,
)
from envs.market.calibration_report import calibration_report
from envs.market.config import REPO_ROOT, load_market_config
from envs.market.replay import load_ohlcv

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
    drift = syn.drift_log_per_year.array()
    assert np.ptp(drift) < 1e-9  # full shrinkage: regimes predict no return
    assert fitted.end.isoformat() == "2022-12-31" and fitted.source == "synthetic"


def test_shipped_default_yaml_is_reproducible(fitted):
    shipped = load_market_config(REPO_ROOT / "configs" / "market" / "default.yaml")
    a, b = shipped.synthetic.model_dump(), fitted.synthetic.model_dump()
    flat_a, flat_b = pd.json_normalize(a).iloc[0], pd.json_normalize(b).iloc[0]
    assert (
        list(flat_a.index) == list(flat_b.index) and shipped.synthetic.correlation.assets == ASSETS
    )
    for key in flat_a.index.drop("correlation.assets"):
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


def test_run_calibration_writes_loadable_yaml_and_prints_table(tmp_path):
    out = tmp_path / "market.yaml"
    buf = io.StringIO()
    cfg, table = run_calibration(
        DATA,
        out,
        ["BTC", "ETH"],
        end="2022-06-30",
        n_report_paths=20,
        console=Console(file=buf, width=140),
    )
    loaded = load_market_config(out)
    assert loaded.assets == ["BTC", "ETH"] and str(loaded.end) == "2022-06-30"
    assert (
        out.read_text().startswith("# Calibrated synthetic market")
        and "defialloc calibrate" in out.read_text()
    )
    assert "ann_vol" in buf.getvalue() and set(table["metric"]) >= {
        "ann_vol",
        "worst_day",
        "corr_crash",
    }
    write_market_config(loaded, tmp_path / "again.yaml")
    assert load_market_config(tmp_path / "again.yaml") == loaded
