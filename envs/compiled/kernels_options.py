"""One env's option book, compiled (:mod:`defialloc.envs.option_book`, its quotes and its observation).

Scalar translations of the book's ``buyback_reserve``, ``execute``, ``move`` (settlement, the
covered calls paid in units, the margin call), ``close_out`` and observation, in the same operation
order as the numpy reference; quotes and Greeks are in
:mod:`defialloc.envs.compiled.kernels_option_quotes`.

The book's state is in ``fstate[b, ip[IP_OPT_STATE]:]`` (units, strikes, marks ``(N, 2)``, Greeks
``(N, 2, 4)``) and ``istate[b, ip[IP_OPT_EXPIRY]:]`` (expiries ``(N, 2)``); contract ``(i, slot)``
is entry ``2 i + slot`` (slot 0 the call, 1 the put). The venue's series at time index ``tau`` are
``mtab[b, tau, ip[IP_M_OPT_H] + i]`` (next step's variance) and ``mtab[b, tau, ip[IP_M_REGIME]]``.
"""

from __future__ import annotations

import math

from numba import njit

from defialloc.envs.compiled.kernels_actions import clip1
from defialloc.envs.compiled.kernels_option_quotes import (
    forecast_vol,
    quote,
    quote_book,
    regime_at,
    store_book,
)
from defialloc.envs.compiled.layout import (
    E_OPT_FEES,
    E_OPT_PREMIUM,
    E_OPT_SPREAD,
    O_INSURANCE,
    O_LIQUIDATION,
    O_SCALARS,
    O_SETTLE_FEE,
    O_SETTLEMENT,
    O_VALUE,
)
from defialloc.envs.compiled.params import (
    F_BAND,
    F_OPT_DAYS_SCALE,
    F_OPT_DEVIATION,
    F_OPT_FEE,
    F_OPT_FEE_CAP,
    F_OPT_LIQ_FEE,
    F_OPT_MAINT,
    F_OPT_MAX_CHANGE,
    F_OPT_RATE,
    F_OPT_SETTLE_CAP,
    F_OPT_SETTLE_FEE,
    F_OPT_STEPS_PER_YEAR,
    IP_E_OPT_MOVE,
    IP_KIND,
    IP_M_OPT_H,
    IP_OPT_ACTIONS,
    IP_OPT_EXPIRY,
    IP_OPT_MAX_STEPS,
    IP_OPT_OBS_TENOR,
    IP_OPT_S,
    IP_OPT_STATE,
    IP_OPT_T,
    IP_OPT_VEC,
    IP_UNITS,
    O_MONEYNESS,
    O_PREMIUM,
)
from defialloc.envs.compiled.scratch import (
    V_O_ADV_ASK,
    V_O_ADV_MID,
    V_O_ASK,
    V_O_BID,
    V_O_BUY,
    V_O_CSHARE,
    V_O_EXPIRY,
    V_O_FORCED,
    V_O_MARK1,
    V_O_MID,
    V_O_NAKED,
    V_O_OWED,
    V_O_PSHARE,
    V_O_QUOTED,
    V_O_SELL,
    V_O_STRIKE,
    V_PRICE,
    V_PRICE1,
    ov,
    vec,
)

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def _fee(units, index, price, rate, cap):
    """``option_fee``: ``|units| min(rate x index, cap x |price|)`` USD."""
    return abs(units) * min(rate * index, cap * abs(price))


@njit(**JIT)
def _fit(budget, cost):
    """Share of a purchase of ``cost`` USD that ``budget`` USD pays (``option_book._fit``)."""
    if cost > budget:
        return max(budget, 0.0) / (cost if cost > 0.0 else 1.0)
    return 1.0


# ------------------------------------------------------------------------------------ decision
@njit(**JIT)
def _choice(a, size):
    """``choice_index``: an output in [-1, 1] -> ``floor((a + 1) / 2 size)`` in ``[0, size - 1]``."""
    x = (clip1(a) + 1.0) * 0.5 * size
    return min(int(x), size - 1)


