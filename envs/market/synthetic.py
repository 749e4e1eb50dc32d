"""Synthetic market: Markov regimes x per-asset GARCH(1,1) x multivariate Student-t x co-jumps.

Model of one path (all returns are log returns; ``dt = step_days``; regime ``k_t`` in calm/bull/crash):

* ``k_t`` is a Markov chain with per-step transition matrix ``P_daily^dt`` (see :func:`defialloc.envs.market.synthetic_model.step_transition`).
  ``regime[t]`` is the regime of the step that ends at ``t`` (the same meaning as the replay label at
  ``t``); it also sets the pool depth and the gas price at ``t``.
* ``r_t = mu_t + e_t + J_t`` with diffusive shock ``e_t = vm[k_t] sqrt(h_t) x_t`` and
  ``h_{t+1} = omega dt + alpha e_t^2 + beta h_t`` per asset (capped at ``max_variance_multiple`` times
  its unconditional level). ``MarketPaths.cond_var[:, t]`` is ``h_t``, the variance of the step that
  ends at ``t``; ``h_{t+1}`` depends on the shocks up to ``t`` only, so it is KNOWN at decision time
  ``t`` (the true-state references of ``agents/baselines/ceiling.py`` are told it; no feasible policy
  is). ``x_t`` is multivariate Student-t with unit variance:
  ``x = C[k_t] z sqrt((nu - 2) / V)``, ``z ~ N(0, I)``, ``V ~ chi2(nu)`` shared by the assets, so the
  correlation is exactly ``C C^T`` and large moves are joint (tail dependence).
* ``J_t``: with probability ``1 - exp(-lambda_common[k_t] dt / 365)`` a common event moves every asset by
  ``m_a + s_a (sqrt(rho) f + sqrt(1 - rho) xi_a)``; otherwise each asset jumps on its own with the
  idiosyncratic intensity. ``m_a < 0``: jumps are biased down (negative skew).
* Drift ``mu_t`` (``synthetic.drift``, :class:`defialloc.envs.market.synthetic_model.DriftTerms`), with
  ``s_t^2 = vm[k_t]^2 h_t`` and ``p_k`` the probability that the asset jumps in the step:
  arithmetic ``log(1+R) dt/365 - s_t^2/2 - log(1 - p_k + p_k exp(m_a + s_a^2/2))`` (the expected SIMPLE
  return is ``(1+R)^(dt/365) - 1`` in every regime and at every variance); sharpe
  ``S sqrt(dt/365) s_t - s_t^2/2 - (same jump term)`` (``E[P_{t+1}/P_t] = exp(S sqrt(dt/365) s_t)``);
  log ``mu_log[k_t] dt/365 - p_k m_a`` (the expected LOG return is ``mu_log[k]``; the earlier convention).
  Jumps and volatility thus add skew and tail risk, not expected return. With Student-t shocks
  ``E[exp(s x)]`` does not exist: ``- s^2/2`` is the second-order (lognormal) compensation, exact up to
  a fourth-moment term ``s^4 (kappa - 3) / 24`` per step (0.13 % a year for ``nu = 6.23`` and a crash
  day of SOL, ``s = 0.075``; docs/market.md). The jump term is exact.
* High/low: the exact maximum/minimum of a Brownian bridge from 0 to ``r_t`` with the step's diffusive
  vol (times ``range_scale``): ``(r + sqrt(r^2 + 2 s^2 E)) / 2``, ``E ~ Exp(1)``, so
  ``low <= min(open, close)`` and ``high >= max(open, close)`` with open = previous close.
* Numeraire: deviation ``D_t = max(D_{t-1} 2^(-dt/half_life), d_t)`` where ``d_t > 0`` on depeg events
  (``D = 0`` at point 0); ``numeraire_usd = (1 - D_t) exp(noise)``.
* Depth and gas: per-regime levels times lognormal AR(1) factors; gas spikes with a per-regime probability.

Determinism: path ``b`` is a function of ``seeds[b]`` only. Each path draws its random numbers from
``np.random.default_rng(seeds[b])`` in a fixed order and shape (independent of the batch size); the time
recursions then run vectorized over paths (loop over time on time-major ``(T, B, M)`` arrays, one
contiguous row per step), with elementwise float32/float64 operations only, so a path's values do not
depend on the batch it is drawn in.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtri

from defialloc.envs.market.config import (
    DAYS_PER_YEAR,
    REGIME_NAMES,
    GasParams,
    LiquidityParams,
    MarketConfig,
    check_sample_request,
)
from defialloc.envs.market.paths import MarketPaths
from defialloc.envs.market.synthetic_model import F32 as _F
from defialloc.envs.market.synthetic_model import GarchConstants, SyntheticModel, model_of

# Blocks drawn per path (T = burn-in + L steps): uniforms U (T, 4 + N); diffusion normals (T, N [+1 for
# the ETH fallback]); normals Z (L, 3) for gas, depth and peg noise; exponentials E (L, 2N) for the
# high/low bridges; gammas G (T,) for the Student-t mixing. Jump sizes, spike sizes and depeg depths reuse
# the event uniform (u / p is uniform given u < p), so rare events cost no extra draws.
_U_REGIME, _U_COMMON, _U_DEPEG, _U_SPIKE = range(4)
_N_U_FIXED = 4
_Z_GAS, _Z_DEPTH, _Z_PEG = range(3)
_EPS_U = 1e-7  # keeps inverse-CDF arguments inside (0, 1) despite float32 rounding
_SMALL_BATCH = 4  # up to this many paths, the regime chains run on Python ints
_LOOP_MIN_ROW = 256  # from this many values per time step, a prefix sum runs as a loop over time


def simulate_regimes(u: np.ndarray, transition: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """Regime chains from uniforms (inverse-CDF sampling of each row of ``transition``).

    Args:
        u: ``(B, T)`` uniforms in [0, 1); ``u[:, 0]`` draws the first regime from ``initial``.
        transition: ``(K, K)`` per-step transition matrix (K <= 127); ``initial``: ``(K,)`` law at t = 0.

    Returns:
        ``(B, T)`` int8 regime codes.
    """
    k = len(initial)
    cum = np.cumsum(transition, axis=1)[:, :-1].astype(u.dtype)
    ut = np.ascontiguousarray(u.T)
    # next_state[t, i, b]: regime at t if the regime at t-1 was i; the time loop only gathers.
    next_state = np.zeros((u.shape[1], k, u.shape[0]), dtype=np.int8)
    for i in range(k):
        for c in cum[i]:
            next_state[:, i, :] += ut >= c
    first = np.searchsorted(np.cumsum(initial)[:-1], ut[0], side="right").astype(np.intp)
    if u.shape[0] <= _SMALL_BATCH:
        return _chains_in_python(next_state, first)
    reg = np.empty(ut.shape, dtype=np.int8)
    cur = first
    reg[0] = cur
    cols = np.arange(u.shape[0])
    for t in range(1, ut.shape[0]):
        cur = next_state[t][cur, cols]
        reg[t] = cur
    return np.ascontiguousarray(reg.T)


def _chains_in_python(next_state: np.ndarray, first: np.ndarray) -> np.ndarray:
    """:func:`simulate_regimes`' time loop on Python ints, one path at a time.

    For a few paths a list lookup per step (~0.05 us) beats a numpy gather (~1 us of call overhead).
    """
    out = np.empty((next_state.shape[2], next_state.shape[0]), dtype=np.int8)
    for b in range(next_state.shape[2]):
        table = next_state[:, :, b].tolist()
        cur = int(first[b])
        chain = [cur]
        for row in table[1:]:
            cur = row[cur]
            chain.append(cur)
        out[b] = chain
    return out


def _ar1_log_factor(z: np.ndarray, std: float, phi: float) -> np.ndarray:
    """Stationary AR(1) ``y_t = phi y_{t-1} + std sqrt(1 - phi^2) z_t`` along axis 1 with ``y_0 = std z_0``."""
    y = np.empty(z.shape, dtype=np.float64)
    y[:, 0] = std * z[:, 0]
    if z.shape[1] > 1:
        coef = std * np.sqrt(1.0 - phi * phi)
        y[:, 1:], _ = lfilter([coef], [1.0, -phi], z[:, 1:], axis=1, zi=phi * y[:, :1])
    return y


def liquidity_and_gas(
    regime: np.ndarray,
    liquidity: LiquidityParams,
    gas: GasParams,
    step_days: float,
    z_depth: np.ndarray | None = None,
    z_gas: np.ndarray | None = None,
    u_spike: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Depth multiplier and gas price (gwei) along regime paths.

    Args:
        regime: ``(B, L)`` regime codes.
        z_depth, z_gas: ``(B, L)`` standard normals driving the lognormal AR(1) factors; None: no noise.
        u_spike: ``(B, L)`` uniforms: a spike when ``u < p_spike[regime]``, of size
            ``min * (max / min) ** (u / p)``; None: no spikes. All None gives replay's deterministic levels.

    Returns:
        ``(depth_multiplier, gas_price_gwei)``, each ``(B, L)`` float64 > 0.
    """
    depth = liquidity.depth_multiplier.array()[regime]
    gwei = gas.gwei.array()[regime]
    if z_depth is not None and liquidity.log_noise_std > 0:
        phi = liquidity.persistence_daily**step_days
        depth = depth * np.exp(_ar1_log_factor(z_depth, liquidity.log_noise_std, phi))
    if z_gas is not None and gas.log_noise_std > 0:
        phi = gas.persistence_daily**step_days
        gwei = gwei * np.exp(_ar1_log_factor(z_gas, gas.log_noise_std, phi))
    if u_spike is not None:
        p_spike = (1.0 - (1.0 - gas.spike_probability.array()) ** step_days)[regime]
        hit = u_spike < p_spike
        if hit.any():
            lo, hi = np.log(gas.spike_multiplier_min), np.log(gas.spike_multiplier_max)
            size = np.exp(lo + (hi - lo) * (u_spike[hit] / p_spike[hit]))
            gwei = gwei.copy()
            gwei[hit] *= size
    return depth, gwei


