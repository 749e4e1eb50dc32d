"""An on-chain options venue (Lyra/Deribit-like, cash-settled in the numeraire): the pricing math.

Pure vectorized numpy: every function takes arrays of any broadcastable shape (``...``) and never
loops over them in Python, so the env's option step stays one array computation per batch. The
venue's parameters (listed strikes and expiries, premia, skew, spreads, fees, margin) are in
:mod:`defialloc.envs.protocols.options_params`; how the env holds and trades contracts is in
:mod:`defialloc.envs.option_book`.

Black-76 (a European option on a forward ``F`` with discount factor ``DF = exp(-r T)``)::

    d1 = (ln(F / K) + sigma^2 T / 2) / (sigma sqrt(T)),   d2 = d1 - sigma sqrt(T)
    call = DF (F N(d1) - K N(d2)),                       put = DF (K N(-d2) - F N(-d1))

Greeks with respect to the forward (:func:`black76_greeks`): delta ``DF N(d1)`` (call) /
``-DF N(-d1)`` (put); gamma ``DF n(d1) / (F sigma sqrt(T))``; vega ``DF F n(d1) sqrt(T)`` per 1.00 of
vol (divide by 100 for a vol point); theta per year (calendar time passing, ``F`` held):
``r V - DF F n(d1) sigma / (2 sqrt(T))``. At expiry (``T = 0``) or zero vol the price is the
discounted intrinsic value ``DF max(+-(F - K), 0)``, delta ``+-DF`` in the money, 0 out of it, and
gamma, vega and theta are 0.

The implied-volatility surface (:func:`surface_vol`) is sticky-moneyness: the smile is a quadratic in
the standardized log-moneyness ``x = ln(K / F) / (sigma_atm sqrt(T))`` around the at-the-money vol,
``sigma(K) = sigma_atm * clip(1 + skew x + smile x^2, lo, hi)``; the at-the-money vol of each expiry is
a forecast of the realized vol over the option's life times the regime's variance premium
(:class:`VarianceForecast`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _pdf(x: np.ndarray) -> np.ndarray:
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def _d1_d2(
    forward: np.ndarray, strike: np.ndarray, time_years: np.ndarray, vol: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``d1``, ``d2``, ``sigma sqrt(T)`` and the mask of live options (``sigma sqrt(T) > 0``); the
    dead entries get a finite placeholder (their values are replaced by the intrinsic ones)."""
    std = vol * np.sqrt(time_years)
    live = std > 0.0
    safe = np.where(live, std, 1.0)
    d1 = np.log(forward / strike) / safe + 0.5 * safe
    return d1, d1 - safe, safe, live


def _check(forward: object, strike: object, time_years: object, vol: object) -> tuple:
    f, k, t, v = (np.asarray(x, dtype=np.float64) for x in (forward, strike, time_years, vol))
    for name, arr, positive in (
        ("forward", f, True),
        ("strike", k, True),
        ("time_years", t, False),
        ("vol", v, False),
    ):
        bad = ~np.isfinite(arr) | ((arr <= 0.0) if positive else (arr < 0.0))
        if bad.any():
            allowed = "> 0" if positive else ">= 0"
            raise ValueError(
                f"{name}={arr[bad].flat[0]!r} is not allowed: it must be finite and {allowed}"
            )
    return f, k, t, v


def black76_price(
    forward: np.ndarray | float,
    strike: np.ndarray | float,
    time_years: np.ndarray | float,
    vol: np.ndarray | float,
    rate: np.ndarray | float,
    is_call: np.ndarray | bool,
) -> np.ndarray:
    """Black-76 price of European calls / puts (module docstring), same currency as ``forward``.

    Args (arrays broadcast together): ``forward`` and ``strike`` > 0 (USD); ``time_years`` >= 0
    (years to expiry); ``vol`` >= 0 (annual, 0.6 = 60 %); ``rate`` the annual continuously
    compounded discount rate; ``is_call`` bool (False: put).

    Raises:
        ValueError: a non-finite or out-of-range input, naming it.
    """
    f, k, t, v = _check(forward, strike, time_years, vol)
    return black76_price_unchecked(f, k, t, v, np.asarray(rate, dtype=np.float64), is_call)


