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
  idiosyncratic intensity. ``m_a < 0``: jumps are biased down.
* High/low: the exact maximum/minimum of a Brownian bridge from 0 to ``r_t`` with the step's diffusive
  vol (times ``range_scale``): ``(r + sqrt(r^2 + 2 s^2 E)) / 2``, ``E ~ Exp(1)``, so
  ``low <= min(open, close)`` and ``high >= max(open, close)`` with open = previous close.
* Numeraire: deviation ``D_t = max(D_{t-1} 2^(-dt/half_life), d_t)`` where ``d_t > 0`` on depeg events;
  ``numeraire_usd = (1 - D_t) exp(noise)``.
* Depth and gas: per-regime levels times lognormal AR(1) factors; gas spikes with a per-regime probability.

Determinism: path ``b`` is a function of ``seeds[b]`` only. Each path draws its random numbers from
``np.random.default_rng(seeds[b])`` in a fixed order and shape (independent of the batch size); the time
recursions then run vectorized over paths (loop over time, arrays ``(B, N)``).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from envs.market.config import (
    DAYS_PER_YEAR,
    REGIME_NAMES,
    GasParams,
    LiquidityParams,
    MarketConfig,
    check_sample_request,
)
from envs.market.paths import MarketPaths

# Column layout of each path's uniform block U (T, 6 + 3N) and normal block Z (T, 2N + 5).
_U_REGIME, _U_COMMON, _U_DEPEG, _U_DEPEG_DEPTH, _U_GAS_SPIKE, _U_SPIKE_SIZE = range(6)
_N_U_FIXED = 6
_Z_COMMON_FACTOR, _Z_GAS, _Z_DEPTH, _Z_PEG, _Z_ETH = range(5)
_N_Z_FIXED = 5


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
    """Regime chains from uniforms.

    Args:
        u: ``(B, T)`` uniforms in [0, 1); ``u[:, 0]`` draws the initial regime from ``initial``.
        transition: ``(K, K)`` per-step transition matrix; ``initial``: ``(K,)`` law of the first regime.

    Returns:
        ``(B, T)`` int64 regime codes.
    """
    k = len(initial)
    cum = np.cumsum(transition, axis=1)
    cum[:, -1] = 1.0
    # next_state[b, t, i]: the regime at t if the regime at t-1 was i (searchsorted per row, vectorized)
    next_state = (u[:, :, None, None] >= cum[None, None, :, :-1]).sum(axis=-1)
    cum0 = np.cumsum(initial)
    reg = np.empty(u.shape, dtype=np.int64)
    reg[:, 0] = np.minimum((u[:, 0, None] >= cum0[None, :-1]).sum(axis=-1), k - 1)
    rows = np.arange(u.shape[0])
    for t in range(1, u.shape[1]):
        reg[:, t] = next_state[rows, t, reg[:, t - 1]]
    return reg


def _ar1_log_factor(z: np.ndarray, std: float, phi: float) -> np.ndarray:
    """Stationary AR(1) ``y_t = phi y_{t-1} + std sqrt(1 - phi^2) z_t`` along axis 1 with ``y_0 = std z_0``."""
    y = np.empty_like(z)
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
    u_spike_size: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Depth multiplier and gas price (gwei) of regime paths.

    Args:
        regime: ``(B, L)`` regime codes.
        z_depth, z_gas: ``(B, L)`` standard normals of the lognormal AR(1) factors; None: no noise.
        u_spike, u_spike_size: ``(B, L)`` uniforms for gas spikes; None: no spikes (deterministic levels,
            as used by replay).

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
    if u_spike is not None and u_spike_size is not None:
        p_spike = 1.0 - (1.0 - gas.spike_probability.array()) ** step_days
        lo, hi = np.log(gas.spike_multiplier_min), np.log(gas.spike_multiplier_max)
        spike = np.where(u_spike < p_spike[regime], np.exp(lo + (hi - lo) * u_spike_size), 1.0)
        gwei = gwei * spike
    return depth, gwei