@njit(**JIT)
def option_targets(b, n, actions, spot_only, forced, fstate, w, fp, ip):
    """Call and put shares ``(N,)`` into ``w[V_O_CSHARE/PSHARE]`` (``ActionMap._options``); returns
    the listed call-strike, put-strike and tenor indices. ``forced``: no options (the safe target)."""
    cs = vec(V_O_CSHARE, n)
    ps = vec(V_O_PSHARE, n)
    if forced:
        for i in range(n):
            w[cs + i] = 0.0
            w[ps + i] = 0.0
        return 0, 0, 0
    kind = ip[IP_KIND]
    start = ip[IP_OPT_ACTIONS]
    units = ip[IP_UNITS]
    st = ip[IP_OPT_STATE]
    for i in range(n):
        held = fstate[b, units + i]
        for slot in range(2):
            a = -1.0 if spot_only else clip1(actions[b, start + slot * n + i])
            if kind == 0:
                share = (a + 1.0) * 0.5
            elif kind == 1:
                share = fp[F_OPT_DEVIATION] * a
            else:
                now = 0.0
                if held > 0.0:
                    u = fstate[b, st + 2 * i + slot]
                    now = -u / held if slot == 0 else u / held
                share = now + fp[F_OPT_MAX_CHANGE] * a
            w[(cs if slot == 0 else ps) + i] = min(max(share, 0.0), 1.0)
    c0 = 0.0 if spot_only else actions[b, start + 2 * n]
    c1 = 0.0 if spot_only else actions[b, start + 2 * n + 1]
    c2 = 0.0 if spot_only else actions[b, start + 2 * n + 2]
    n_s = ip[IP_OPT_S]
    return _choice(c0, n_s), _choice(c1, n_s), _choice(c2, ip[IP_OPT_T])


@njit(**JIT)
def buyback_reserve(b, n, tau, fstate, istate, mtab, w, fp, ip, after_at):
    """USD the spot buys must leave in cash to buy back, at the ask plus the fee, the written calls
    beyond the units ``w[after_at]`` the spot trades will leave (``OptionBook.buyback_reserve``)."""
    st = ip[IP_OPT_STATE]
    naked_at = vec(V_O_NAKED, n)
    anything = False
    for i in range(n):
        naked = max(-fstate[b, st + 2 * i] - max(w[after_at + i], 0.0), 0.0)
        w[naked_at + i] = naked
        w[ov(V_O_QUOTED, n, 0) + i] = 1.0 if naked != 0.0 else 0.0
        w[ov(V_O_QUOTED, n, 1) + i] = 0.0
        if naked != 0.0:
            anything = True
    if not anything:
        return 0.0
    price = vec(V_PRICE, n)
    quote_book(b, n, tau, price, fstate, istate, mtab, w, fp, ip, False)
    need = 0.0
    for i in range(n):
        naked = w[naked_at + i]
        ask = w[ov(V_O_ASK, n, 0) + i]
        fee = _fee(naked, w[price + i], ask, fp[F_OPT_FEE], fp[F_OPT_FEE_CAP])
        need += naked * ask + fee
    return need