def black76_price_unchecked(
    f: np.ndarray, k: np.ndarray, t: np.ndarray, v: np.ndarray, r: np.ndarray, is_call: object
) -> np.ndarray:
    """:func:`black76_price` without its input checks (the env's hot path; inputs already valid)."""
    call = np.asarray(is_call, dtype=bool)
    d1, d2, _, live = _d1_d2(f, k, t, v)
    df = np.exp(-r * t)
    sign = np.where(call, 1.0, -1.0)
    # call: F N(d1) - K N(d2); put: K N(-d2) - F N(-d1): one expression with the sign
    value = sign * (f * ndtr(sign * d1) - k * ndtr(sign * d2))
    intrinsic = np.maximum(sign * (f - k), 0.0)
    return df * np.where(live, value, intrinsic)


@dataclass(frozen=True)
class Greeks:
    """Black-76 sensitivities (arrays of the inputs' broadcast shape), with respect to the forward.

    ``delta``: dV/dF; ``gamma``: d2V/dF2 (per unit of the forward's currency); ``vega``: dV/dsigma
    per 1.00 of vol; ``theta``: -dV/dT per year (the value change as a year of calendar time passes
    with ``F`` held), usually negative for a long option.
    """

    delta: np.ndarray
    gamma: np.ndarray
    vega: np.ndarray
    theta: np.ndarray


def black76_greeks(
    forward: np.ndarray | float,
    strike: np.ndarray | float,
    time_years: np.ndarray | float,
    vol: np.ndarray | float,
    rate: np.ndarray | float,
    is_call: np.ndarray | bool,
) -> Greeks:
    """Black-76 delta, gamma, vega (per 1.00 of vol) and theta (per year) (module docstring).

    Arguments as :func:`black76_price`. Raises ValueError naming a bad input.
    """
    f, k, t, v = _check(forward, strike, time_years, vol)
    return black76_greeks_unchecked(f, k, t, v, np.asarray(rate, dtype=np.float64), is_call)


def black76_greeks_unchecked(
    f: np.ndarray, k: np.ndarray, t: np.ndarray, v: np.ndarray, r: np.ndarray, is_call: object
) -> Greeks:
    """:func:`black76_greeks` without its input checks."""
    call = np.asarray(is_call, dtype=bool)
    d1, d2, std, live = _d1_d2(f, k, t, v)
    df = np.exp(-r * t)
    sign = np.where(call, 1.0, -1.0)
    density = _pdf(d1)
    itm = sign * (f - k) > 0.0
    delta = np.where(live, sign * df * ndtr(sign * d1), np.where(itm, sign * df, 0.0))
    gamma = np.where(live, df * density / (f * std), 0.0)
    sqrt_t = np.sqrt(np.where(live, t, 1.0))
    vega = np.where(live, df * f * density * sqrt_t, 0.0)
    value = df * (sign * (f * ndtr(sign * d1) - k * ndtr(sign * d2)))
    theta = np.where(live, r * value - df * f * density * (std / sqrt_t) / (2.0 * sqrt_t), 0.0)
    return Greeks(delta, gamma, vega, theta)


# ---------------------------------------------------------------------------------------- surface
def surface_vol(
    atm_vol: np.ndarray,
    forward: np.ndarray,
    strike: np.ndarray,
    time_years: np.ndarray,
    skew: np.ndarray,
    smile: np.ndarray,
    floor_ratio: float = 0.5,
    cap_ratio: float = 3.0,
) -> np.ndarray:
    """Implied vol of strike ``K``: ``atm * clip(1 + skew x + smile x^2, floor_ratio, cap_ratio)``.

    ``x = ln(K / F) / (atm sqrt(T))`` is the standardized log-moneyness (0 at the money, about -0.7
    for a 25-delta put and +0.7 for a 25-delta call); ``skew < 0`` makes puts dearer than calls,
    ``smile > 0`` lifts both wings. A zero ``time_years`` (at expiry) reads as at the money.
    Arrays broadcast; all annual vols.
    """
    std = atm_vol * np.sqrt(time_years)
    x = np.where(std > 0.0, np.log(strike / forward) / np.where(std > 0.0, std, 1.0), 0.0)
    return atm_vol * np.clip(1.0 + skew * x + smile * x * x, floor_ratio, cap_ratio)


