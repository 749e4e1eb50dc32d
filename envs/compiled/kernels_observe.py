"""One env's observation, compiled (``PortfolioSimulator.observe``): the market feature row of the
decision time (computed per path at reset), the current weights, the drawdown and the protocol
block (``LeverageEngine.observation``: ``log min(HF, 10)``, debt / equity, borrow rate x 10; perp
notional / equity and annualized funding x 10 per asset; the options' part,
:func:`defialloc.envs.compiled.kernels_options.observe_options`; clipped to ``[-clip, clip]``) and
the greeks block (``envs/greeks.py``: the portfolio's Greeks per asset scaled by the equity), float32.
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.kernels_option_quotes import portfolio_greeks
from defialloc.envs.compiled.kernels_options import observe_options
from defialloc.envs.compiled.layout import (
    I_T,
    M_NUM,
    P_BORROW,
    S_CASH,
    S_DEBT,
    S_HF,
    S_PEAK,
    S_VALUE,
)
from defialloc.envs.compiled.params import (
    F_CLIP,
    F_HF_CAP,
    F_PER_YEAR,
    F_RATE_SCALE,
    IP_LENDING,
    IP_M_FUNDING,
    IP_M_PROT,
    IP_M_SCAL,
    IP_N_RUNS,
    IP_OBS_DRAWDOWN,
    IP_OBS_GREEKS,
    IP_OBS_PROTOCOL,
    IP_OBS_WEIGHTS,
    IP_OPTIONS,
    IP_PERP,
    IP_PERPS,
    IP_RUNS,
    IP_UNITS,
    IP_WARMUP,
)

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def _clipped(x, clip):
    if x > clip:
        return clip
    if x < -clip:
        return -clip
    return x


@njit(**JIT)
def observe_env(b, n, fstate, istate, mtab, features, fp, ip, obs):
    """Write env ``b``'s observation row ``obs[b]`` (see the module docstring)."""
    tau = ip[IP_WARMUP] + istate[b, I_T]
    runs = ip[IP_RUNS]
    for r in range(ip[IP_N_RUNS]):
        start = ip[runs + 3 * r]
        first = ip[runs + 3 * r + 1]
        size = ip[runs + 3 * r + 2]
        for j in range(size):
            obs[b, start + j] = features[b, tau, first + j]
    value = fstate[b, S_VALUE]
    num = mtab[b, tau, ip[IP_M_SCAL] + M_NUM]
    units = ip[IP_UNITS]
    at = ip[IP_OBS_WEIGHTS]
    if at >= 0:
        empty = not value > 0.0
        denom = math.inf if empty else value
        for i in range(n):
            obs[b, at + i] = (fstate[b, units + i] * mtab[b, tau, i]) / denom
        obs[b, at + n] = 1.0 if empty else (fstate[b, S_CASH] * num) / denom
    at = ip[IP_OBS_DRAWDOWN]
    if at >= 0:
        obs[b, at] = 1.0 - value / fstate[b, S_PEAK]
    at = ip[IP_OBS_PROTOCOL]
    if at >= 0:
        clip = fp[F_CLIP]
        equity = value if value > 0.0 else math.inf
        if ip[IP_LENDING]:
            hf = min(fstate[b, S_HF], fp[F_HF_CAP])
            obs[b, at] = _clipped(math.log(max(hf, 1e-6)), clip)
            obs[b, at + 1] = _clipped((fstate[b, S_DEBT] * num) / equity, clip)
            obs[b, at + 2] = _clipped(
                mtab[b, tau, ip[IP_M_PROT] + P_BORROW] * fp[F_RATE_SCALE], clip
            )
            at += 3
        if ip[IP_PERPS]:
            perp = ip[IP_PERP]
            funding = ip[IP_M_FUNDING]
            for i in range(n):
                exposure = (fstate[b, perp + i] * mtab[b, tau, i]) / equity
                obs[b, at + i] = _clipped(exposure, clip)
                rate = (mtab[b, tau, funding + i] * fp[F_PER_YEAR]) * fp[F_RATE_SCALE]
                obs[b, at + n + i] = _clipped(rate, clip)
            at += 2 * n
        if ip[IP_OPTIONS]:
            observe_options(b, n, tau, fstate, istate, mtab, fp, ip, obs, at, clip)
    at = ip[IP_OBS_GREEKS]
    if at >= 0:
        _observe_greeks(b, n, tau, value, fstate, mtab, fp, ip, obs, at)


@njit(**JIT)
def _observe_greeks(b, n, tau, value, fstate, mtab, fp, ip, obs, at):
    """The greeks block ``(4N,)`` (:func:`defialloc.envs.greeks.greeks_block` of
    :func:`defialloc.envs.greeks.portfolio_greeks`): delta over spot, perps at the mark and options,
    the options' gamma, vega and theta, scaled by the equity; clipped."""
    clip = fp[F_CLIP]
    inv = 1.0 / value if value > 0.0 else 0.0
    for i in range(n):
        price = mtab[b, tau, i]
        delta, gamma, vega, theta = portfolio_greeks(b, n, i, tau, fstate, mtab, ip)
        obs[b, at + i] = _clipped(delta * price * inv, clip)
        obs[b, at + n + i] = _clipped(gamma * price * price * inv, clip)
        obs[b, at + 2 * n + i] = _clipped(100.0 * vega * inv, clip)
        obs[b, at + 3 * n + i] = _clipped(1e4 * theta * inv, clip)