@njit(**JIT)
def execute_options(b, n, tau, cash, num, eq, picks, fstate, istate, w, mtab, fp, ip, rec):
    """Trade env ``b``'s book toward the shares in ``w[V_O_CSHARE/PSHARE]`` of the spot units held
    after the spot trades (``OptionBook.execute``); ``picks``: the call-strike, put-strike and tenor
    indices. Returns the cash (numeraire units); the fills go to ``rec[b, E_OPT_*]``."""
    st = ip[IP_OPT_STATE]
    ex = ip[IP_OPT_EXPIRY]
    units = ip[IP_UNITS]
    opt = ip[IP_OPT_VEC]
    n_s, n_t = ip[IP_OPT_S], ip[IP_OPT_T]
    listed_at = opt + O_MONEYNESS + n_s + n_t
    price = vec(V_PRICE, n)
    band = fp[F_BAND]
    tenor = int(fp[opt + O_MONEYNESS + n_s + picks[2]])
    t_years = tenor / fp[F_OPT_STEPS_PER_YEAR]
    growth = math.exp(fp[F_OPT_RATE] * t_years)
    for i in range(n):
        cover = max(fstate[b, units + i], 0.0) * fp[listed_at + i]
        forward = w[price + i] * growth
        for slot in range(2):
            c = 2 * i + slot
            if slot == 0:
                want = -w[vec(V_O_CSHARE, n) + i] * cover
            else:
                want = w[vec(V_O_PSHARE, n) + i] * cover
            held = fstate[b, st + c]
            has = held != 0.0
            worth = abs(want - held) * w[price + i] > band * max(eq, 0.0)
            close = has and want == 0.0
            resize = has and want != 0.0 and worth
            if slot == 0:
                uncovered = has and held < -cover
                resize = resize or (uncovered and want != 0.0)
                close = close or (uncovered and want == 0.0)
            opening = (not has) and want != 0.0 and worth
            strike = fstate[b, st + 2 * n + c]
            expiry = istate[b, ex + c]
            if opening:
                strike = forward * fp[opt + O_MONEYNESS + picks[slot]]
                expiry = tau + tenor
            w[ov(V_O_STRIKE, n, slot) + i] = strike
            w[ov(V_O_EXPIRY, n, slot) + i] = expiry
            if opening or resize:
                target = want
            elif close:
                target = 0.0
            else:
                target = held
            delta = target - held
            w[ov(V_O_BUY, n, slot) + i] = max(delta, 0.0)
            w[ov(V_O_SELL, n, slot) + i] = max(-delta, 0.0)
            w[ov(V_O_QUOTED, n, slot) + i] = 1.0 if delta != 0.0 else 0.0
            forced = 0.0
            if slot == 0:
                forced = min(max(delta, 0.0), max(-held - cover, 0.0))
            w[ov(V_O_FORCED, n, slot) + i] = forced
    quote_book(b, n, tau, price, fstate, istate, mtab, w, fp, ip, True)
    fee_rate, cap = fp[F_OPT_FEE], fp[F_OPT_FEE_CAP]
    income = 0.0
    need = 0.0
    for i in range(n):
        for slot in range(2):
            sell = w[ov(V_O_SELL, n, slot) + i]
            bid = w[ov(V_O_BID, n, slot) + i]
            income += sell * bid - _fee(sell, w[price + i], bid, fee_rate, cap)
            need += w[ov(V_O_FORCED, n, slot) + i] * _unit_cost(w, n, i, slot, price, fee_rate, cap)
    budget = cash * num + income
    scale = _fit(budget, need)
    spent = 0.0
    optional_cost = 0.0
    for i in range(n):
        for slot in range(2):
            f = w[ov(V_O_FORCED, n, slot) + i] * scale
            w[ov(V_O_FORCED, n, slot) + i] = f
            unit_cost = _unit_cost(w, n, i, slot, price, fee_rate, cap)
            spent += f * unit_cost
            optional_cost += (w[ov(V_O_BUY, n, slot) + i] - f) * unit_cost
    budget = budget - spent
    scale = _fit(budget, optional_cost)
    fees = 0.0
    spread = 0.0
    premium = 0.0
    for i in range(n):
        for slot in range(2):
            c = 2 * i + slot
            f = w[ov(V_O_FORCED, n, slot) + i]
            buy = f + (w[ov(V_O_BUY, n, slot) + i] - f) * scale
            sell = w[ov(V_O_SELL, n, slot) + i]
            ask = w[ov(V_O_ASK, n, slot) + i]
            bid = w[ov(V_O_BID, n, slot) + i]
            mid = w[ov(V_O_MID, n, slot) + i]
            fstate[b, st + c] = fstate[b, st + c] + buy - sell
            fees += _fee(buy, w[price + i], ask, fee_rate, cap) + _fee(
                sell, w[price + i], bid, fee_rate, cap
            )
            spread += buy * (ask - mid) + sell * (mid - bid)
            premium += buy * ask - sell * bid
    cash = max(cash - (premium + fees) / num, 0.0)
    store_book(b, n, fstate, istate, w, fp, ip, True, True)
    rec[b, E_OPT_FEES] = fees
    rec[b, E_OPT_SPREAD] = spread
    rec[b, E_OPT_PREMIUM] = premium
    return cash