def _draw(seeds: np.ndarray, steps: int, n_u: int, n_z: int, nu: float) -> tuple[np.ndarray, ...]:
    """Per-path random blocks in a fixed order: U ``(B, T, n_u)``, Z ``(B, T, n_z)``, chi2 ``(B, T)``."""
    b = len(seeds)
    u = np.empty((b, steps, n_u))
    z = np.empty((b, steps, n_z))
    chi2 = np.empty((b, steps))
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        rng.random(out=u[i])
        rng.standard_normal(out=z[i])
        chi2[i] = 2.0 * rng.standard_gamma(0.5 * nu, size=steps)
    return u, z, chi2


def bridge_extremes(
    step_return: np.ndarray, vol: np.ndarray, u_high: np.ndarray, u_low: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Log max and log min (relative to the open) of a Brownian bridge from 0 to ``step_return``.

    ``P(max > m) = exp(-2 m (m - r) / s^2)`` for ``m >= max(0, r)``; inverting with ``E = -log(1 - u)``
    gives ``m = (r + sqrt(r^2 + 2 s^2 E)) / 2`` (and symmetrically for the min). Arrays broadcast.
    """
    q = 2.0 * vol * vol
    up = 0.5 * (step_return + np.sqrt(step_return * step_return - q * np.log1p(-u_high)))
    down = 0.5 * (step_return - np.sqrt(step_return * step_return - q * np.log1p(-u_low)))
    return up, down


def generate_synthetic_paths(cfg: MarketConfig, seeds: np.ndarray, length: int, warmup: int) -> MarketPaths:
    """Simulate ``len(seeds)`` market paths of ``length`` points (``warmup`` of them history).

    Returns:
        :class:`MarketPaths` with ``close/high/low`` ``(B, length, N)``, the rest ``(B, length)``.
    """
    seeds = check_sample_request(seeds, length, warmup)
    p = cfg.synthetic
    assets = list(cfg.assets)
    n = len(assets)
    dt = cfg.step_days
    has_eth = "ETH" in assets
    burn = p.burn_in_steps
    steps = burn + length
    b = len(seeds)

    u, z, chi2 = _draw(seeds, steps, _N_U_FIXED + 3 * n, _N_Z_FIXED + 2 * n, p.nu)
    u_idio = u[:, :, _N_U_FIXED : _N_U_FIXED + n]
    u_high = u[:, burn:, _N_U_FIXED + n : _N_U_FIXED + 2 * n]
    u_low = u[:, burn:, _N_U_FIXED + 2 * n :]
    z_diff = z[:, :, _N_Z_FIXED : _N_Z_FIXED + n]
    z_jump = z[:, :, _N_Z_FIXED + n :]

    transition = step_transition(p.transition_array(), dt)
    reg = simulate_regimes(u[:, :, _U_REGIME], transition, p.stationary_distribution())

    # Correlated multivariate-t shocks with unit variance; columns: assets (+ ETH fallback, uncorrelated).
    chol = np.linalg.cholesky(p.correlation.matrices(assets) + 1e-12 * np.eye(n))
    eps = np.empty((b, steps, n + (0 if has_eth else 1)))
    for k in range(len(REGIME_NAMES)):
        mask = reg == k
        eps[mask, :n] = z_diff[mask] @ chol[k].T
    if not has_eth:
        eps[:, :, n] = z[:, :, _Z_ETH]
    eps *= np.sqrt((p.nu - 2.0) / chi2)[:, :, None]
    eps *= p.vol_multiplier.array()[reg][:, :, None]

    garch = [p.garch[a] for a in assets] + ([] if has_eth else [p.eth_fallback.garch])
    omega = np.array([g.omega_daily for g in garch]) * dt
    alpha = np.array([g.alpha for g in garch])
    beta = np.array([g.beta for g in garch])
    h_bar = omega / (1.0 - alpha - beta)
    h_cap = p.max_variance_multiple * h_bar
    # e_t^2 = h_t eps_t^2 is known up to h_t, so h_{t+1} = omega + (alpha eps_t^2 + beta) h_t.
    growth = alpha * eps * eps + beta
    var = np.empty_like(eps)
    h = np.broadcast_to(h_bar, (b, len(h_bar))).copy()
    for t in range(steps):
        var[:, t] = h
        h = omega + growth[:, t] * h
        np.minimum(h, h_cap, out=h)
    step_vol = np.sqrt(var) * p.vol_multiplier.array()[reg][:, :, None]
    returns = np.sqrt(var) * eps
    returns += (p.drift_log_per_year.array() * dt / DAYS_PER_YEAR)[reg][:, :, None]

    # Jumps: one common event for all assets, or idiosyncratic ones; at most one per asset and step.
    jp = p.jumps
    to_prob = dt / DAYS_PER_YEAR
    p_common = -np.expm1(-jp.common_intensity_per_year.array() * to_prob)[reg]
    p_idio = -np.expm1(-jp.idio_intensity_per_year.array() * to_prob)[reg]
    mean_j = np.array([jp.mean_log[a] for a in assets])
    std_j = np.array([jp.std_log[a] for a in assets])
    rho = jp.size_correlation
    common = u[:, :, _U_COMMON] < p_common
    xi = np.where(
        common[:, :, None],
        np.sqrt(rho) * z[:, :, _Z_COMMON_FACTOR, None] + np.sqrt(1.0 - rho) * z_jump,
        z_jump,
    )
    jumped = common[:, :, None] | (u_idio < p_idio[:, :, None])
    returns[:, :, :n] += np.where(jumped, mean_j + std_j * xi, 0.0)

    # Output window: points burn .. steps-1; point 0 is priced at initial_price_usd.
    out_ret = returns[:, burn:]
    log_p0 = np.log(np.array([p.initial_price_usd[a] for a in assets] + ([] if has_eth else [p.eth_fallback.initial_price_usd])))
    log_close = np.empty_like(out_ret)
    log_close[:, 0] = log_p0
    np.cumsum(out_ret[:, 1:], axis=1, out=log_close[:, 1:])
    log_close[:, 1:] += log_p0
    close_all = np.exp(log_close)
    close = close_all[:, :, :n]
    up, down = bridge_extremes(out_ret[:, :, :n], p.range_scale * step_vol[:, burn:, :n], u_high, u_low)
    prev = log_close[:, :, :n] - out_ret[:, :, :n]
    high = np.maximum(np.exp(prev + up), close)
    low = np.minimum(np.exp(prev + down), close)
    eth_usd = close[:, :, assets.index("ETH")] if has_eth else close_all[:, :, n]

    regime = reg[:, burn:]
    depth, gwei = liquidity_and_gas(
        regime,
        cfg.liquidity,
        cfg.gas,
        dt,
        z[:, burn:, _Z_DEPTH],
        z[:, burn:, _Z_GAS],
        u[:, burn:, _U_GAS_SPIKE],
        u[:, burn:, _U_SPIKE_SIZE],
    )
    numeraire = _numeraire_path(cfg, reg, u, z)[:, burn:]
    return MarketPaths(
        asset_names=tuple(assets),
        close=close,
        high=high,
        low=low,
        numeraire_usd=numeraire,
        regime=regime.astype(np.int8),
        regime_names=REGIME_NAMES,
        depth_multiplier=depth,
        gas_price_gwei=gwei,
        eth_usd=np.ascontiguousarray(eth_usd),
        warmup=int(warmup),
        step_days=dt,
    )


def _numeraire_path(cfg: MarketConfig, reg: np.ndarray, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``(B, T)`` USD price of the numeraire: decaying depeg dips times small peg noise."""
    dp = cfg.synthetic.depeg
    dt = cfg.step_days
    p_event = -np.expm1(-dp.intensity_per_year.array() * dt / DAYS_PER_YEAR)[reg]
    event = u[:, :, _U_DEPEG] < p_event
    noise = np.exp(dp.noise_bps * 1e-4 * z[:, :, _Z_PEG])
    if not event.any():
        return noise
    depth = dp.depth_min + (dp.depth_max - dp.depth_min) * u[:, :, _U_DEPEG_DEPTH]
    # D_t = max_s<=t d_s decay^(t-s): a running max in log space (vectorized, no time loop).
    log_decay = -np.log(2.0) * dt / dp.half_life_days
    t_idx = np.arange(reg.shape[1])
    with np.errstate(divide="ignore"):
        log_d = np.where(event, np.log(np.where(event, depth, 1.0)), -np.inf) - log_decay * t_idx
    deviation = np.exp(np.maximum.accumulate(log_d, axis=1) + log_decay * t_idx)
    return (1.0 - deviation) * noise