def bridge_extremes(
    step_return: np.ndarray, vol: np.ndarray, exp_high: np.ndarray, exp_low: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Log max and log min (relative to the open) of a Brownian bridge from 0 to ``step_return``.

    ``P(max > m) = exp(-2 m (m - r) / s^2)`` for ``m >= max(0, r)``; inverting with an Exp(1) draw ``E``
    gives ``m = (r + sqrt(r^2 + 2 s^2 E)) / 2`` (the min symmetrically). Arrays broadcast.
    """
    r2 = step_return * step_return
    q = 2.0 * vol * vol
    up = 0.5 * (step_return + np.sqrt(r2 + q * exp_high))
    down = 0.5 * (step_return - np.sqrt(r2 + q * exp_low))
    return up, down


class _Draws:
    """The random blocks of a batch, each path filled from its own generator in a fixed order."""

    def __init__(
        self, seeds: np.ndarray, steps: int, length: int, n_assets: int, n_shocks: int, nu: float
    ) -> None:
        b = len(seeds)
        self.u = np.empty((b, steps, _N_U_FIXED + n_assets), dtype=_F)
        self.z_diff = np.empty((b, n_shocks, steps), dtype=_F)  # shock-major: contiguous rows
        self.z = np.empty((b, length, 3), dtype=_F)
        self.e = np.empty((b, length, 2 * n_assets), dtype=_F)
        self.gamma = np.empty((b, steps), dtype=_F)
        for i, seed in enumerate(seeds):
            rng = np.random.default_rng(int(seed))
            rng.random(out=self.u[i], dtype=_F)
            rng.standard_normal(out=self.z_diff[i], dtype=_F)
            rng.standard_normal(out=self.z[i], dtype=_F)
            rng.standard_exponential(out=self.e[i], dtype=_F)
            rng.standard_gamma(0.5 * nu, out=self.gamma[i], dtype=_F)


def _correlated_shocks(z: np.ndarray, reg: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """Time-major ``(T, B, M)`` shocks ``x_i = sum_{j<=i} L[k]_ij z_j`` for the first ``N`` columns
    (``chol`` ``(3, N, N)``), independent ``z`` for the rest; ``z`` is ``(B, M, T)``, ``reg`` ``(B, T)``.

    Elementwise ops only (small-table gathers): BLAS kernels may round differently with the batch
    size, which would break the batch-independence of each path. Each column is summed in order
    ``j = 0, 1, ..., i`` on contiguous ``(B, T)`` blocks, then all are transposed at once.
    """
    b, m, steps = z.shape
    n = chol.shape[1]
    cols = np.empty((m, b, steps), dtype=_F)
    for i in range(n):
        acc = np.multiply(np.take(chol[:, i, 0], reg), z[:, 0], out=cols[i])
        for j in range(1, i + 1):
            acc += np.take(chol[:, i, j], reg) * z[:, j]
    cols[n:] = z[:, n:].transpose(1, 0, 2)
    return np.ascontiguousarray(cols.transpose(2, 1, 0))


def _garch_variance(shock: np.ndarray, params: GarchConstants) -> np.ndarray:
    """``(T, B, M)`` conditional variances ``h_t`` for time-major shocks ``(T, B, M)``, ``e_t = sqrt(h_t) shock_t``.

    ``h_{t+1} = omega dt + alpha e_t^2 + beta h_t = omega dt + (alpha shock_t^2 + beta) h_t``, started at
    the unconditional level and capped at ``max_variance_multiple`` times it.

    The cap rarely binds, so the recursion first runs without it (two float32 ops a step instead of
    three); the paths that exceed it are then rerun with the cap from their first step above it. Up
    to that step the minimum is a no-op, so the result is bit-identical to capping every step.
    """
    omega, alpha, beta, h_bar, h_cap = params
    # on flat (T, B * M) rows with tiled constants: (M,) operands would give 5-long inner loops
    steps, b, m = shock.shape
    flat = shock.reshape(steps, b * m)
    growth = np.multiply(np.tile(alpha, b), flat)
    growth *= flat
    growth += np.tile(beta, b)
    growth = growth.reshape(steps, b, m)
    var = np.empty(growth.shape, dtype=_F)
    var[0] = h_bar
    with np.errstate(over="ignore"):  # uncapped overflow is found below and recomputed
        _variance_steps(var, growth, omega, None, 1)
    rows = np.flatnonzero((var[1:].max(axis=0) > h_cap).any(axis=1))
    if rows.size:
        start = 1 + int(np.argmax((var[1:, rows] > h_cap).any(axis=(1, 2))))
        sub = np.take(var, rows, axis=1)  # C-contiguous copies (var[:, rows] may not be)
        np.minimum(sub[start], h_cap, out=sub[start])
        _variance_steps(sub, np.take(growth, rows, axis=1), omega, h_cap, start + 1)
        var[:, rows] = sub
    return var


def _variance_steps(
    var: np.ndarray, growth: np.ndarray, omega: np.ndarray, cap: np.ndarray | None, start: int
) -> None:
    """In place, for ``t >= start``: ``var[t] = growth[t-1] var[t-1] + omega`` (then ``min(., cap)``).

    ``var`` and ``growth`` are ``(T, B, M)`` C-contiguous, ``omega`` and ``cap`` ``(M,)``. The steps
    run on flat ``(B * M,)`` rows with pre-tiled constants: numpy's per-call overhead is about half
    of that for 2-D operands that broadcast, and the call overhead is most of a step's cost.
    """
    steps, b, m = var.shape
    if not var.flags.c_contiguous:  # reshape would write into a copy
        raise ValueError("var must be C-contiguous")
    flat_var = var.reshape(steps, b * m)
    flat_growth = growth.reshape(steps, b * m)
    rows = zip(flat_growth[start - 1 : -1], flat_var[start - 1 : -1], flat_var[start:], strict=True)
    omega = np.tile(omega, b)
    multiply, add = np.multiply, np.add
    if cap is None:
        for g, prev, nxt in rows:
            multiply(g, prev, nxt)
            add(nxt, omega, nxt)
        return
    cap, minimum = np.tile(cap, b), np.minimum
    for g, prev, nxt in rows:
        multiply(g, prev, nxt)
        add(nxt, omega, nxt)
        minimum(nxt, cap, out=nxt)


def _add_jumps(returns: np.ndarray, model: SyntheticModel, reg: np.ndarray, u: np.ndarray) -> None:
    """Add the jumps' log returns to time-major ``returns[..., :N]`` ``(L, B, M)`` float32, in place.

    Args:
        reg: ``(B, L)`` regimes; u: ``(B, L, 4 + N)`` uniforms (batch-major, as drawn: the event
            masks are found in memory order, then only the events' cells of ``returns`` are touched).
    """
    n = len(model.assets)
    mean, std = model.jump_mean, model.jump_std
    p_common = np.take(model.p_common, reg)
    u_idio = u[..., _N_U_FIXED : _N_U_FIXED + n]
    common = u[..., _U_COMMON] < p_common
    events = b, t = np.nonzero(common)
    if b.size:
        u_event = u[b, t]  # (events, 4 + N)
        factor = ndtri(np.clip(u_event[:, _U_COMMON] / p_common[b, t], _EPS_U, 1 - _EPS_U))
        own = ndtri(np.clip(u_event[:, _N_U_FIXED : _N_U_FIXED + n], _EPS_U, 1 - _EPS_U))
        rho = model.size_correlation
        xi = np.sqrt(rho) * factor[:, None] + np.sqrt(1.0 - rho) * own
        returns[t, b, :n] += mean + std * xi
    p_idio = np.take(model.p_idio, reg)
    idio = u_idio < p_idio[..., None]
    idio[events] = False  # a common event already moved every asset
    b, t, col = np.nonzero(idio)
    if b.size:
        xi = ndtri(np.clip(u_idio[b, t, col] / p_idio[b, t], _EPS_U, 1 - _EPS_U))
        returns[t, b, col] += mean[col] + std[col] * xi


def generate_synthetic_paths(
    cfg: MarketConfig, seeds: np.ndarray, length: int, warmup: int
) -> MarketPaths:
    """Simulate ``len(seeds)`` market paths of ``length`` points (``warmup`` of them history).

    Returns:
        :class:`MarketPaths` with ``close/high/low`` ``(B, length, N)`` float64 and the other arrays
        ``(B, length)``; ``close[:, 0]`` equals ``synthetic.initial_price_usd``.
    """
    seeds = check_sample_request(seeds, length, warmup)
    model = model_of(cfg)
    p = cfg.synthetic
    n, burn = len(model.assets), p.burn_in_steps
    d = _Draws(seeds, burn + length, length, n, model.n_shocks, p.nu)
    reg = simulate_regimes(d.u[:, :, _U_REGIME], model.transition, model.initial)
    regime = reg[:, burn:]
    # time-major (L, B, M) while the recursions over time run (on contiguous rows)
    returns, vol, var = _log_returns(model, d, reg, p.nu, burn)
    _add_jumps(returns, model, regime, d.u[:, burn:])
    close_all = _prices(returns, model.log_p0)
    close = _batch_major(close_all[..., :n])
    r = _batch_major(returns[..., :n])
    vol = _batch_major(vol[..., :n])
    up, down = bridge_extremes(r, p.range_scale * vol, d.e[:, :, :n], d.e[:, :, n:])
    # open = previous close = close * exp(-r), so high = close * exp(up - r) (exp in float32)
    high = np.multiply(close, np.exp(np.subtract(up, r, out=up), out=up))
    low = np.multiply(close, np.exp(np.subtract(down, r, out=down), out=down))
    np.maximum(high, close, out=high)
    np.minimum(low, close, out=low)
    np.maximum(high[:, 1:], close[:, :-1], out=high[:, 1:])  # exact bar bounds despite float32
    np.minimum(low[:, 1:], close[:, :-1], out=low[:, 1:])
    depth, gwei = liquidity_and_gas(
        regime,
        cfg.liquidity,
        cfg.gas,
        cfg.step_days,
        d.z[:, :, _Z_DEPTH],
        d.z[:, :, _Z_GAS],
        d.u[:, burn:, _U_SPIKE],
    )
    numeraire = _numeraire_path(cfg, regime, d.u[:, burn:, _U_DEPEG], d.z[:, :, _Z_PEG])
    return MarketPaths(
        asset_names=model.assets,
        close=close,
        high=high,
        low=low,
        numeraire_usd=numeraire,
        regime=np.ascontiguousarray(regime),
        regime_names=REGIME_NAMES,
        depth_multiplier=depth,
        gas_price_gwei=gwei,
        eth_usd=_batch_major(close_all[..., model.eth_column]),
        warmup=int(warmup),
        step_days=cfg.step_days,
        cond_var=_batch_major(var[..., :n]),
    )


def _log_returns(
    model: SyntheticModel, d: _Draws, reg: np.ndarray, nu: float, burn: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Diffusive log returns plus the drift, the steps' diffusive vols and their GARCH variances ``h``
    (before the regime's vol multiplier), time-major ``(L, B, M)`` float32. ``reg`` is ``(B, T)`` over
    burn-in and path; the first ``burn`` steps only warm up the GARCH.

    The drift is ``mean_step[k_t]`` plus, for the arithmetic and sharpe kinds, ``vol_coef s_t - s_t^2 / 2``
    with ``s_t = vm[k_t] sqrt(h_t)`` (:class:`defialloc.envs.market.synthetic_model.DriftTerms`).
    """
    vm = model.vol_multiplier[reg].T
    # Multivariate t with unit variance (shared chi2 mixing), times the regime's vol multiplier.
    shock = _correlated_shocks(d.z_diff, reg, model.chol)
    shock *= (np.sqrt((nu - 2.0) / np.maximum(2.0 * d.gamma.T, 1e-12)) * vm)[:, :, None]
    var = _garch_variance(shock, model.garch)[burn:]
    vol = np.sqrt(var)  # the same float32 sqrt as before var was kept: prices are unchanged
    returns = vol * shock[burn:]
    returns += np.take(model.mean_step, reg[:, burn:].T, axis=0)
    vol *= vm[burn:, :, None]  # the step's diffusive vol s_t, for the drift and the high/low bridge
    if model.drift.kind != "log":  # the log kind's drift is regime-only (and its paths unchanged)
        # variance-dependent drift vol_coef s - var_coef s^2 (float32 elementwise: batch-independent)
        extra = np.multiply(vol, -model.drift_var_coef)
        extra += model.drift_vol_coef
        extra *= vol
        returns += extra
    return returns, vol, var


def _prices(returns: np.ndarray, log_p0: np.ndarray) -> np.ndarray:
    """``(L, B, M)`` float64 prices: point 0 at ``exp(log_p0)``, then the float32 ``returns`` summed in
    float64 (the return of step ``t`` moves the price from ``t - 1`` to ``t``; ``returns[0]`` unused).

    Same sums as ``cumsum(returns[1:], axis=0, dtype=float64) + log_p0``; for wide rows a loop over
    time, as numpy's cumsum along the outer axis walks each column separately (~15x slower).
    """
    log_close = np.empty(returns.shape, dtype=np.float64)
    log_close[0] = log_p0
    cum = log_close[1:]
    if returns[0].size < _LOOP_MIN_ROW:
        np.cumsum(returns[1:], axis=0, dtype=np.float64, out=cum)
    else:
        cum[0] = returns[1]
        add = np.add
        for r, prev, nxt in zip(returns[2:], cum[:-1], cum[1:], strict=True):
            add(prev, r, nxt)
    flat = cum.reshape(len(cum), -1)
    flat += np.tile(log_p0, flat.shape[1] // len(log_p0))  # tiled: no 5-long inner loops
    return np.exp(log_close, out=log_close)


def _batch_major(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of time-major ``x`` ``(L, B, ...)`` with the first two axes swapped."""
    return np.ascontiguousarray(np.swapaxes(x, 0, 1))


def _numeraire_path(
    cfg: MarketConfig, reg: np.ndarray, u_depeg: np.ndarray, z_peg: np.ndarray
) -> np.ndarray:
    """``(B, L)`` float64 USD price of the numeraire: decaying depeg dips times a small peg noise."""
    dp = cfg.synthetic.depeg
    dt = cfg.step_days
    noise = np.exp(dp.noise_bps * 1e-4 * z_peg.astype(np.float64))
    p_event = (-np.expm1(-dp.intensity_per_year.array() * dt / DAYS_PER_YEAR))[reg]
    event = u_depeg < p_event
    rows = np.flatnonzero(event.any(axis=1))
    if not rows.size:
        return noise
    # only paths with an event: elsewhere D = 0 and (1 - D) * noise is noise itself
    event, u_depeg, p_event = event[rows], u_depeg[rows], p_event[rows]
    depth = np.zeros(event.shape)
    depth[event] = dp.depth_min + (dp.depth_max - dp.depth_min) * (u_depeg[event] / p_event[event])
    # D_t = max_{s<=t} d_s decay^(t-s): a running max in log space (no time loop).
    log_decay = -np.log(2.0) * dt / dp.half_life_days
    t_idx = np.arange(reg.shape[1])
    with np.errstate(divide="ignore"):
        log_d = np.log(depth) - log_decay * t_idx
    deviation = np.exp(np.maximum.accumulate(log_d, axis=1) + log_decay * t_idx)
    noise[rows] *= 1.0 - deviation
    return noise