@njit(**JIT)
def _unit_cost(w, n, i, slot, price, fee_rate, cap):
    ask = w[ov(V_O_ASK, n, slot) + i]
    return ask + _fee(1.0, w[price + i], ask, fee_rate, cap)


# ------------------------------------------------------------------------------------ move
@njit(**JIT)
def _pay_in_units(b, n, fstate, w, ip, owed_at):
    """Pay ``w[owed_at]`` ``(N,)`` USD in spot units at the close ``w[V_PRICE1]``: the same asset's
    units first, then every unit held pro rata by value (``option_book._pay_in_units``); returns
    the rest the venue absorbs (USD)."""
    units = ip[IP_UNITS]
    price1 = vec(V_PRICE1, n)
    anything = False
    for i in range(n):
        if w[owed_at + i] != 0.0:
            anything = True
    if not anything:
        return 0.0
    rest = 0.0
    worth = 0.0
    for i in range(n):
        held = max(fstate[b, units + i], 0.0)
        own = min(w[owed_at + i] / w[price1 + i], held)
        rest += w[owed_at + i] - own * w[price1 + i]
        fstate[b, units + i] = fstate[b, units + i] - own
        w[owed_at + i] = held - own  # reused: what is left to pay with
        worth += (held - own) * w[price1 + i]
    frac = min(rest / worth, 1.0) if worth > 0.0 else 0.0
    for i in range(n):
        fstate[b, units + i] = fstate[b, units + i] - w[owed_at + i] * frac
        w[owed_at + i] = 0.0
    return max(rest - worth, 0.0)


