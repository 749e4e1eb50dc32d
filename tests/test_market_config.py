"""Market config: bounds, cross-field rules and error messages that name the key and the value."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from defialloc.envs.config import load_config
from defialloc.envs.market.config import (
    REPO_ROOT,
    ArithmeticDrift,
    GarchParams,
    LogDrift,
    MarketConfig,
    SharpeDrift,
    check_sample_request,
    load_market_config,
    resolve_data_dir,
)

DEFAULT_YAML = REPO_ROOT / "configs" / "market" / "default.yaml"


def _with(path: str, value) -> dict:
    """A MarketConfig dict with one dotted key set."""
    data = MarketConfig().model_dump(mode="json")
    node = data
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return data


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("source", "live", "source"),
        ("step_days", 0.0, "step_days"),
        ("synthetic.nu", 2.0, "nu"),
        ("synthetic.garch.BTC.alpha", 1.5, "alpha"),
        ("synthetic.vol_multiplier.crash", -1.0, "crash"),
        (
            "synthetic.transition_daily",
            [[0.5, 0.5, 0.1], [0, 1, 0], [0, 0, 1]],
            "row 'calm' sums to 1.1",
        ),
        ("synthetic.transition_daily", [[1, 0], [0, 1]], "3x3"),
        ("synthetic.depeg.depth_max", 0.01, "depth_max=0.01 must be >= depth_min"),
        ("synthetic.jumps.std_log", {"BTC": -0.1}, r"std_log\[BTC\]=-0.1"),
        ("gas.spike_probability.crash", 1.5, "spike_probability"),
        ("bootstrap.mean_block_length", 0.5, "mean_block_length"),
        ("assets", ["BTC", "BTC"], "duplicates"),
        ("assets", ["btc"], "upper-case"),
        ("numeraire", "BTC", "numeraire 'BTC' must not also be a risky asset"),
    ],
)
def test_out_of_range_values_name_the_field(key, value, fragment):
    with pytest.raises(ValidationError, match=fragment) as info:
        MarketConfig.model_validate(_with(key, value))
    # the error location names the offending (top-level) field
    assert key.split(".")[0] in str(info.value) or fragment in str(info.value)


def test_unknown_keys_fail_naming_the_key():
    with pytest.raises(ValidationError, match="volatility"):
        MarketConfig.model_validate({"volatility": 1.0})
    data = _with(
        "synthetic.garch.BTC", {"omega_daily": 1e-4, "alpha": 0.1, "beta": 0.8, "gamma": 0.1}
    )
    with pytest.raises(ValidationError, match=r"synthetic\.garch\.BTC\.gamma"):
        MarketConfig.model_validate(data)


def test_garch_must_be_stationary():
    with pytest.raises(ValidationError, match=r"alpha \+ beta = 1.000000 must be < 1"):
        GarchParams(omega_daily=1e-4, alpha=0.2, beta=0.8)
    assert GarchParams(
        omega_daily=1e-4, alpha=0.1, beta=0.8
    ).unconditional_variance_daily == pytest.approx(1e-3)


def test_correlations_must_be_psd_with_unit_diagonal():
    bad = [[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]  # eigenvalue -0.8
    corr = {
        "assets": ["BTC", "ETH", "SOL"],
        "calm": bad,
        "bull": np.eye(3).tolist(),
        "crash": np.eye(3).tolist(),
    }
    with pytest.raises(ValidationError, match="correlation.calm must be positive semi-definite"):
        MarketConfig.model_validate(_with("synthetic.correlation", corr))
    corr["calm"] = (np.eye(3) * 2).tolist()
    with pytest.raises(ValidationError, match="unit diagonal"):
        MarketConfig.model_validate(_with("synthetic.correlation", corr))


def test_every_asset_needs_its_per_asset_tables_for_synthetic_only():
    with pytest.raises(ValidationError, match=r"synthetic\.garch\[DOGE\]"):
        MarketConfig(assets=["BTC", "DOGE"])
    assert MarketConfig(assets=["BTC", "DOGE"], source="replay").assets == ["BTC", "DOGE"]


def test_dates_and_daily_sources():
    with pytest.raises(ValidationError, match="start=2023-01-02 must be <= end=2023-01-01"):
        MarketConfig(start="2023-01-02", end="2023-01-01")
    with pytest.raises(ValidationError, match="uses daily data"):
        MarketConfig(source="replay", step_days=7.0)
    assert MarketConfig().end == dt.date(2022, 12, 31)  # default windows stay in development data


def test_subset_and_reordering_of_assets_pick_the_right_correlations():
    cfg = MarketConfig(assets=["SOL", "BTC"])
    full = np.asarray(cfg.synthetic.correlation.crash)
    names = cfg.synthetic.correlation.assets
    sub = cfg.synthetic.correlation.matrices(["SOL", "BTC"])[2]
    assert sub[0, 1] == full[names.index("SOL"), names.index("BTC")]


def test_load_market_config_errors_name_file_and_key(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_market_config(tmp_path / "nope.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("source: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_market_config(bad_yaml)
    typo = tmp_path / "typo.yaml"
    typo.write_text("source: synthetic\nstep_dayz: 1\n")
    with pytest.raises(ValueError, match=r"typo\.yaml[\s\S]*step_dayz: unknown key"):
        load_market_config(typo)
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text("market:\n  source: replay\n")
    assert load_market_config(wrapped).source == "replay"


def test_old_drift_key_fails_saying_what_to_write(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("synthetic:\n  drift_log_per_year: {calm: 0.1, bull: 0.2, crash: 0.3}\n")
    with pytest.raises(ValueError) as info:
        load_market_config(old)
    msg = str(info.value)
    assert "synthetic.drift_log_per_year: drift_log_per_year was replaced by drift" in msg, msg
    assert "drift: {kind: log, log_return_per_year: {calm: 0.1, bull: 0.2, crash: 0.3}}" in msg
    assert "drift: {kind: arithmetic, simple_return_per_year: R}" in msg
    with pytest.raises(ValidationError, match="drift_log_per_year was replaced by drift"):
        MarketConfig.model_validate({"synthetic": {"drift_log_per_year": {"calm": 0.0}}})


def test_unknown_drift_kind_names_the_key_and_the_allowed_kinds(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthetic:\n  drift: {kind: geometric, simple_return_per_year: 0.1}\n")
    with pytest.raises(ValueError) as info:
        load_market_config(bad)
    assert "synthetic.drift.kind = 'geometric': must be one of arithmetic, log, sharpe" in str(
        info.value
    )
    # through the simulation config (prefix market.), and pydantic's own message
    with pytest.raises(
        ValueError,
        match=r"market\.synthetic\.drift\.kind = 'geometric': must be one of arithmetic, log, sharpe",
    ):
        load_config({"market": {"synthetic": {"drift": {"kind": "geometric"}}}})
    with pytest.raises(ValidationError, match=r"kind is one of 'arithmetic' .*'log', 'sharpe'"):
        MarketConfig.model_validate(_with("synthetic.drift", {"kind": "geometric"}))
    with pytest.raises(ValueError, match=r"synthetic\.drift = 0\.1: must be a mapping with kind"):
        load_config({"market": {"synthetic": {"drift": 0.1}}})


def test_drift_kinds_defaults_and_bounds():
    assert MarketConfig().synthetic.drift == ArithmeticDrift(simple_return_per_year=0.0)
    no_kind = MarketConfig.model_validate(_with("synthetic.drift", {"simple_return_per_year": 0.2}))
    assert no_kind.synthetic.drift == ArithmeticDrift(simple_return_per_year=0.2)
    for drift, fragment in [
        ({"simple_return_per_year": -1.0}, "greater than -1"),
        ({"simple_return_per_year": float("inf")}, "finite"),
        ({"kind": "sharpe", "sharpe_per_year": float("nan")}, "finite"),
        ({"kind": "sharpe"}, r"sharpe_per_year[\s\S]*Field required"),
        ({"kind": "log", "log_return_per_year": {"calm": 0.1}}, r"log_return_per_year\.bull"),
        ({"kind": "sharpe", "sharpe_per_year": 1.0, "simple_return_per_year": 0.1}, "extra"),
    ]:
        with pytest.raises(ValidationError, match=fragment):
            MarketConfig.model_validate(_with("synthetic.drift", drift))
    for drift in (
        SharpeDrift(sharpe_per_year=0.5),
        LogDrift(log_return_per_year={"calm": 0.1, "bull": 0.2, "crash": -0.3}),
    ):
        cfg = MarketConfig.model_validate(_with("synthetic.drift", drift.model_dump()))
        assert cfg.synthetic.drift == drift
        assert MarketConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_shipped_configs_load():
    cfg = load_market_config(DEFAULT_YAML)
    assert cfg.source == "synthetic" and cfg.assets == ["BTC", "ETH", "SOL", "LINK", "AVAX"]
    assert cfg.end <= dt.date(2022, 12, 31)
    assert "defialloc calibrate" in DEFAULT_YAML.read_text().split("source:")[0]
    heldout = load_market_config(REPO_ROOT / "configs/market/replay_heldout.yaml")
    assert (heldout.source, heldout.start, heldout.end) == (
        "replay",
        dt.date(2023, 1, 1),
        dt.date(2024, 4, 9),
    )
    boot = load_market_config(REPO_ROOT / "configs/market/bootstrap.yaml")
    assert boot.source == "bootstrap" and boot.end <= dt.date(2022, 12, 31)


def test_data_dir_resolves_against_cwd_then_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("data/crypto-daily") == REPO_ROOT / "data" / "crypto-daily"
    (tmp_path / "data" / "crypto-daily").mkdir(parents=True)
    assert resolve_data_dir("data/crypto-daily") == Path("data/crypto-daily")
    assert (REPO_ROOT / "data" / "crypto-daily" / "BTC-USD.csv").is_file()


@pytest.mark.parametrize(
    "seeds, length, warmup, fragment",
    [
        ([-1, 2], 10, 1, "seeds must be >= 0"),
        ([1.5], 10, 1, "seeds must be integers"),
        ([[1, 2]], 10, 1, "1-D"),
        ([], 10, 1, "non-empty"),
        ([1], 1, 0, "length=1"),
        ([1], 10, 10, r"warmup=10 must be an integer in \[0, length=10\)"),
    ],
)
def test_bad_sample_requests(seeds, length, warmup, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_sample_request(np.array(seeds), length, warmup)
