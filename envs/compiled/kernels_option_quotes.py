"""The options venue's prices and sensitivities, compiled: quotes, per-unit Greeks, portfolio Greeks.

Scalar translations of :meth:`defialloc.envs.option_quotes.VenueSurface.quote` (the forecast table,
the smile, Black-76 at the mid, ask and bid vols, the tick), ``OptionBook._unit_greeks`` and
:mod:`defialloc.envs.greeks` (the portfolio's Greeks per asset and their totals), in the same
operation order as the numpy reference. The book's layout is in
:mod:`defialloc.envs.compiled.kernels_options`.
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.params import (
    F_OPT_CAP,
    F_OPT_FLOOR,
    F_OPT_RATE,
    F_OPT_STEPS_PER_YEAR,
    F_OPT_TICK,
    IP_M_BASIS,
    IP_M_OPT_H,
    IP_M_REGIME,
    IP_OPT_EXPIRY,
    IP_OPT_MAX_STEPS,
    IP_OPT_STATE,
    IP_OPT_TABLE,
    IP_OPT_VEC,
    IP_OPTIONS,
    IP_PERP,
    IP_PERPS,
    IP_PROTOCOLS,
    IP_UNITS,
    N_REGIMES,
    O_HALF,
    O_PREMIUM,
    O_SKEW,
    O_SMILE,
)
from defialloc.envs.compiled.scratch import (
    V_O_ASK,
    V_O_BID,
    V_O_EXPIRY,
    V_O_FWD,
    V_O_MID,
    V_O_QUOTED,
    V_O_STRIKE,
    V_O_TY,
    V_O_VOL,
    ov,
)
from defialloc.envs.option_quotes import DAYS_PER_YEAR

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ------------------------------------------------------------------------------------ pricing
@njit(**JIT)
def ndtr(a):
    """Standard normal CDF (cephes' ``ndtr``, scipy.special.ndtr's algorithm)."""
    x = a * _SQRT1_2
    z = abs(x)
    if z < _SQRT1_2:
        return 0.5 + 0.5 * math.erf(x)
    y = 0.5 * math.erfc(z)
    return 1.0 - y if x > 0.0 else y


@njit(**JIT)
def black76(f, k, t, v, r, sign):
    """Black-76 price (``black76_price_unchecked``); ``sign`` +1 call, -1 put."""
    std = v * math.sqrt(t)
    live = std > 0.0
    safe = std if live else 1.0
    df = math.exp(-r * t)
    if not live:
        return df * max(sign * (f - k), 0.0)
    d1 = math.log(f / k) / safe + 0.5 * safe
    d2 = d1 - safe
    return df * (sign * (f * ndtr(sign * d1) - k * ndtr(sign * d2)))


@njit(**JIT)
def forecast_vol(fp, ip, n, regime, i, h, s):
    """Annual forecast vol of asset ``i`` over ``s`` steps (``VarianceForecast.annual_vol``)."""
    at = ip[IP_OPT_TABLE]
    rows = ip[IP_OPT_MAX_STEPS] + 1
    cell = (regime * rows + s) * n + i
    level = fp[at + n + cell]
    decay = fp[at + n + N_REGIMES * rows * n + cell]
    total = level + (h - fp[at + i]) * decay
    return math.sqrt(max(total, 0.0) / s * fp[F_OPT_STEPS_PER_YEAR])


@njit(**JIT)
def quote(fp, ip, n, regime, h, i, index, strike, steps, sign):
    """Quote a contract on asset ``i`` (``sign`` +1 call, -1 put) with ``steps`` to expiry, the index
    at ``index`` USD and the next step's variance ``h``: returns ``(mid, ask, bid, vol, years,
    forward)`` (``VenueSurface.quote``)."""
    s = min(max(steps, 1), ip[IP_OPT_MAX_STEPS])
    opt = ip[IP_OPT_VEC]
    atm = forecast_vol(fp, ip, n, regime, i, h, s) * fp[opt + O_PREMIUM + regime]
    t_years = steps / fp[F_OPT_STEPS_PER_YEAR]
    rate = fp[F_OPT_RATE]
    forward = index * math.exp(rate * t_years)
    std = atm * math.sqrt(t_years)
    x = math.log(strike / forward) / std if std > 0.0 else 0.0
    shape = 1.0 + fp[opt + O_SKEW + regime] * x + fp[opt + O_SMILE + regime] * x * x
    vol = atm * min(max(shape, fp[F_OPT_FLOOR]), fp[F_OPT_CAP])
    half = fp[opt + O_HALF + regime]
    tick = fp[F_OPT_TICK] * index
    return (
        black76(forward, strike, t_years, vol, rate, sign),
        black76(forward, strike, t_years, vol + half, rate, sign) + tick,
        max(black76(forward, strike, t_years, max(vol - half, 0.0), rate, sign) - tick, 0.0),
        vol,
        t_years,
        forward,
    )


@njit(**JIT)
def _unit_greeks(fstate, b, g, f, k, t, v, r, sign, live):
    """Per-unit delta, gamma (to the index), vega per vol point, theta per day into
    ``fstate[b, g:g + 4]`` (``OptionBook._unit_greeks``); zeros where not ``live``."""
    if not live:
        for j in range(4):
            fstate[b, g + j] = 0.0
        return
    std = v * math.sqrt(t)
    ok = std > 0.0
    safe = std if ok else 1.0
    df = math.exp(-r * t)
    d1 = math.log(f / k) / safe + 0.5 * safe
    d2 = d1 - safe
    density = _INV_SQRT_2PI * math.exp(-0.5 * d1 * d1)
    if ok:
        delta = sign * df * ndtr(sign * d1)
        gamma = df * density / (f * safe)
        sqrt_t = math.sqrt(t)
        vega = df * f * density * sqrt_t
        value = df * (sign * (f * ndtr(sign * d1) - k * ndtr(sign * d2)))
        theta = r * value - df * f * density * (safe / sqrt_t) / (2.0 * sqrt_t)
    else:
        delta = sign * df if sign * (f - k) > 0.0 else 0.0
        gamma = 0.0
        vega = 0.0
        theta = 0.0
    carry = math.exp(r * t)
    fstate[b, g] = delta * carry
    fstate[b, g + 1] = gamma * carry * carry
    fstate[b, g + 2] = 0.01 * vega
    fstate[b, g + 3] = theta / DAYS_PER_YEAR


@njit(**JIT)
def regime_at(mtab, b, tau, ip):
    return int(mtab[b, tau, ip[IP_M_REGIME]])


@njit(**JIT)
def quote_book(b, n, tau, index_at, fstate, istate, mtab, w, fp, ip, from_w):
    """Quote the contracts of env ``b`` flagged in ``w[V_O_QUOTED]`` at time index ``tau`` with the
    index at ``w[index_at]``: the strikes and expiries of ``w[V_O_STRIKE/EXPIRY]`` (``from_w``) or
    of the book. Other slots read zeros (they trade nothing, so the reference's quotes of them are
    multiplied by zero, and a held contract keeps the mark and Greeks of the same quote, made when
    the market last moved: :func:`_store_book`)."""
    st = ip[IP_OPT_STATE]
    ex = ip[IP_OPT_EXPIRY]
    regime = regime_at(mtab, b, tau, ip)
    for i in range(n):
        h = mtab[b, tau, ip[IP_M_OPT_H] + i]
        index = w[index_at + i]
        for slot in range(2):
            mid = ask = bid = vol = ty = fwd = 0.0
            if w[ov(V_O_QUOTED, n, slot) + i] != 0.0:
                if from_w:
                    strike = w[ov(V_O_STRIKE, n, slot) + i]
                    expiry = int(w[ov(V_O_EXPIRY, n, slot) + i])
                else:
                    strike = fstate[b, st + 2 * n + 2 * i + slot]
                    expiry = istate[b, ex + 2 * i + slot]
                steps = max(expiry - tau, 1)
                sign = 1.0 if slot == 0 else -1.0
                mid, ask, bid, vol, ty, fwd = quote(
                    fp, ip, n, regime, h, i, index, strike, steps, sign
                )
            w[ov(V_O_MID, n, slot) + i] = mid
            w[ov(V_O_ASK, n, slot) + i] = ask
            w[ov(V_O_BID, n, slot) + i] = bid
            w[ov(V_O_VOL, n, slot) + i] = vol
            w[ov(V_O_TY, n, slot) + i] = ty
            w[ov(V_O_FWD, n, slot) + i] = fwd


@njit(**JIT)
def store_book(b, n, fstate, istate, w, fp, ip, strike_from_w, expiry_from_w):
    """Empty slots get strike 1, expiry 0, no mark and no Greeks; quoted live slots the mark and
    Greeks of their quote in ``w``; a live slot not quoted (held through a decision that did not
    trade it) keeps its mark and Greeks (those of the same contract at the same time index)."""
    st = ip[IP_OPT_STATE]
    ex = ip[IP_OPT_EXPIRY]
    rate = fp[F_OPT_RATE]
    for i in range(n):
        for slot in range(2):
            c = 2 * i + slot
            live = fstate[b, st + c] != 0.0
            strike = fstate[b, st + 2 * n + c]
            if strike_from_w:
                strike = w[ov(V_O_STRIKE, n, slot) + i]
            expiry = istate[b, ex + c]
            if expiry_from_w:
                expiry = int(w[ov(V_O_EXPIRY, n, slot) + i])
            fstate[b, st + 2 * n + c] = strike if live else 1.0
            istate[b, ex + c] = expiry if live else 0
            if live and w[ov(V_O_QUOTED, n, slot) + i] == 0.0:
                continue
            fstate[b, st + 4 * n + c] = w[ov(V_O_MID, n, slot) + i] if live else 0.0
            _unit_greeks(
                fstate, b, st + 6 * n + 4 * c, w[ov(V_O_FWD, n, slot) + i], strike,
                w[ov(V_O_TY, n, slot) + i], w[ov(V_O_VOL, n, slot) + i], rate,
                1.0 if slot == 0 else -1.0, live,
            )  # fmt: skip


# ------------------------------------------------------------------------------------ Greeks
@njit(**JIT)
def portfolio_greeks(b, n, i, tau, fstate, mtab, ip):
    """Env ``b``'s delta, gamma, vega per vol point and theta per day of asset ``i`` at time index
    ``tau`` (:func:`defialloc.envs.greeks.portfolio_greeks`): spot units, perps at the mark
    (``1 + basis``), and the option slots' units x their per-unit Greeks."""
    delta = fstate[b, ip[IP_UNITS] + i]
    if ip[IP_PROTOCOLS] and ip[IP_PERPS]:
        delta = delta + fstate[b, ip[IP_PERP] + i] * (1.0 + mtab[b, tau, ip[IP_M_BASIS] + i])
    if not ip[IP_OPTIONS]:
        return delta, 0.0, 0.0, 0.0
    st = ip[IP_OPT_STATE]
    g0 = st + 6 * n + 8 * i  # the call's Greeks, then the put's
    u0 = fstate[b, st + 2 * i]
    u1 = fstate[b, st + 2 * i + 1]
    delta = delta + (u0 * fstate[b, g0] + u1 * fstate[b, g0 + 4])
    gamma = u0 * fstate[b, g0 + 1] + u1 * fstate[b, g0 + 5]
    vega = u0 * fstate[b, g0 + 2] + u1 * fstate[b, g0 + 6]
    theta = u0 * fstate[b, g0 + 3] + u1 * fstate[b, g0 + 7]
    return delta, gamma, vega, theta


@njit(**JIT)
def greek_totals(b, n, tau, fstate, mtab, ip, res_f, row):
    """Env ``b``'s totals over assets at ``tau`` (:func:`defialloc.envs.greeks.greek_totals`) into
    ``res_f[row:row + 4, b]``: delta USD, gamma USD per +1 %, vega and theta USD."""
    delta_usd = 0.0
    gamma_usd = 0.0
    vega_usd = 0.0
    theta_usd = 0.0
    for i in range(n):
        price = mtab[b, tau, i]
        delta, gamma, vega, theta = portfolio_greeks(b, n, i, tau, fstate, mtab, ip)
        delta_usd += delta * price
        gamma_usd += gamma * price * price
        vega_usd += vega
        theta_usd += theta
    res_f[row, b] = delta_usd
    res_f[row + 1, b] = gamma_usd / 100.0
    res_f[row + 2, b] = vega_usd
    res_f[row + 3, b] = theta_usd
