"""The synthetic generator's constants for one market config, derived once and cached.

A single-env reset would otherwise spend ~15 % of its time re-deriving them from the pydantic model
(:mod:`defialloc.envs.market.synthetic` is the generator; its docstring has the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from defialloc.envs.market.config import DAYS_PER_YEAR, MarketConfig

F32 = np.float32  # random blocks and shocks; prices are accumulated in float64


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


def jump_probability(intensity_per_year: np.ndarray, step_days: float) -> np.ndarray:
    """``(3,)`` float32 probability of at least one Poisson event in a step."""
    return (-np.expm1(-intensity_per_year * step_days / DAYS_PER_YEAR)).astype(F32)


class DriftTerms(NamedTuple):
    """How a step's log drift is set (module ``defialloc.envs.market.drift_config``; docs/market.md, Drift convention).

    The log drift of column ``a`` in a step of regime ``k`` whose diffusive variance is ``s^2 = vm[k]^2 h``
    (``h`` the GARCH conditional variance of the step) is ``const[k, a] + vol_coef s - var_coef s^2``:

    * arithmetic: ``const = log(1 + R) dt/365 - jump_log_mgf``, ``vol_coef = 0``, ``var_coef = 1/2``;
    * sharpe: ``const = - jump_log_mgf``, ``vol_coef = S sqrt(dt/365)``, ``var_coef = 1/2``;
    * log: ``const = mu_log[k] dt/365 - P_k(jump) m_a``, ``vol_coef = var_coef = 0`` (the jumps are
      compensated in log terms: ``mu_log[k]`` is the expected log return).

    ``jump_log_mgf[k, a] = log E[exp(J)] = log(1 - p_k + p_k exp(m_a + sd_a^2 / 2))`` is exact for the
    generator's jump mixture (at most one jump per asset and step, with probability
    ``p_k = p_common + (1 - p_common) p_idio`` and a ``N(m_a, sd_a^2)`` log size); the ETH fallback column
    has no jumps (0). ``- s^2 / 2`` is the second-order (lognormal) compensation of the diffusion: with
    Student-t shocks ``E[exp(s x)]`` does not exist, and the neglected fourth-moment term is
    ``s^4 (kappa - 3) / 24`` per step (``kappa = 3 + 6 / (nu - 4)``; docs/market.md quantifies it).
    """

    kind: str
    const: np.ndarray  # (3, M) float64, per step
    vol_coef: float  # per unit of the step's diffusive vol s
    var_coef: float  # per unit of s^2
    jump_log_mgf: np.ndarray  # (3, M) float64
    vol_multiplier: np.ndarray  # (3,) float64


def drift_terms(cfg: MarketConfig, n_columns: int) -> DriftTerms:
    """The :class:`DriftTerms` of ``cfg`` for ``n_columns`` price columns (``N`` assets, then the ETH
    fallback column if there is one)."""
    p, dt = cfg.synthetic, cfg.step_days
    n = len(cfg.assets)
    # the generator draws events with these float32 probabilities: the compensators use the same ones
    p_common = jump_probability(p.jumps.common_intensity_per_year.array(), dt)
    p_idio = jump_probability(p.jumps.idio_intensity_per_year.array(), dt)
    p_jump = p_common.astype(np.float64) + (1 - p_common) * p_idio  # (3,)
    mean, std = np.zeros(n_columns), np.zeros(n_columns)
    mean[:n] = [p.jumps.mean_log[a] for a in cfg.assets]
    std[:n] = [p.jumps.std_log[a] for a in cfg.assets]
    mgf = np.log1p(p_jump[:, None] * np.expm1(mean + 0.5 * std * std)[None, :])
    mgf[:, n:] = 0.0  # the ETH fallback has no jumps
    drift = p.drift
    if drift.kind == "log":
        # today's exact float64 expression (the log kind reproduces the earlier paths bit for bit)
        log_drift = drift.log_return_per_year.array() * dt / DAYS_PER_YEAR
        const = log_drift[:, None] - p_jump[:, None] * mean[None, :]
        vol_coef = var_coef = 0.0
    elif drift.kind == "arithmetic":
        const = np.log1p(drift.simple_return_per_year) * dt / DAYS_PER_YEAR - mgf
        vol_coef, var_coef = 0.0, 0.5
    else:
        const = -mgf
        vol_coef, var_coef = drift.sharpe_per_year * np.sqrt(dt / DAYS_PER_YEAR), 0.5
    return DriftTerms(drift.kind, const, float(vol_coef), var_coef, mgf, p.vol_multiplier.array())


def mean_step_return(cfg: MarketConfig, n_columns: int) -> np.ndarray:
    """``(3, M)`` float32 regime-only part of the log drift per step (``DriftTerms.const``).

    For the log kind it is the expected log return per step, net of the jump compensator; for the
    other kinds the generator adds the variance-dependent part ``vol_coef s - var_coef s^2``.
    """
    return drift_terms(cfg, n_columns).const.astype(F32)


def expected_simple_return_step(
    source: MarketConfig | SyntheticModel, regime: np.ndarray | int, cond_var: np.ndarray
) -> np.ndarray:
    """Model-implied expected simple return per step, ``E[P_{t+1} / P_t | k_t, h_t] - 1``.

    Under the config's drift kind, second-order (lognormal) for the diffusion and exact for the jump
    mixture: ``exp(const + vol_coef s + (1/2 - var_coef) s^2 + jump_log_mgf) - 1`` with
    ``s^2 = vm[k]^2 h``. So arithmetic gives ``(1 + R)^(dt/365) - 1`` whatever ``k`` and ``h``; sharpe
    ``exp(S sqrt(dt/365) s) - 1``; log ``exp(mu_log[k] dt/365 - p_k m_a + s^2/2 + jump_log_mgf) - 1``.

    Args:
        source: a market config or its :class:`SyntheticModel`.
        regime: integer regime codes (``REGIME_NAMES`` order), shape ``(...)``.
        cond_var: the GARCH conditional variance ``h`` of the step ((log return)^2 per step, BEFORE the
            regime's vol multiplier), shape ``(..., C)`` with ``C <= M`` the first price columns (the
            ``N`` assets, then the ETH fallback if any); ``regime`` broadcasts against ``(...)``.

    Returns:
        ``(..., C)`` float64.
    """
    model = source if isinstance(source, SyntheticModel) else model_of(source)
    d = model.drift
    h = np.asarray(cond_var, dtype=np.float64)
    k = np.asarray(regime)[..., None]
    cols = h.shape[-1]
    s2 = d.vol_multiplier[k] ** 2 * h
    log_growth = (
        d.const[:, :cols][k, np.arange(cols)]
        + d.vol_coef * np.sqrt(s2)
        + (0.5 - d.var_coef) * s2
        + d.jump_log_mgf[:, :cols][k, np.arange(cols)]
    )
    return np.expm1(log_growth)


class GarchConstants(NamedTuple):
    """Per-column GARCH(1,1) constants per step, ``(M,)``: ``omega dt``, alpha, beta, ``h_bar`` (the
    unconditional variance) and the generator's cap ``max_variance_multiple * h_bar``. The generator
    holds them in float32, the trader's model (:mod:`defialloc.envs.features.model`) in float64."""

    omega: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    h_bar: np.ndarray
    h_cap: np.ndarray