# ---------------------------------------------------------------------------------------- forecast
@dataclass(frozen=True)
class VarianceForecast:
    """Expected realized variance of a regime-switching GARCH(1,1) market over the next ``tau`` steps.

    The per-step log-return variance of step ``t + j`` (regime ``k_{t+j}``, GARCH variance
    ``h_{t+j}``) is ``vm[k]^2 h + jump_var[k]``; with ``h`` mean-reverting,
    ``E[h_{t+j} | h_{t+1}] = h_bar + phi^(j-1) (h_{t+1} - h_bar)`` (``phi = alpha + beta``, the
    generator's cap ignored), and the regime a Markov chain with per-step transition ``P``::

        E[sum_j r_{t+j}^2] = sum_{j=1..tau} [ (P^j vm^2)[k_t] (h_bar + phi^(j-1) (h - h_bar))
                                              + (P^j jump_var)[k_t] ]

    (squared means neglected: ~1e-5 per step against variances of ~1e-3). The sums over ``j`` are
    tabulated once for every ``tau <= max_steps`` (:meth:`build`), so a quote is a table lookup.
    A plain GARCH forecast (one regime, ``vm = 1``, no jumps) is the same table with
    ``transition = [[1]]``.

    Attributes (``R`` regimes, ``N`` assets, ``S = max_steps``):
        h_bar: ``(N,)`` unconditional GARCH variance per step.
        level: ``(R, S + 1, N)`` ``sum_j (P^j vm^2)[k] h_bar + (P^j jump_var)[k]`` (index 0: zero).
        decay: ``(R, S + 1, N)`` ``sum_j (P^j vm^2)[k] phi^(j-1)``.
        steps_per_year: ``365 / step_days``.
    """

    h_bar: np.ndarray
    level: np.ndarray
    decay: np.ndarray
    steps_per_year: float

    @classmethod
    def build(
        cls,
        *,
        h_bar: np.ndarray,
        persistence: np.ndarray,
        transition: np.ndarray,
        vol_multiplier: np.ndarray,
        jump_var: np.ndarray,
        max_steps: int,
        step_days: float,
    ) -> VarianceForecast:
        """Tabulate the sums for ``tau = 0 .. max_steps``.

        Args: ``h_bar``, ``persistence`` ``(N,)`` per step; ``transition`` ``(R, R)`` per step
        (rows: now); ``vol_multiplier`` ``(R,)``; ``jump_var`` ``(R, N)`` variance of a step's log
        jump in each regime; ``max_steps`` >= 1.
        """
        if max_steps < 1:
            raise ValueError(f"max_steps={max_steps} must be >= 1")
        p = np.asarray(transition, dtype=np.float64)
        vm2 = np.asarray(vol_multiplier, dtype=np.float64) ** 2
        jv = np.asarray(jump_var, dtype=np.float64)
        h_bar = np.asarray(h_bar, dtype=np.float64)
        phi = np.asarray(persistence, dtype=np.float64)
        r, n = p.shape[0], h_bar.size
        level = np.zeros((r, max_steps + 1, n))
        decay = np.zeros((r, max_steps + 1, n))
        law = np.eye(r)
        for j in range(1, max_steps + 1):  # a loop over horizons at set-up, never per step
            law = law @ p  # P^j
            mult = law @ vm2  # (R,) E[vm^2 of step t+j | k_t]
            level[:, j] = level[:, j - 1] + mult[:, None] * h_bar + law @ jv
            decay[:, j] = decay[:, j - 1] + mult[:, None] * phi ** (j - 1)
        return cls(h_bar, level, decay, 365.0 / step_days)

    @property
    def max_steps(self) -> int:
        return int(self.level.shape[1] - 1)

    def annual_vol(self, regime: np.ndarray, h_next: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """``(B, N, K)`` forecast realized vol (annual) over the next ``steps`` steps.

        Args: ``regime`` ``(B,)`` int codes at the decision time; ``h_next`` ``(B, N)`` the variance of
        the next step; ``steps`` ``(B, N, K)`` ints in ``[1, max_steps]`` (``K`` contracts per asset).
        """
        k = np.asarray(regime)[:, None, None]
        col = np.arange(h_next.shape[1])[None, :, None]
        excess = h_next[..., None] - self.h_bar[col]
        total = self.level[k, steps, col] + excess * self.decay[k, steps, col]
        return np.sqrt(np.maximum(total, 0.0) / steps * self.steps_per_year)


# ---------------------------------------------------------------------------------------- venue
def option_fee(
    units: np.ndarray,
    index: np.ndarray,
    price: np.ndarray,
    rate_of_underlying: float,
    cap_of_price: float,
) -> np.ndarray:
    """Trading (or settlement) fee, USD: ``|units| min(rate x index, cap x price)`` (Deribit: a
    fraction of the underlying, capped at a fraction of the option's price)."""
    return np.abs(units) * np.minimum(rate_of_underlying * index, cap_of_price * np.abs(price))


def intrinsic_value(index: np.ndarray, strike: np.ndarray, is_call: np.ndarray) -> np.ndarray:
    """Payoff per unit at expiry, USD: ``max(S - K, 0)`` for calls, ``max(K - S, 0)`` for puts."""
    return np.maximum(np.where(is_call, index - strike, strike - index), 0.0)
