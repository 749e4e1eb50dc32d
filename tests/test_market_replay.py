"""Replay of real data: exact prices, window choice by seed, the causal regime rule, strict CSV loading."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest

from defialloc.envs.market.config import (
    REPO_ROOT,
    MarketConfig,
    RegimeRuleParams,
    load_market_config,
)
from defialloc.envs.market.replay import available_dates, label_regimes, load_ohlcv, replay_paths
from defialloc.envs.market.sources import sample_paths

DATA = REPO_ROOT / "data" / "crypto-daily"
ASSETS = ["BTC", "ETH", "SOL", "LINK", "AVAX"]
HEADER = "Date,Open,High,Low,Close,Volume\n"


def _csv_column(symbol: str, column: str) -> dict[str, float]:
    """Independent reader: the CSV's values parsed by Python's float()."""
    with open(DATA / f"{symbol}-USD.csv", newline="") as fh:
        return {row["Date"]: float(row[column]) for row in csv.DictReader(fh)}


def test_replay_reproduces_the_files_exactly():
    cfg = MarketConfig(source="replay")
    paths = replay_paths(cfg, np.arange(6), 200, 30)
    paths.validate()
    dates = np.broadcast_to(paths.dates, (6, 200))
    for i, symbol in enumerate(ASSETS):
        for column, arr in (("Close", paths.close), ("High", paths.high), ("Low", paths.low)):
            truth = _csv_column(symbol, column)
            expected = np.array([[truth[str(d)] for d in row] for row in dates])
            np.testing.assert_array_equal(arr[:, :, i], expected, err_msg=f"{symbol} {column}")
    usdc = _csv_column("USDC", "Close")
    np.testing.assert_array_equal(
        paths.numeraire_usd, [[usdc[str(d)] for d in row] for row in dates]
    )
    np.testing.assert_array_equal(paths.eth_usd, paths.close[:, :, 1])
    assert np.all(np.diff(dates.astype("datetime64[D]").astype(np.int64), axis=1) == 1)


def test_seed_picks_the_window_and_exact_fit_uses_offset_zero():
    # development period 2021-01-03..2022-12-31 = 728 days
    assert len(available_dates(DATA, ASSETS, end="2022-12-31")) == 728
    cfg = MarketConfig(source="replay")
    exact = replay_paths(cfg, np.array([0, 7, 99]), 728, 61)
    assert exact.dates.shape == (728,)  # one window for every path
    assert (str(exact.dates[0]), str(exact.dates[-1])) == ("2021-01-03", "2022-12-31")
    paths = replay_paths(cfg, np.arange(40), 400, 61)
    firsts = paths.dates[:, 0]
    assert len(np.unique(firsts)) > 10 and paths.dates.shape == (40, 400)
    assert firsts.min() >= np.datetime64("2021-01-03") and paths.dates[
        :, -1
    ].max() <= np.datetime64("2022-12-31")
    again = replay_paths(cfg, np.arange(40)[5:6], 400, 61)
    np.testing.assert_array_equal(again.close, paths.close[5:6])
    with pytest.raises(ValueError, match="has 728 days; a path needs length=729"):
        replay_paths(cfg, np.array([0]), 729, 61)


def test_heldout_replay_starts_decisions_on_or_after_start():
    cfg = load_market_config(REPO_ROOT / "configs" / "market" / "replay_heldout.yaml")
    paths = sample_paths(cfg, np.arange(20), 427, 61)
    paths.validate()
    dates = np.broadcast_to(paths.dates, (20, 427))
    assert dates[:, 61].min() >= np.datetime64("2023-01-01")
    assert dates[:, 0].min() >= np.datetime64("2022-11-01")  # only warmup history before start
    assert dates[:, -1].max() <= np.datetime64("2024-04-09")
    assert (1 - paths.numeraire_usd).max() > 0.02  # the March-2023 USDC depeg is in the data


def test_regime_rule_hand_computed():
    """Two assets, index return = mean of the two. Rule: crash if 2-day sum <= -0.1 (vol leg disabled),
    bull if 3-day sum >= 0.1."""
    rule = RegimeRuleParams(
        crash_window_days=2,
        crash_return=0.1,
        vol_window_days=5,
        crash_vol_ann=20.0,
        trend_window_days=3,
        bull_return=0.1,
    )
    index_ret = np.array([0.0, 0.04, 0.04, 0.04, -0.06, -0.06, 0.0, 0.0])
    # 2-day sums: [., .04, .08, .08, -.02, -.12, -.06, 0]; 3-day sums: [., .04, .08, .12, .02, -.08, -.12, -.06]
    expected = [0, 0, 0, 1, 0, 2, 0, 0]
    log_close = np.cumsum(np.stack([index_ret + 0.01, index_ret - 0.01], axis=1), axis=0)
    labels = label_regimes(np.exp(log_close), rule)
    np.testing.assert_array_equal(labels, expected)
    for t in range(1, len(expected)):  # causal: truncating the future changes nothing
        np.testing.assert_array_equal(
            label_regimes(np.exp(log_close[: t + 1]), rule), expected[: t + 1]
        )


def test_default_rule_labels_real_history_sensibly():
    frames = load_ohlcv(DATA, ASSETS, end="2022-12-31")
    close = np.stack([frames[a]["Close"].to_numpy() for a in ASSETS], axis=1)
    labels = label_regimes(close, RegimeRuleParams())
    dates = frames["BTC"].index
    share = np.bincount(labels, minlength=3) / len(labels)
    assert 0.15 < share[2] < 0.45 and share[1] > 0.1
    assert labels[dates.get_loc("2022-05-12")] == 2  # LUNA collapse
    assert labels[dates.get_loc("2022-11-10")] == 2  # FTX collapse


# ------------------------------------------------------------------ strict loading
def _write(folder, symbol: str, rows: list[str]) -> None:
    (folder / f"{symbol}-USD.csv").write_text(HEADER + "".join(r + "\n" for r in rows))


GOOD = [
    "2021-01-01,10,11,9,10.5,100",
    "2021-01-02,10.5,12,10,11,100",
    "2021-01-03,11,11.5,10.5,11,100",
]


@pytest.mark.parametrize(
    "rows, fragment",
    [
        (
            ["2021-01-01,10,11,9,10.5,1", "2021-01-01,10.5,12,10,11,1"],
            r"line 3: duplicate date 2021-01-01",
        ),
        (
            ["2021-01-02,10,11,9,10.5,1", "2021-01-01,10.5,12,10,11,1"],
            "line 3: out-of-order date 2021-01-01",
        ),
        (
            ["2021-01-01,10,11,9,10.5,1", "2021-01-04,10.5,12,10,11,1"],
            r"line 3: gap in dates, 2021-01-01 is followed by 2021-01-04 \(2 missing",
        ),
        (
            ["2021-01-01,10,11,9,10.5,1", "2021-01-02,10.5,12,10,,1"],
            r"line 3 \(2021-01-02\): column Close = ''",
        ),
        (
            ["2021-01-01,10,11,9,10.5,1", "2021-01-02,10.5,12,0,11,1"],
            r"line 3 \(2021-01-02\): column Low = '0'",
        ),
        (["2021-01-01,10,11,9,NaN,1"], "column Close = 'NaN'"),
        (["2021-01-01,10,11,-9,10.5,1"], "column Low = '-9'; prices must be finite numbers > 0"),
        (["2021-01-01,ten,11,9,10.5,1"], "column Open = 'ten'"),
        (
            ["2021-01-01,10,10.2,9,10.5,1"],
            r"line 2 \(2021-01-01\): column High = 10.2; must satisfy High >= max\(Open, Close\)",
        ),
        (
            ["2021-01-01,10,11,10.2,10.5,1"],
            r"column Low = 10.2; must satisfy Low <= min\(Open, Close\)",
        ),
        (
            ["01/02/2021,10,11,9,10.5,1"],
            "line 2: column Date = '01/02/2021' is not a YYYY-MM-DD date",
        ),
        ([], "no data rows"),
    ],
)
def test_bad_csv_rows_are_refused_naming_file_line_and_column(tmp_path, rows, fragment):
    _write(tmp_path, "BAD", rows)
    with pytest.raises(ValueError, match=fragment) as info:
        load_ohlcv(tmp_path, ["BAD"])
    assert "BAD-USD.csv" in str(info.value)


def test_missing_folder_file_and_columns(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_ohlcv(tmp_path / "nowhere", ["BTC"])
    _write(tmp_path, "AAA", GOOD)
    with pytest.raises(ValueError, match=r"no data file for asset 'ZZZ'.*available: \['AAA'\]"):
        load_ohlcv(tmp_path, ["AAA", "ZZZ"])
    (tmp_path / "COLS-USD.csv").write_text("Date,Open,High,Close\n2021-01-01,1,2,1.5\n")
    with pytest.raises(ValueError, match=r"COLS-USD.csv: missing column\(s\) \['Low'\]"):
        load_ohlcv(tmp_path, ["COLS"])


def test_alignment_on_common_dates_and_window(tmp_path):
    _write(tmp_path, "AAA", GOOD)
    _write(tmp_path, "BBB", GOOD[1:] + ["2021-01-04,11,12,10,11.5,1"])
    frames = load_ohlcv(tmp_path, ["AAA", "BBB"])
    assert [str(d.date()) for d in frames["AAA"].index] == ["2021-01-02", "2021-01-03"]
    assert (
        frames["BBB"].index.equals(frames["AAA"].index) and frames["BBB"]["Close"].iloc[-1] == 11.0
    )
    assert (
        len(load_ohlcv(tmp_path, ["AAA"], start="2021-01-02", end=dt.date(2021, 1, 2))["AAA"]) == 1
    )
    with pytest.raises(ValueError, match="no common dates"):
        load_ohlcv(tmp_path, ["AAA"], start="2022-01-01")
    with pytest.raises(ValueError, match="start=2021-01-03 must be <= end=2021-01-02"):
        load_ohlcv(tmp_path, ["AAA"], start="2021-01-03", end="2021-01-02")


def test_replay_without_numeraire_file_uses_one_and_needs_eth(tmp_path):
    rows = [f"2021-01-{d:02d},10,11,9,10.5,1" for d in range(1, 21)]
    _write(tmp_path, "AAA", rows)
    cfg = MarketConfig(source="replay", assets=["AAA"], data_dir=str(tmp_path), end=None)
    with pytest.raises(ValueError, match="ETH prices are needed"):
        replay_paths(cfg, np.array([0]), 10, 2)
    _write(tmp_path, "ETH", rows)
    paths = replay_paths(cfg, np.array([0, 1]), 10, 2)
    np.testing.assert_array_equal(paths.numeraire_usd, 1.0)
    np.testing.assert_array_equal(paths.eth_usd, 10.5)