def garch_constants(
    params: list[Any], step_days: float, max_variance_multiple: float, dtype: Any
) -> GarchConstants:
    """:class:`GarchConstants` of the per-asset ``market.synthetic.garch`` entries, in ``dtype``."""
    omega = (np.array([g.omega_daily for g in params]) * step_days).astype(dtype)
    alpha = np.array([g.alpha for g in params], dtype=dtype)
    beta = np.array([g.beta for g in params], dtype=dtype)
    h_bar = omega / (1 - alpha - beta)
    return GarchConstants(omega, alpha, beta, h_bar, (max_variance_multiple * h_bar).astype(dtype))


@dataclass(frozen=True)
class SyntheticModel:
    """The generator's constants for one :class:`MarketConfig` (``N`` assets, ``M`` shock columns).

    Built once per config (:func:`model_of`) instead of at every reset: a single-env reset would
    otherwise spend ~15 % of its time re-deriving them from the pydantic model.
    """

    assets: tuple[str, ...]
    n_shocks: int  # M = N, + 1 for the ETH fallback's own shock when ETH is not an asset
    eth_column: int  # column of ETH among the M price columns
    transition: np.ndarray  # (3, 3) per-step transition matrix
    initial: np.ndarray  # (3,) stationary law of the first regime
    vol_multiplier: np.ndarray  # (3,) float32
    chol: np.ndarray  # (3, N, N) float32 Cholesky factors of the regime correlations
    garch: GarchConstants
    mean_step: np.ndarray  # (3, M) float32 regime-only part of the log drift, see mean_step_return
    drift: DriftTerms  # the drift convention (float64), also for expected_simple_return_step
    drift_vol_coef: np.float32  # DriftTerms.vol_coef, float32 for the generator
    drift_var_coef: np.float32  # DriftTerms.var_coef, float32 for the generator
    jump_mean: np.ndarray  # (N,) float32
    jump_std: np.ndarray  # (N,) float32
    p_common: np.ndarray  # (3,) float32 probability of a common jump event per step
    p_idio: np.ndarray  # (3,) float32 probability of an asset's own jump per step
    size_correlation: float
    log_p0: np.ndarray  # (M,) float64 log initial prices

    @classmethod
    def build(cls, cfg: MarketConfig) -> SyntheticModel:
        p, dt = cfg.synthetic, cfg.step_days
        assets = list(cfg.assets)
        n = len(assets)
        has_eth = "ETH" in assets
        m = n if has_eth else n + 1
        garch = [p.garch[a] for a in assets] + ([] if has_eth else [p.eth_fallback.garch])
        p0 = [p.initial_price_usd[a] for a in assets]
        p0 += [] if has_eth else [p.eth_fallback.initial_price_usd]
        jp = p.jumps
        corr = p.correlation.matrices(assets) + 1e-12 * np.eye(n)
        drift = drift_terms(cfg, m)
        return cls(
            assets=tuple(assets),
            n_shocks=m,
            eth_column=assets.index("ETH") if has_eth else n,
            transition=step_transition(p.transition_array(), dt),
            initial=p.stationary_distribution(),
            vol_multiplier=p.vol_multiplier.array().astype(F32),
            chol=np.linalg.cholesky(corr).astype(F32),
            garch=garch_constants(garch, dt, p.max_variance_multiple, F32),
            mean_step=drift.const.astype(F32),
            drift=drift,
            drift_vol_coef=F32(drift.vol_coef),
            drift_var_coef=F32(drift.var_coef),
            jump_mean=np.array([jp.mean_log[a] for a in assets], dtype=F32),
            jump_std=np.array([jp.std_log[a] for a in assets], dtype=F32),
            p_common=jump_probability(jp.common_intensity_per_year.array(), dt),
            p_idio=jump_probability(jp.idio_intensity_per_year.array(), dt),
            size_correlation=jp.size_correlation,
            log_p0=np.log(p0),
        )


_MODELS: dict[int, tuple[MarketConfig, SyntheticModel]] = {}
_MAX_MODELS = 8


def model_of(cfg: MarketConfig) -> SyntheticModel:
    """The cached :class:`SyntheticModel` of ``cfg``.

    Configs are mutable, so a hit needs ``cfg`` to equal a deep snapshot taken when the model was
    built (~12 us, vs ~80 us to rebuild); a changed or different config with a reused ``id`` rebuilds.
    """
    key = id(cfg)
    hit = _MODELS.get(key)
    if hit is not None and hit[0] == cfg:
        return hit[1]
    model = SyntheticModel.build(cfg)
    if len(_MODELS) >= _MAX_MODELS and key not in _MODELS:
        _MODELS.pop(next(iter(_MODELS)))
    _MODELS[key] = (cfg.model_copy(deep=True), model)
    return model
