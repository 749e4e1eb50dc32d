"""Scoring one env's step, compiled (the tail of ``PortfolioSimulator.advance`` and
:class:`defialloc.envs.rewards.RewardModel`).

After the move: the kill-switch's re-entry resets the peak (with ``reset_peak_after_cooldown``),
the peak rises to the new value, the reward is computed from the values before and after (both
floored at the ruin level; ``log_growth``, ``differential_sharpe`` or ``drawdown_penalized``, minus
the optional cost term, times ``scale``), and the episode ends on ruin or at the horizon.
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.layout import (
    B_KILL,
    B_TERMINATED,
    B_TRUNCATED,
    E_FEES,
    E_GAS,
    E_KILL,
    E_SLIPPAGE,
    E_TURNOVER,
    E_VALUE_BEFORE,
    I_REMAINING,
    I_T,
    R_FEES,
    R_GAS,
    R_REWARD,
    R_SLIPPAGE,
    R_TURNOVER,
    R_VALUE,
    S_EMA_MEAN,
    S_EMA_SQ,
    S_PEAK,
    S_VALUE,
)
from defialloc.envs.compiled.params import (
    F_COST_WEIGHT,
    F_DD_PENALTY,
    F_DSR_ETA,
    F_FLOOR,
    F_REWARD_SCALE,
    IP_HORIZON,
    IP_KS_RESET_PEAK,
    IP_REWARD_KIND,
)

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def score(b, fstate, istate, rec, res_f, res_b, fp, ip):
    """Peak, reward and end flags of env ``b`` once ``res_f[R_VALUE, b]`` holds its new value
    (``istate`` already at ``t + 1``); copies the execution's costs and turnover into ``res_f``."""
    before = rec[b, E_VALUE_BEFORE]
    after = res_f[R_VALUE, b]
    peak = fstate[b, S_PEAK]
    dd_before = 1.0 - before / peak
    kill = rec[b, E_KILL] != 0.0
    if ip[IP_KS_RESET_PEAK] and kill and istate[b, I_REMAINING] == 1:
        peak = after  # re-entry is the next decision: its drawdown starts from this value
    if not peak >= after:
        peak = after
    dd_after = 1.0 - after / peak
    floor = fp[F_FLOOR]
    ratio = max(after, floor) / max(before, floor)
    kind = ip[IP_REWARD_KIND]
    if kind == 0:
        reward = math.log(ratio)
    elif kind == 2:
        reward = math.log(ratio) - fp[F_DD_PENALTY] * max(dd_after - dd_before, 0.0)
    else:  # differential Sharpe (Moody & Saffell) of the simple return
        r = ratio - 1.0
        a = fstate[b, S_EMA_MEAN]
        m2 = fstate[b, S_EMA_SQ]
        d_a = r - a
        d_b = r * r - m2
        variance = m2 - a * a
        reward = 0.0
        if variance > 1e-12:
            reward = (m2 * d_a - 0.5 * a * d_b) / variance**1.5
        eta = fp[F_DSR_ETA]
        fstate[b, S_EMA_MEAN] = a + eta * d_a
        fstate[b, S_EMA_SQ] = m2 + eta * d_b
    fees = rec[b, E_FEES]
    slippage = rec[b, E_SLIPPAGE]
    gas = rec[b, E_GAS]
    if fp[F_COST_WEIGHT] > 0.0:
        reward = reward - fp[F_COST_WEIGHT] * (max(fees + slippage + gas, 0.0) / max(before, floor))
    res_f[R_REWARD, b] = fp[F_REWARD_SCALE] * reward
    res_f[R_FEES, b] = fees
    res_f[R_SLIPPAGE, b] = slippage
    res_f[R_GAS, b] = gas
    res_f[R_TURNOVER, b] = rec[b, E_TURNOVER]
    fstate[b, S_PEAK] = peak
    fstate[b, S_VALUE] = after
    terminated = after <= floor
    res_b[B_TERMINATED, b] = terminated
    res_b[B_TRUNCATED, b] = istate[b, I_T] >= ip[IP_HORIZON] and not terminated
    res_b[B_KILL, b] = kill
