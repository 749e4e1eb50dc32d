"""A replayed 40 % ETH drop (hand-made OHLCV files) liquidates a 3x position at the right step.

The agent keeps 3x gross exposure (all ETH, debt / equity = 2, re-levered every step). After a
re-lever the health factor is ~0.83 x 3 / 2 = 1.245, so a step is liquidated exactly when its intra-
step LOW is more than ~19.7 % under the previous close. The path's daily lows are -10 %, -15 %, then
-22 % (the crossing), with closes falling 40 % in all. Interest rates are zeroed so every number of
the liquidation is a closed-form Aave computation.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from defialloc.envs import make_env
from tests.test_leverage_env import deterministic_lending

WARMUP, HORIZON = 6, 6
LT_ETH, BONUS_ETH = 0.83, 0.05
# (close ratio, low ratio) of each step, relative to the previous close
MOVES = [
    (0.92, 0.90),
    (0.92, 0.85),
    (0.94, 0.78),
    (0.90, 0.89),
    (0.90, 0.895),
    (1200.0 / 1289.28, 0.93),
]


def _write_ohlcv(folder: Path, symbol: str, close: np.ndarray, low: np.ndarray) -> None:
    start = dt.date(2022, 5, 1)
    lines = ["Date,Open,High,Low,Close,Volume"]
    prev = close[0]
    for i, (c, lo) in enumerate(zip(close, low, strict=True)):
        day = start + dt.timedelta(days=i)
        high = max(prev, c) * 1.001
        lines.append(f"{day.isoformat()},{prev:.6f},{high:.6f},{min(lo, prev, c):.6f},{c:.6f},1000")
        prev = c
    (folder / f"{symbol}-USD.csv").write_text("\n".join(lines) + "\n")


def _market(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    eth_close = [2000.0] * (WARMUP + 1)
    eth_low = [1990.0] * (WARMUP + 1)
    for close_ratio, low_ratio in MOVES:
        eth_low.append(round(eth_close[-1] * low_ratio, 2))
        eth_close.append(round(eth_close[-1] * close_ratio, 2))
    eth_close, eth_low = np.array(eth_close), np.array(eth_low)
    n = len(eth_close)
    _write_ohlcv(folder, "ETH", eth_close, eth_low)
    _write_ohlcv(folder, "BTC", np.full(n, 30_000.0), np.full(n, 29_900.0))
    _write_ohlcv(folder, "USDC", np.ones(n), np.ones(n))
    return eth_close, eth_low


def test_replayed_crash_liquidates_the_3x_position_at_the_first_low_below_hf_1(tmp_path):
    eth_close, eth_low = _market(tmp_path)
    assert eth_close[-1] / eth_close[WARMUP] == pytest.approx(0.60, abs=1e-3)  # the 40 % drop
    config = {"market": {"source": "replay", "assets": ["ETH", "BTC"], "numeraire": "USDC",
                         "data_dir": str(tmp_path), "start": "2022-05-07", "end": "2022-05-19"},
              "env": "configs/env/leverage.yaml"}  # fmt: skip
    env = make_env(
        config,
        **{
            "env.warmup": WARMUP,
            "env.horizon": HORIZON,
            "env.observation.return_window": 2,
            "env.observation.vol_window": 2,
            "env.observation.corr_window": 5,
            "env.kill_switch.enabled": False,
            "env.cascades.enabled": False,
            "env.lending.params_path": deterministic_lending(tmp_path, zero_rates=True),
        },
    )
    _, info = env.reset(seed=0)
    assert info["date"] == "2022-05-07" and info["prices"][0] == 2000.0
    three_x = np.array([1.0, -1.0, -1.0, 1.0, 0.0, 0.0], dtype=np.float32)  # all ETH, l = max = 2
    liquidated_at = []
    for step, low in enumerate(eth_low[WARMUP + 1 :]):
        _, _, terminated, truncated, info = env.step(three_x)
        units, debt = info["holdings_during_move"][0], info["debt_units_during_move"]
        hf_at_low = units * low * LT_ETH / debt  # USDC file at $1, zero interest
        if info["liquidations"]:
            liquidated_at.append(step)
            assert hf_at_low < 1.0
            # Aave: close factor 50 % for 0.95 < HF < 1, seize repay x 1.05 of ETH at the low
            assert 0.95 < hf_at_low
            repaid = 0.5 * debt
            seized = repaid * (1.0 + BONUS_ETH) / low
            assert info["debt_units"] == pytest.approx(debt - repaid, rel=1e-12)
            assert info["holdings"][0] == pytest.approx(units - seized, rel=1e-12)
            close = info["prices"][0]
            assert info["liquidation_penalty_usd"] == pytest.approx(
                seized * close - repaid, rel=1e-9
            )
            assert info["costs"]["liquidation"] == pytest.approx(
                info["liquidation_penalty_usd"], rel=1e-12
            )
            assert info["health_factor"] > 1.0
        else:
            assert hf_at_low > 1.0, f"step {step}: HF at the low {hf_at_low} but no liquidation"
        assert not terminated
    assert truncated
    assert liquidated_at == [2]  # the -22 % wick, not the -10 % or -15 % ones before it