@njit(**JIT)
def move_options(b, n, tau1, cash, num1, fstate, istate, mtab, w, fp, ip, rec):
    """Settle, mark and margin-check env ``b``'s book over the move to ``tau1`` (``OptionBook.move``);
    mutates the spot units in ``fstate``. Returns ``(cash, insurance USD, liquidation cost USD,
    liquidations)``; the settlement flows and the identity's contracts and marks go to ``rec[b]``."""
    st = ip[IP_OPT_STATE]
    ex = ip[IP_OPT_EXPIRY]
    units = ip[IP_UNITS]
    mv = ip[IP_E_OPT_MOVE]
    during = mv + O_SCALARS
    before = during + 2 * n
    after = before + 2 * n
    anything = False
    for c in range(2 * n):
        held = fstate[b, st + c]
        rec[b, during + c] = held
        rec[b, before + c] = fstate[b, st + 4 * n + c]
        rec[b, after + c] = 0.0
        w[ov(V_O_QUOTED, n, c % 2) + c // 2] = 1.0 if held != 0.0 else 0.0
        if held != 0.0:
            anything = True
    for j in range(O_VALUE):  # the value is written after the write-off (kernels_move)
        rec[b, mv + j] = 0.0
    if not anything:
        return cash, 0.0, 0.0, 0
    price1 = vec(V_PRICE1, n)
    quote_book(b, n, tau1, price1, fstate, istate, mtab, w, fp, ip, False)
    settle_rate, settle_cap = fp[F_OPT_SETTLE_FEE], fp[F_OPT_SETTLE_CAP]
    owed_at = vec(V_O_OWED, n)
    received = 0.0
    payoff_sum = 0.0
    fee_sum = 0.0
    owed = 0.0
    for i in range(n):
        s1 = w[price1 + i]
        owed_i = 0.0
        for slot in range(2):
            c = 2 * i + slot
            held = fstate[b, st + c]
            has = held != 0.0
            expiring = has and istate[b, ex + c] == tau1
            strike = fstate[b, st + 2 * n + c]
            unit_payoff = max(s1 - strike, 0.0) if slot == 0 else max(strike - s1, 0.0)
            mark1 = 0.0
            if expiring:
                mark1 = unit_payoff
            elif has:
                mark1 = w[ov(V_O_MID, n, slot) + i]
            w[ov(V_O_MARK1, n, slot) + i] = mark1
            payoff = held * unit_payoff if expiring else 0.0
            fee = _fee(held if expiring else 0.0, s1, unit_payoff, settle_rate, settle_cap)
            received += max(payoff, 0.0)
            payoff_sum += payoff
            fee_sum += fee
            owed_i += max(-payoff, 0.0) + fee
            if expiring:
                fstate[b, st + c] = 0.0
        w[owed_at + i] = owed_i
        owed += owed_i
    cash_usd = cash * num1 + received
    from_cash = min(cash_usd, owed)
    share = 1.0 - from_cash / owed if owed > 0.0 else 0.0
    for i in range(n):
        w[owed_at + i] = w[owed_at + i] * share
    insurance = _pay_in_units(b, n, fstate, w, ip, owed_at)
    cash_usd = cash_usd - from_cash
    # margin: written calls beyond the units held need cash, checked at the step's high
    naked_at = vec(V_O_NAKED, n)
    naked_total = 0.0
    for i in range(n):
        naked = max(-fstate[b, st + 2 * i] - max(fstate[b, units + i], 0.0), 0.0)
        w[naked_at + i] = naked
        naked_total += naked
    liq_cost = 0.0
    count = 0
    if naked_total > 0.0:
        cash_usd, liq_cost, count = _margin_call(
            b, n, tau1, cash_usd, fstate, istate, mtab, w, fp, ip
        )
        insurance = insurance + _pay_in_units(b, n, fstate, w, ip, owed_at)
    store_book(b, n, fstate, istate, w, fp, ip, False, False)
    for c in range(2 * n):
        rec[b, after + c] = w[ov(V_O_MARK1, n, c % 2) + c // 2]
    rec[b, mv + O_SETTLEMENT] = payoff_sum
    rec[b, mv + O_SETTLE_FEE] = fee_sum
    rec[b, mv + O_LIQUIDATION] = liq_cost
    rec[b, mv + O_INSURANCE] = insurance
    return cash_usd / num1, insurance, liq_cost, count


@njit(**JIT)
def _margin_call(b, n, tau1, cash_usd, fstate, istate, mtab, w, fp, ip):
    """Buy back the uncovered calls ``w[V_O_NAKED]`` when the cash misses their maintenance margin at
    the high (``OptionBook._margin_call``); leaves what the cash could not pay in ``w[V_O_OWED]``.
    Returns ``(cash USD, liquidation cost USD, count)``."""
    st = ip[IP_OPT_STATE]
    ex = ip[IP_OPT_EXPIRY]
    naked_at = vec(V_O_NAKED, n)
    owed_at = vec(V_O_OWED, n)
    adv_mid = vec(V_O_ADV_MID, n)
    adv_ask = vec(V_O_ADV_ASK, n)
    regime = regime_at(mtab, b, tau1, ip)
    need = 0.0
    naked_total = 0.0
    for i in range(n):
        high = mtab[b, tau1, 2 * n + i]  # the step's high (Layout.m_high)
        strike = fstate[b, st + 2 * n + 2 * i]
        steps = max(istate[b, ex + 2 * i] - tau1, 1)
        h = mtab[b, tau1, ip[IP_M_OPT_H] + i]
        mid, ask, _, _, _, _ = quote(fp, ip, n, regime, h, i, high, strike, steps, 1.0)
        w[adv_mid + i] = mid
        w[adv_ask + i] = ask
        naked = w[naked_at + i]
        need += naked * (fp[F_OPT_MAINT] * high + mid)
        naked_total += naked
    if not (naked_total > 0.0 and cash_usd < need):
        for i in range(n):
            w[owed_at + i] = 0.0
        return cash_usd, 0.0, 0
    cost = 0.0
    total = 0.0
    for i in range(n):
        closed = w[naked_at + i]
        fee = closed * fp[F_OPT_LIQ_FEE] * mtab[b, tau1, 2 * n + i]
        pay = closed * w[adv_ask + i] + fee
        w[owed_at + i] = pay
        cost += closed * (w[adv_ask + i] - w[ov(V_O_MID, n, 0) + i]) + fee
        total += pay
        fstate[b, st + 2 * i] = fstate[b, st + 2 * i] + closed
    from_cash = min(cash_usd, total)
    share = 1.0 - from_cash / total if total > 0.0 else 0.0
    for i in range(n):
        w[owed_at + i] = w[owed_at + i] * share
    return cash_usd - from_cash, cost, 1


@njit(**JIT)
def close_out_options(b, n, fstate, istate, ip):
    """Drop every contract of env ``b`` (ruin: the account was closed out; ``OptionBook.close_out``)."""
    st = ip[IP_OPT_STATE]
    ex = ip[IP_OPT_EXPIRY]
    for c in range(2 * n):
        fstate[b, st + c] = 0.0
        fstate[b, st + 2 * n + c] = 1.0
        fstate[b, st + 4 * n + c] = 0.0
        istate[b, ex + c] = 0
        for j in range(4):
            fstate[b, st + 6 * n + 4 * c + j] = 0.0


@njit(**JIT)
def option_value(b, n, fstate, ip):
    """Mark value of env ``b``'s contracts now, USD (``OptionBook.value_usd``)."""
    st = ip[IP_OPT_STATE]
    value = 0.0
    for c in range(2 * n):
        value += fstate[b, st + c] * fstate[b, st + 4 * n + c]
    return value


# ------------------------------------------------------------------------------------ observation
@njit(**JIT)
def observe_options(b, n, tau, fstate, istate, mtab, fp, ip, obs, at, clip):
    """The options' part of the protocol block ``(5N,)`` at ``obs[b, at:]``
    (:func:`defialloc.envs.option_views.option_observation`), clipped to ``[-clip, clip]``."""
    st = ip[IP_OPT_STATE]
    ex = ip[IP_OPT_EXPIRY]
    units = ip[IP_UNITS]
    opt = ip[IP_OPT_VEC]
    listed_at = opt + O_MONEYNESS + ip[IP_OPT_S] + ip[IP_OPT_T]
    regime = regime_at(mtab, b, tau, ip)
    s = min(max(ip[IP_OPT_OBS_TENOR], 1), ip[IP_OPT_MAX_STEPS])
    scale = fp[F_OPT_DAYS_SCALE]
    for i in range(n):
        listed = fp[listed_at + i]
        h = mtab[b, tau, ip[IP_M_OPT_H] + i]
        iv = forecast_vol(fp, ip, n, regime, i, h, s) * fp[opt + O_PREMIUM + regime]
        held = fstate[b, units + i]
        calls = -fstate[b, st + 2 * i] / held if held > 0.0 else 0.0
        puts = fstate[b, st + 2 * i + 1] / held if held > 0.0 else 0.0
        call_days = 0.0
        if fstate[b, st + 2 * i] != 0.0:
            call_days = (istate[b, ex + 2 * i] - tau) * scale
        put_days = 0.0
        if fstate[b, st + 2 * i + 1] != 0.0:
            put_days = (istate[b, ex + 2 * i + 1] - tau) * scale
        obs[b, at + i] = _clip(iv * listed, clip)
        obs[b, at + n + i] = _clip(calls * listed, clip)
        obs[b, at + 2 * n + i] = _clip(puts * listed, clip)
        obs[b, at + 3 * n + i] = _clip(call_days * listed, clip)
        obs[b, at + 4 * n + i] = _clip(put_days * listed, clip)


@njit(**JIT)
def _clip(x, clip):
    return max(min(x, clip), -clip)
