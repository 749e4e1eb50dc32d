"""The decision of one env, compiled: its portfolio state, the kill-switch and the action's targets.

Scalar translations of :meth:`defialloc.envs.simulator.PortfolioSimulator.portfolio_state`,
:meth:`defialloc.envs.kill_switch.KillSwitch.update` and :meth:`defialloc.envs.action_kinds.ActionMap.targets` (kinds
``target``, ``anchored``, ``delta``; the leverage and hedge blocks), in the same operation order.

Outputs go to the env's scratch row ``w``: current weights ``V_WCUR`` ``(N + 1,)``, target weights
``V_WTGT`` ``(N + 1,)``, hedge ratios ``V_HEDGE`` ``(N,)``; the leverage target is returned.
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.layout import (
    I_OVERRIDE,
    I_REMAINING,
    I_T,
    S_CASH,
    S_DEBT,
    S_HF,
    S_PEAK,
)
from defialloc.envs.compiled.params import (
    F_HEDGE_DEVIATION,
    F_KS_MAX_DD,
    F_KS_MIN_HF,
    F_LEV_DEVIATION,
    F_MAX_DEVIATION,
    F_MAX_HEDGE_CHANGE,
    F_MAX_LEV_CHANGE,
    F_MAX_LEVERAGE,
    F_MAX_TURNOVER,
    IP_ANCHOR,
    IP_KIND,
    IP_KS_COOLDOWN,
    IP_KS_ENABLED,
    IP_LENDING,
    IP_PERP,
    IP_PERPS,
    IP_UNITS,
    IP_VOL_WINDOW,
    IP_WARMUP,
)
from defialloc.envs.compiled.scratch import V_HEDGE, V_PRICE, V_VOL, V_WCUR, V_WTGT, vec

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
ZERO_MASS = 1e-12  # defialloc.envs.actions.ZERO_MASS


@njit(**JIT)
def clip1(x):
    """``max(min(x, 1), -1)`` (NaN-free inputs: actions are checked finite)."""
    if x > 1.0:
        return 1.0
    if x < -1.0:
        return -1.0
    return x


@njit(**JIT)
def current_weights(b, n, value, num, fstate, w, ip):
    """Weights now ``(N + 1,)`` into ``w[V_WCUR]`` at the prices in ``w[V_PRICE]``; an empty
    account (``value <= 0``) reads as all cash (``PortfolioSimulator.weights``)."""
    units = ip[IP_UNITS]
    cur = vec(V_WCUR, n)
    price = vec(V_PRICE, n)
    empty = not value > 0.0
    denom = math.inf if empty else value
    for i in range(n):
        w[cur + i] = (fstate[b, units + i] * w[price + i]) / denom
    w[cur + n] = 1.0 if empty else (fstate[b, S_CASH] * num) / denom


@njit(**JIT)
def kill_switch(b, value, lending, fstate, istate, fp, ip):
    """One decision of env ``b``'s kill-switch (``KillSwitch.update``); returns the override flag
    (the kill-switch's or the caller's, ``istate[b, I_OVERRIDE]``)."""
    active = False
    if ip[IP_KS_ENABLED]:
        trigger = 1.0 - value / fstate[b, S_PEAK] > fp[F_KS_MAX_DD]
        if lending and fstate[b, S_HF] < fp[F_KS_MIN_HF]:
            trigger = True
        remaining = istate[b, I_REMAINING]
        was_active = remaining > 0
        if was_active:
            remaining -= 1
        if trigger and not was_active:
            remaining = ip[IP_KS_COOLDOWN] + 1
        istate[b, I_REMAINING] = remaining
        active = remaining > 0
    return active or istate[b, I_OVERRIDE] != 0


@njit(**JIT)
def trailing_vol(b, n, mtab, istate, w, ip):
    """Std of the trailing log returns over ``min(vol_window, warmup)`` steps ``(N,)`` into
    ``w[V_VOL]`` (the inverse-vol anchor's input, ``portfolio_state``)."""
    window = ip[IP_VOL_WINDOW]
    tau = ip[IP_WARMUP] + istate[b, I_T]
    out = vec(V_VOL, n)
    for i in range(n):
        mean = 0.0
        for j in range(window):
            mean += math.log(mtab[b, tau - window + j + 1, i]) - math.log(
                mtab[b, tau - window + j, i]
            )
        mean = mean / window
        sq = 0.0
        for j in range(window):
            r = math.log(mtab[b, tau - window + j + 1, i]) - math.log(mtab[b, tau - window + j, i])
            x = r - mean
            sq += x * x
        w[out + i] = math.sqrt(sq / window)


@njit(**JIT)
def _on_simplex(n, w, tgt):
    """Clip the target weights at 0 and renormalize; all-zero rows become cash (``_on_simplex``)."""
    total = 0.0
    for i in range(n + 1):
        if not w[tgt + i] > 0.0:
            w[tgt + i] = 0.0
        total += w[tgt + i]
    if total > 0.0:
        for i in range(n + 1):
            w[tgt + i] = w[tgt + i] / total
    else:
        for i in range(n):
            w[tgt + i] = 0.0
        w[tgt + n] = 1.0


@njit(**JIT)
def _centered_mean(n, actions, b):
    total = 0.0
    for i in range(n + 1):
        total += clip1(actions[b, i])
    return total / (n + 1)


@njit(**JIT)
def targets(b, n, value, num, actions, spot_only, forced, fstate, mtab, istate, w, fp, ip):
    """Target weights (``w[V_WTGT]``) and hedge ratios (``w[V_HEDGE]``) of env ``b``'s action;
    returns the leverage target (debt / equity before the LTV clip). ``forced``: the safe target
    (all numeraire, no debt, no hedge) whatever the action (``ActionMap.safe_targets``)."""
    tgt = vec(V_WTGT, n)
    hedge = vec(V_HEDGE, n)
    lending = ip[IP_LENDING] != 0 and not spot_only
    perps = ip[IP_PERPS] != 0 and not spot_only
    if forced:
        for i in range(n):
            w[tgt + i] = 0.0
            w[hedge + i] = 0.0
        w[tgt + n] = 1.0
        return 0.0
    kind = ip[IP_KIND]
    cur = vec(V_WCUR, n)
    if (
        kind == 0
    ):  # target: clipped linear normalization (defialloc.envs.actions.actions_to_weights)
        mass = 0.0
        for i in range(n + 1):
            x = (clip1(actions[b, i]) + 1.0) * 0.5
            w[tgt + i] = x
            mass += x
        if mass <= ZERO_MASS:
            for i in range(n):
                w[tgt + i] = 0.0
            w[tgt + n] = 1.0
        else:
            for i in range(n + 1):
                w[tgt + i] = w[tgt + i] / mass
    elif kind == 1:  # anchored
        mean = _centered_mean(n, actions, b)
        dev = fp[F_MAX_DEVIATION]
        anchor = ip[IP_ANCHOR]
        if anchor == 1:
            trailing_vol(b, n, mtab, istate, w, ip)
            vol = vec(V_VOL, n)
            inv_total = 0.0
            for i in range(n):
                v = w[vol + i]
                inv_total += 1.0 / (v if v > 1e-12 else 1e-12)
        for i in range(n + 1):
            if anchor == 0:
                base = 1.0 / n if i < n else 0.0
            elif anchor == 2:
                base = 1.0 if i == n else 0.0
            else:
                if i < n:
                    v = w[vec(V_VOL, n) + i]
                    base = (1.0 / (v if v > 1e-12 else 1e-12)) / inv_total
                else:
                    base = 0.0
            w[tgt + i] = base + dev * (clip1(actions[b, i]) - mean)
        _on_simplex(n, w, tgt)
    else:  # delta
        mean = _centered_mean(n, actions, b)
        size = 0.0
        for i in range(n + 1):
            size += abs(clip1(actions[b, i]) - mean)
        size = 0.5 * size
        if not size > 1.0:
            size = 1.0
        turnover = fp[F_MAX_TURNOVER]
        for i in range(n + 1):
            w[tgt + i] = w[cur + i] + turnover * (clip1(actions[b, i]) - mean) / size
        _on_simplex(n, w, tgt)
    lev = 0.0
    if lending:
        a = clip1(actions[b, n + 1])
        if kind == 0:
            wanted = (a + 1.0) * 0.5 * fp[F_MAX_LEVERAGE]
        elif kind == 1:
            wanted = fp[F_LEV_DEVIATION] * a
        else:
            equity = value if value > 0.0 else math.inf
            wanted = (fstate[b, S_DEBT] * num) / equity + fp[F_MAX_LEV_CHANGE] * a
        if not wanted > 0.0:
            wanted = 0.0
        lev = min(wanted, fp[F_MAX_LEVERAGE])
    start = n + 1 + (1 if ip[IP_LENDING] != 0 else 0)
    units = ip[IP_UNITS]
    perp = ip[IP_PERP]
    for i in range(n):
        h = 0.0
        if perps:
            a = clip1(actions[b, start + i])
            if kind == 0:
                h = a
            elif kind == 1:
                h = fp[F_HEDGE_DEVIATION] * a
            else:
                held = fstate[b, units + i]
                now = -fstate[b, perp + i] / held if held > 0.0 else 0.0
                h = clip1(now + fp[F_MAX_HEDGE_CHANGE] * a)
        w[hedge + i] = h
    return lev
