"""Synthetic market: Markov regimes x per-asset GARCH(1,1) x multivariate Student-t x co-jumps.

Model of one path (all returns are log returns; ``dt = step_days``; regime ``k_t`` in calm/bull/crash):

* ``k_t`` is a Markov chain with per-step transition matrix ``P_daily^dt`` (see :func:`step_transition`).
  ``regime[t]`` is the regime of the step that ends at ``t`` (the same meaning as the replay label at
  ``t``); it also sets the pool depth and the gas price at ``t``.
* ``r_t = mu[k_t] dt + e_t + J_t`` with diffusive shock ``e_t = vm[k_t] sqrt(h_t) x_t`` and
  ``h_{t+1} = omega dt + alpha e_t^2 + beta h_t`` per asset (capped at ``max_variance_multiple`` times
  its unconditional level). ``x_t`` is multivariate Student-t with unit variance:
  ``x = C[k_t] z sqrt((nu - 2) / V)``, ``z ~ N(0, I)``, ``V ~ chi2(nu)`` shared by the assets, so the
  correlation is exactly ``C C^T`` and large moves are joint (tail dependence).
* ``J_t``: with probability ``1 - exp(-lambda_common[k_t] dt / 365)`` a common event moves every asset by
  ``m_a + s_a (sqrt(rho) f + sqrt(1 - rho) xi_a)``; otherwise each asset jumps on its own with the
  idiosyncratic intensity. ``m_a < 0``: jumps are biased down (negative skew). Jumps are compensated
  (``J_t`` includes ``- P(jump | k_t) m_a``), so ``mu[k]`` is every asset's expected log return in
  regime ``k`` and the regime's jump risk adds skew, not a predictable drift.
* High/low: the exact maximum/minimum of a Brownian bridge from 0 to ``r_t`` with the step's diffusive
  vol (times ``range_scale``): ``(r + sqrt(r^2 + 2 s^2 E)) / 2``, ``E ~ Exp(1)``, so
  ``low <= min(open, close)`` and ``high >= max(open, close)`` with open = previous close.
* Numeraire: deviation ``D_t = max(D_{t-1} 2^(-dt/half_life), d_t)`` where ``d_t > 0`` on depeg events
  (``D = 0`` at point 0); ``numeraire_usd = (1 - D_t) exp(noise)``.
* Depth and gas: per-regime levels times lognormal AR(1) factors; gas spikes with a per-regime probability.

Determinism: path ``b`` is a function of ``seeds[b]`` only. Each path draws its random numbers from
``np.random.default_rng(seeds[b])`` in a fixed order and shape (independent of the batch size); the time
recursions then run vectorized over paths (loop over time, arrays ``(B, N)``).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtri

from envs.market.config import (
    DAYS_PER_YEAR,
    REGIME_NAMES,
    GarchParams,
    GasParams,
    LiquidityParams,
    MarketConfig,
    check_sample_request,
)
from envs.market.paths import MarketPaths

# Blocks drawn per path (T = burn-in + L steps): uniforms U (T, 4 + N); diffusion normals (T, N [+1 for
# the ETH fallback]); normals Z (L, 3) for gas, depth and peg noise; exponentials E (L, 2N) for the
# high/low bridges; gammas G (T,) for the Student-t mixing. Jump sizes, spike sizes and depeg depths reuse
# the event uniform (u / p is uniform given u < p), so rare events cost no extra draws.
_U_REGIME, _U_COMMON, _U_DEPEG, _U_SPIKE = range(4)
_N_U_FIXED = 4
_Z_GAS, _Z_DEPTH, _Z_PEG = range(3)
_F = np.float32  # random blocks and shocks; prices are accumulated in float64
_EPS_U = 1e-7  # keeps inverse-CDF arguments inside (0, 1) despite float32 rounding


def step_transition(transition_daily: np.ndarray, step_days: float) -> np.ndarray:
    """``(3, 3)`` per-step transition matrix for a step of ``step_days`` days.

    Integer steps use the exact matrix power; a fractional remainder ``f`` uses ``I + f (P - I)`` (a valid
    stochastic matrix with the same stationary law, exact to first order in ``f``).
    """
    whole = int(np.floor(step_days + 1e-12))
    frac = step_days - whole
    out = np.linalg.matrix_power(transition_daily, whole)
    if frac > 1e-12:
        eye = np.eye(len(transition_daily))
        out = out @ (eye + frac * (transition_daily - eye))
    return out / out.sum(axis=1, keepdims=True)


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
    reg = np.empty(ut.shape, dtype=np.int8)
    cur = np.searchsorted(np.cumsum(initial)[:-1], ut[0], side="right").astype(np.intp)
    reg[0] = cur
    cols = np.arange(u.shape[0])
    for t in range(1, ut.shape[0]):
        cur = next_state[t][cur, cols]
        reg[t] = cur
    return np.ascontiguousarray(reg.T)


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
    """``(B, T, M)`` shocks ``x_i = sum_{j<=i} L[k]_ij z_j`` for the first ``N`` columns (``chol``
    ``(3, N, N)``), independent ``z`` for the rest; ``z`` is ``(B, M, T)``, ``reg`` ``(B, T)``.

    Elementwise ops only (small-table gathers): BLAS kernels may round differently with the batch
    size, which would break the batch-independence of each path.
    """
    b, m, steps = z.shape
    n = chol.shape[1]
    shock = np.empty((b, steps, m), dtype=_F)
    for i in range(n):
        acc = chol[:, i, 0][reg] * z[:, 0]
        for j in range(1, i + 1):
            acc += chol[:, i, j][reg] * z[:, j]
        shock[:, :, i] = acc
    for i in range(n, m):
        shock[:, :, i] = z[:, i]
    return shock


def _garch_variance(
    shock: np.ndarray, garch: list[GarchParams], dt: float, cap: float
) -> np.ndarray:
    """``(B, T, M)`` conditional variances ``h_t`` for shocks ``e_t = sqrt(h_t) shock_t``.

    ``h_{t+1} = omega dt + alpha e_t^2 + beta h_t = omega dt + (alpha shock_t^2 + beta) h_t``, started at
    the unconditional level and capped at ``cap`` times it.
    """
    omega = (np.array([g.omega_daily for g in garch]) * dt).astype(_F)
    alpha = np.array([g.alpha for g in garch], dtype=_F)
    beta = np.array([g.beta for g in garch], dtype=_F)
    h_bar = omega / (1 - alpha - beta)
    h_cap = (cap * h_bar).astype(_F)
    growth = alpha * shock * shock + beta
    var = np.empty_like(shock)
    h = np.broadcast_to(h_bar, shock[:, 0].shape).copy()
    for t in range(shock.shape[1]):
        var[:, t] = h
        np.multiply(growth[:, t], h, out=h)
        h += omega
        np.minimum(h, h_cap, out=h)
    return var


def _add_jumps(returns: np.ndarray, cfg: MarketConfig, reg: np.ndarray, u: np.ndarray) -> None:
    """Add the jumps' log returns to ``returns[:, :, :N]`` in place, at event positions only.

    Args:
        returns: ``(B, L, M)`` float32; ``reg``: ``(B, L)`` regimes; ``u``: ``(B, L, 4 + N)`` uniforms.
    """
    jp = cfg.synthetic.jumps
    n = len(cfg.assets)
    mean = np.array([jp.mean_log[a] for a in cfg.assets], dtype=_F)
    std = np.array([jp.std_log[a] for a in cfg.assets], dtype=_F)
    p_common = _jump_probability(jp.common_intensity_per_year.array(), cfg.step_days)[reg]
    p_idio = _jump_probability(jp.idio_intensity_per_year.array(), cfg.step_days)[reg]
    u_common = u[:, :, _U_COMMON]
    u_idio = u[:, :, _N_U_FIXED : _N_U_FIXED + n]
    asset_returns = returns[:, :, :n]
    common = u_common < p_common
    if common.any():
        factor = ndtri(np.clip(u_common[common] / p_common[common], _EPS_U, 1 - _EPS_U))
        own = ndtri(np.clip(u_idio[common], _EPS_U, 1 - _EPS_U))
        rho = jp.size_correlation
        xi = np.sqrt(rho) * factor[:, None] + np.sqrt(1.0 - rho) * own
        asset_returns[common] += mean + std * xi
    idio = (u_idio < p_idio[:, :, None]) & ~common[:, :, None]
    if idio.any():
        col = np.nonzero(idio)[2]
        p_hit = np.broadcast_to(p_idio[:, :, None], idio.shape)[idio]
        xi = ndtri(np.clip(u_idio[idio] / p_hit, _EPS_U, 1 - _EPS_U))
        asset_returns[idio] += mean[col] + std[col] * xi


def _jump_probability(intensity_per_year: np.ndarray, step_days: float) -> np.ndarray:
    """``(3,)`` float32 probability of at least one Poisson event in a step."""
    return (-np.expm1(-intensity_per_year * step_days / DAYS_PER_YEAR)).astype(_F)


def _mean_step_return(cfg: MarketConfig, n_columns: int) -> np.ndarray:
    """``(3, M)`` expected log return per step and regime, net of the jump compensator.

    Column ``a < N``: ``drift_k dt / 365 - P_k(jump) mean_log[a]`` (at most one jump per asset and step,
    ``P = p_common + (1 - p_common) p_idio``); an ETH fallback column gets the drift only.
    """
    p = cfg.synthetic
    drift = p.drift_log_per_year.array() * cfg.step_days / DAYS_PER_YEAR
    p_common = _jump_probability(p.jumps.common_intensity_per_year.array(), cfg.step_days)
    p_idio = _jump_probability(p.jumps.idio_intensity_per_year.array(), cfg.step_days)
    p_jump = p_common.astype(np.float64) + (1 - p_common) * p_idio
    mean = np.zeros(n_columns)
    mean[: len(cfg.assets)] = [p.jumps.mean_log[a] for a in cfg.assets]
    return (drift[:, None] - p_jump[:, None] * mean[None, :]).astype(_F)


def generate_synthetic_paths(
    cfg: MarketConfig, seeds: np.ndarray, length: int, warmup: int
) -> MarketPaths:
    """Simulate ``len(seeds)`` market paths of ``length`` points (``warmup`` of them history).

    Returns:
        :class:`MarketPaths` with ``close/high/low`` ``(B, length, N)`` float64 and the other arrays
        ``(B, length)``; ``close[:, 0]`` equals ``synthetic.initial_price_usd``.
    """
    seeds = check_sample_request(seeds, length, warmup)
    p = cfg.synthetic
    assets = list(cfg.assets)
    n = len(assets)
    dt = cfg.step_days
    has_eth = "ETH" in assets
    burn = p.burn_in_steps
    m = n if has_eth else n + 1  # shock columns: the assets (+ the ETH fallback's own shock)
    d = _Draws(seeds, burn + length, length, n, m, p.nu)

    transition = step_transition(p.transition_array(), dt)
    reg = simulate_regimes(d.u[:, :, _U_REGIME], transition, p.stationary_distribution())
    vm = p.vol_multiplier.array().astype(_F)[reg]
    # Multivariate t with unit variance (shared chi2 mixing), times the regime's vol multiplier.
    chol = np.linalg.cholesky(p.correlation.matrices(assets) + 1e-12 * np.eye(n)).astype(_F)
    shock = _correlated_shocks(d.z_diff, reg, chol)
    shock *= (np.sqrt((p.nu - 2.0) / np.maximum(2.0 * d.gamma, 1e-12)) * vm)[:, :, None]
    garch = [p.garch[a] for a in assets] + ([] if has_eth else [p.eth_fallback.garch])
    vol = np.sqrt(_garch_variance(shock, garch, dt, p.max_variance_multiple)[:, burn:])
    regime = reg[:, burn:]
    returns = vol * shock[:, burn:]
    returns += _mean_step_return(cfg, m)[regime]
    _add_jumps(returns, cfg, regime, d.u[:, burn:])
    vol *= vm[:, burn:, None]  # the step's diffusive vol, for the high/low bridge

    # Point 0 is priced at initial_price_usd; the return of step t moves the price from t-1 to t.
    p0 = [p.initial_price_usd[a] for a in assets]
    p0 += [] if has_eth else [p.eth_fallback.initial_price_usd]
    log_close = np.empty(returns.shape, dtype=np.float64)
    log_close[:, 0] = np.log(p0)
    np.cumsum(returns[:, 1:], axis=1, dtype=np.float64, out=log_close[:, 1:])
    log_close[:, 1:] += log_close[:, :1]
    close_all = np.exp(log_close)
    close = np.ascontiguousarray(close_all[:, :, :n])
    r = returns[:, :, :n]
    up, down = bridge_extremes(r, p.range_scale * vol[:, :, :n], d.e[:, :, :n], d.e[:, :, n:])
    # open = previous close = close * exp(-r), so high = close * exp(up - r) (exp in float32)
    high = np.maximum(close * np.exp(up - r), close)
    low = np.minimum(close * np.exp(down - r), close)
    np.maximum(high[:, 1:], close[:, :-1], out=high[:, 1:])  # exact bar bounds despite float32
    np.minimum(low[:, 1:], close[:, :-1], out=low[:, 1:])
    eth_usd = close[:, :, assets.index("ETH")] if has_eth else close_all[:, :, n]
    depth, gwei = liquidity_and_gas(
        regime,
        cfg.liquidity,
        cfg.gas,
        dt,
        d.z[:, :, _Z_DEPTH],
        d.z[:, :, _Z_GAS],
        d.u[:, burn:, _U_SPIKE],
    )
    numeraire = _numeraire_path(cfg, regime, d.u[:, burn:, _U_DEPEG], d.z[:, :, _Z_PEG])
    return MarketPaths(
        asset_names=tuple(assets),
        close=close,
        high=high,
        low=low,
        numeraire_usd=numeraire,
        regime=np.ascontiguousarray(regime),
        regime_names=REGIME_NAMES,
        depth_multiplier=depth,
        gas_price_gwei=gwei,
        eth_usd=np.ascontiguousarray(eth_usd),
        warmup=int(warmup),
        step_days=dt,
    )


def _numeraire_path(
    cfg: MarketConfig, reg: np.ndarray, u_depeg: np.ndarray, z_peg: np.ndarray
) -> np.ndarray:
    """``(B, L)`` float64 USD price of the numeraire: decaying depeg dips times a small peg noise."""
    dp = cfg.synthetic.depeg
    dt = cfg.step_days
    noise = np.exp(dp.noise_bps * 1e-4 * z_peg.astype(np.float64))
    p_event = (-np.expm1(-dp.intensity_per_year.array() * dt / DAYS_PER_YEAR))[reg]
    event = u_depeg < p_event
    if not event.any():
        return noise
    depth = np.zeros(reg.shape)
    depth[event] = dp.depth_min + (dp.depth_max - dp.depth_min) * (u_depeg[event] / p_event[event])
    # D_t = max_{s<=t} d_s decay^(t-s): a running max in log space (no time loop).
    log_decay = -np.log(2.0) * dt / dp.half_life_days
    t_idx = np.arange(reg.shape[1])
    with np.errstate(divide="ignore"):
        log_d = np.log(depth) - log_decay * t_idx
    deviation = np.exp(np.maximum.accumulate(log_d, axis=1) + log_decay * t_idx)
    return (1.0 - deviation) * noise
