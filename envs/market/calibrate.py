"""Fit the synthetic market to daily OHLCV history (development data only, by default <= 2022-12-31).

Steps (all on daily log returns ``r`` of the risky assets; details and caveats in ``docs/market.md``):

1. Regimes: the causal rule of ``envs/market/replay.py`` labels every day; the transition matrix is the
   empirical one of consecutive labels.
2. Jumps: ``|r - median| > 4 robust sigma`` (trailing 60-day MAD x 1.4826, excluding the day). A day on
   which at least half the assets (and >= 2) jump is a co-jump (a common event). Intensities per regime
   are counts per regime-day x 365; sizes are each asset's returns on its jump and co-jump days.
3. GARCH(1,1)-t per asset (``arch``, percent returns) on the diffusive part (a jump day is replaced by
   its trailing median), so jumps are not counted twice. ``nu`` of the shared multivariate t is the median of the assets' nu.
4. Per regime: vol multiplier = RMS of GARCH-standardized residuals. Correlation: moment matching, so the
   model's daily-return correlation in each regime equals the data's (:func:`match_correlations`; the
   shock correlation must exceed the return correlation because GARCH variances and idiosyncratic jumps
   differ across assets). Matrices are kept PSD (eigenvalues floored, unit diagonal).
5. Drift, by convention (``drift``; docs/market.md, "Drift convention"):
   ``arithmetic`` (default): ``R = (1 + m)^365 - 1`` with ``m`` the mean daily SIMPLE return pooled over
   the assets and days (standard error ~0.7 per year on 2 years of ~100 %-vol data: R is a weak prior);
   ``sharpe``: ``S = sqrt(365) sum(simple returns) / sum(vm[k_t] sqrt(h_t))`` pooled over assets and
   days, ``h_t`` the GARCH conditional variance of step 3 and ``vm`` the regime multiplier of step 4 on
   the day's label; ``log``: the mean next-day log return after a day in regime ``k`` (what a causal
   observer of the regime could expect), shrunk toward the pooled mean by ``drift_shrinkage`` (1 = fully:
   the regime predicts no return, which is what the data support), then ``P mu = m`` is solved for the
   per-regime means (jumps compensated in log terms, so ``mu`` is the expected log return).
6. Depeg: days whose intraday low of the numeraire (and reference stablecoins) is under $0.99.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from defialloc.envs.market.calibration_report import (
    calibration_report,
    expected_return_report,
    print_report,
    simulate_report_paths,
)
from defialloc.envs.market.config import (
    DAYS_PER_YEAR,
    DRIFT_KINDS,
    LAST_DEVELOPMENT_DATE,
    REGIME_NAMES,
    ArithmeticDrift,
    DepegParams,
    EthFallbackParams,
    GarchParams,
    JumpParams,
    LogDrift,
    MarketConfig,
    RateRegimeValues,
    RegimeCorrelations,
    RegimeRuleParams,
    SharpeDrift,
    SyntheticParams,
    resolve_data_dir,
)
from defialloc.envs.market.replay import label_regimes, load_ohlcv
from defialloc.envs.market.synthetic import generate_synthetic_paths

JUMP_THRESHOLD_SIGMA = 4.0
ROBUST_WINDOW_DAYS = 60
DEPEG_THRESHOLD = 0.01  # intraday low under $0.99
DEPEG_CRASH_WEIGHT = 4.0  # prior: depegs 4x as likely per day in crash (too few events to fit)
MAD_TO_SIGMA = 1.4826


def robust_sigma(
    returns: np.ndarray, window: int = ROBUST_WINDOW_DAYS, min_periods: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Trailing median and robust sigma (MAD x 1.4826) of each column, excluding the current day.

    Args:
        returns: ``(T, N)`` daily log returns.

    Returns:
        ``(median, sigma)``, each ``(T, N)``; the first ``min_periods`` rows use the first ``min_periods``
        returns (a warm start).
    """
    frame = pd.DataFrame(returns)
    med = frame.rolling(window, min_periods=min_periods).median().shift(1)
    mad = (frame - med).abs().rolling(window, min_periods=min_periods).median().shift(1)
    head = frame.iloc[:min_periods]
    head_med = head.median()
    med = med.fillna(head_med)
    mad = mad.fillna((head - head_med).abs().median())
    return med.to_numpy(), np.maximum(MAD_TO_SIGMA * mad.to_numpy(), 1e-8)


def detect_jumps(
    returns: np.ndarray, threshold: float = JUMP_THRESHOLD_SIGMA
) -> tuple[np.ndarray, np.ndarray]:
    """Jump flags and the diffusive part of ``(T, N)`` returns.

    A jump is ``|r - median| > threshold * sigma`` (trailing robust estimates, :func:`robust_sigma`). The
    diffusive part replaces a jump day by its trailing median: the whole move is attributed to the jump
    (its size is ``r - median``), so the GARCH fit and the jump sizes do not count it twice.

    Returns:
        ``(jump, diffusive)``: ``(T, N)`` bool and ``(T, N)`` float64.
    """
    med, sigma = robust_sigma(returns)
    jump = np.abs(returns - med) > threshold * sigma
    return jump, np.where(jump, med, returns)


def transition_counts(labels: np.ndarray, n_regimes: int = len(REGIME_NAMES)) -> np.ndarray:
    """``(K, K)`` counts of consecutive labels ``(labels[t], labels[t + 1])``."""
    counts = np.zeros((n_regimes, n_regimes))
    np.add.at(counts, (labels[:-1], labels[1:]), 1.0)
    return counts


def nearest_correlation(matrix: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """Symmetrize, floor the eigenvalues at ``floor`` and rescale to a unit diagonal (PSD by construction)."""
    sym = 0.5 * (matrix + matrix.T)
    vals, vecs = np.linalg.eigh(sym)
    fixed = (vecs * np.maximum(vals, floor)) @ vecs.T
    d = np.sqrt(np.diag(fixed))
    out = fixed / np.outer(d, d)
    np.fill_diagonal(out, 1.0)
    return out


def fit_garch_t(returns: np.ndarray) -> tuple[GarchParams, float, float, np.ndarray]:
    """GARCH(1,1) with standardized Student-t errors on one series of daily log returns.

    ``alpha + beta`` is capped at 0.99 (by lowering beta) and ``omega`` is then set by variance targeting,
    ``omega = var(r) (1 - alpha - beta)``, so the model's unconditional variance is the sample variance
    (a near-integrated fit otherwise gives ``omega ~ 0`` and an arbitrary long-run level).

    Returns:
        ``(params, nu, mean_daily, variance_daily)`` with ``variance_daily`` the ``(T,)`` fitted
        conditional variance (decimal units, from the unconstrained fit).
    """
    from arch import arch_model  # heavy import, calibration only

    res = arch_model(100.0 * returns, mean="Constant", vol="GARCH", p=1, q=1, dist="t").fit(
        disp="off"
    )
    alpha = float(res.params["alpha[1]"])
    beta = max(0.0, min(float(res.params["beta[1]"]), 0.99 - alpha))
    omega = float(np.var(returns)) * (1.0 - alpha - beta)
    params = GarchParams(omega_daily=omega, alpha=alpha, beta=beta)
    variance = (np.asarray(res.conditional_volatility) / 100.0) ** 2
    return params, float(res.params["nu"]), float(res.params["mu"]) / 100.0, variance


def _depeg_params(
    frames: dict[str, pd.DataFrame], coins: list[str], stationary: np.ndarray
) -> DepegParams:
    """Episodes of a stablecoin low under ``1 - DEPEG_THRESHOLD`` pooled over ``coins``."""
    default = SyntheticParams().depeg
    present = [c for c in coins if c in frames]
    if not present:
        return default
    depths, half_lives, coin_years, noise = [], [], 0.0, []
    for coin in present:
        low = frames[coin]["Low"].to_numpy()
        close = frames[coin]["Close"].to_numpy()
        coin_years += len(low) / DAYS_PER_YEAR
        event = 1.0 - low > DEPEG_THRESHOLD
        starts = np.flatnonzero(event & ~np.r_[False, event[:-1]])
        for s in starts:
            depth = 1.0 - low[s]
            depths.append(depth)
            recovered = np.flatnonzero(1.0 - close[s:] < 0.5 * depth)
            half_lives.append(float(recovered[0]) if len(recovered) else float(len(close) - s))
        noise.append(np.std(close[~event]) * 1e4)
    if not depths:
        return default.model_copy(update={"noise_bps": float(np.median(noise))})
    rate = len(depths) / coin_years
    weights = np.array([1.0, 1.0, DEPEG_CRASH_WEIGHT])
    per_regime = rate * weights / float(stationary @ weights)
    return DepegParams(
        intensity_per_year=RateRegimeValues(
            **dict(zip(REGIME_NAMES, per_regime.tolist(), strict=True))
        ),
        depth_min=float(min(depths)),
        depth_max=float(max(depths)),
        half_life_days=max(1.0, float(np.median(half_lives))),
        noise_bps=float(np.median(noise)),
    )


def _regime_values(values: np.ndarray) -> dict[str, float]:
    return dict(zip(REGIME_NAMES, (float(v) for v in values), strict=True))


def jump_statistics(
    returns: np.ndarray,
    jump: np.ndarray,
    diffusive: np.ndarray,
    labels: np.ndarray,
    assets: list[str],
) -> JumpParams:
    """Jump intensities per regime and per-asset sizes from detected jumps (module docstring, step 2).

    Sizes: ``r - median`` on the asset's jump days and the raw return on other co-jump days.

    Args:
        returns, jump, diffusive: ``(T, N)`` log returns, flags and diffusive part (:func:`detect_jumps`);
        labels: ``(T,)`` regime of each day.
    """
    n = len(assets)
    days = np.bincount(labels, minlength=3)
    co_jump = (
        jump.sum(axis=1) >= max(2, int(np.ceil(n / 2))) if n >= 2 else np.zeros(len(jump), bool)
    )
    idio = jump & ~co_jump[:, None]
    common_rate = [co_jump[labels == k].sum() / days[k] * DAYS_PER_YEAR for k in range(3)]
    idio_rate = [idio[labels == k].sum() / (n * days[k]) * DAYS_PER_YEAR for k in range(3)]
    mean_log, std_log = {}, {}
    for i, a in enumerate(assets):
        sample = np.where(jump[:, i], returns[:, i] - diffusive[:, i], returns[:, i])[
            jump[:, i] | co_jump
        ]
        enough = len(sample) >= 3
        mean_log[a] = float(sample.mean()) if enough else -0.05
        std_log[a] = float(max(sample.std(ddof=1), 0.01)) if enough else 0.05
    size_corr = 0.8
    if co_jump.sum() >= 3 and n >= 2:
        c = np.corrcoef(returns[co_jump], rowvar=False)
        size_corr = float(np.clip(c[np.triu_indices(n, 1)].mean(), 0.0, 1.0))
    return JumpParams(
        common_intensity_per_year=_regime_values(np.array(common_rate)),
        idio_intensity_per_year=_regime_values(np.array(idio_rate)),
        mean_log=mean_log,
        std_log=std_log,
        size_correlation=size_corr,
    )


def regime_drift_daily(
    returns: np.ndarray, labels: np.ndarray, transition: np.ndarray, shrinkage: float
) -> np.ndarray:
    """``(3,)`` expected daily log return per regime (module docstring, step 5).

    ``m_k`` = mean next-day return (averaged over assets) after a day labelled ``k``; shrunk toward the
    pooled mean, ``m_k <- m + (1 - shrinkage) (m_k - m)``; then ``P mu = m`` gives the per-regime means
    ``mu`` of a model whose regime of the next step is drawn from ``P``.
    """
    pooled = returns.mean(axis=1)
    forward = np.array([pooled[1:][labels[:-1] == k].mean() for k in range(3)])
    overall = pooled.mean()
    target = overall + (1.0 - shrinkage) * (forward - overall)
    return np.linalg.lstsq(transition, target, rcond=None)[0]


def arithmetic_drift(returns: np.ndarray) -> ArithmeticDrift:
    """``R = (1 + m)^365 - 1``, ``m`` the mean daily simple return over all assets and days of ``(T, N)``
    daily log ``returns`` (module docstring, step 5)."""
    mean = float(np.expm1(returns).mean())
    return ArithmeticDrift(simple_return_per_year=(1.0 + mean) ** DAYS_PER_YEAR - 1.0)


def sharpe_drift(returns: np.ndarray, cond_vol: np.ndarray) -> SharpeDrift:
    """``S = sqrt(365) sum(simple returns) / sum(cond_vol)`` over all assets and days.

    Under the sharpe model ``E[R_t | s_t] = exp(c s_t) - 1 ~ c s_t`` with ``c = S / sqrt(365)``, so the
    pooled ratio estimates ``c`` (weighting each day by its vol). ``cond_vol``: ``(T, N)`` the days'
    conditional diffusive vols ``vm[k_t] sqrt(h_t)``.
    """
    ratio = float(np.expm1(returns).sum() / cond_vol.sum())
    return SharpeDrift(sharpe_per_year=ratio * np.sqrt(DAYS_PER_YEAR))


def _range_scale(
    frames: dict[str, pd.DataFrame], assets: list[str], diffusive: np.ndarray
) -> float:
    """Median over assets of sqrt(Parkinson variance / close-to-close variance of the diffusive part)."""
    hl = np.stack([np.log(frames[a]["High"] / frames[a]["Low"]).to_numpy()[1:] for a in assets], 1)
    parkinson = np.mean(hl**2, axis=0) / (4.0 * np.log(2.0))
    return float(np.clip(np.median(np.sqrt(parkinson / diffusive.var(axis=0))), 0.2, 5.0))


def calibrate_market(
    data_dir: str | Path,
    assets: list[str],
    numeraire: str = "USDC",
    start: str | dt.date | None = None,
    end: str | dt.date = "2022-12-31",
    allow_held_out: bool = False,
    drift_shrinkage: float = 1.0,
    regime_rule: RegimeRuleParams | None = None,
    depeg_reference: tuple[str, ...] = ("USDT",),
    drift: str = "arithmetic",
) -> MarketConfig:
    """Fit a synthetic :class:`MarketConfig` to the history in ``[start, end]`` (see module docstring).

    ``drift`` is the drift convention to fit (``arithmetic``, ``log`` or ``sharpe``, step 5);
    ``drift_shrinkage`` applies to ``log`` only.

    Raises:
        ValueError: ``end`` after 2022-12-31 without ``allow_held_out=True`` (2023+ is held out), bad
            data, an unknown ``drift``, or a regime that never occurs in the window.
    """
    if drift not in DRIFT_KINDS:
        raise ValueError(f"drift={drift!r} must be one of {', '.join(DRIFT_KINDS)}")
    end_date = pd.Timestamp(end).date()
    if end_date > LAST_DEVELOPMENT_DATE and not allow_held_out:
        raise ValueError(
            f"end={end_date} is in the held-out period (after {LAST_DEVELOPMENT_DATE}); calibrating "
            "on it leaks test data. Pass allow_held_out=True (CLI: --allow-held-out) only for a "
            "deliberate post-hoc study."
        )
    if not 0.0 <= drift_shrinkage <= 1.0:
        raise ValueError(f"drift_shrinkage={drift_shrinkage} must be in [0, 1]")
    rule = regime_rule or RegimeRuleParams()
    folder = resolve_data_dir(data_dir)
    extra = [s for s in (numeraire, *depeg_reference, "ETH") if s not in assets]
    extra = [s for s in extra if (folder / f"{s}-USD.csv").is_file()]
    frames = load_ohlcv(folder, [*assets, *extra], start, end_date)
    close = np.stack([frames[a]["Close"].to_numpy() for a in assets], axis=1)
    if len(close) < 120:
        raise ValueError(f"calibration window has {len(close)} days; need at least 120")
    returns = np.diff(np.log(close), axis=0)
    labels = label_regimes(close, rule)[1:]  # label of the day each return ends on
    counts = np.bincount(labels, minlength=3)
    if np.any(counts == 0):
        missing = [REGIME_NAMES[k] for k in np.flatnonzero(counts == 0)]
        raise ValueError(
            f"regime(s) {missing} never occur in the window; widen it or change regime_rule"
        )
    trans = transition_counts(labels)
    transition = trans / trans.sum(axis=1, keepdims=True)
    stationary = SyntheticParams(transition_daily=transition.tolist()).stationary_distribution()

    jump, diffusive = detect_jumps(returns)
    fits = [fit_garch_t(diffusive[:, i]) for i in range(len(assets))]
    garch = {a: f[0] for a, f in zip(assets, fits, strict=True)}
    # GARCH-standardized residuals: their RMS and correlation per regime
    z = (diffusive - np.array([f[2] for f in fits])) / np.sqrt(np.stack([f[3] for f in fits], 1))
    vol_mult = np.array([np.sqrt(np.mean(z[labels == k] ** 2)) for k in range(3)])
    if "ETH" in assets:
        eth_garch, eth_price = garch["ETH"], float(close[-1, assets.index("ETH")])
    else:
        eth_close = frames["ETH"]["Close"].to_numpy()
        eth_garch = fit_garch_t(detect_jumps(np.diff(np.log(eth_close))[:, None])[1][:, 0])[0]
        eth_price = float(eth_close[-1])
    if drift == "arithmetic":
        drift_params: ArithmeticDrift | SharpeDrift | LogDrift = arithmetic_drift(returns)
    elif drift == "sharpe":
        cond_vol = np.sqrt(np.stack([f[3] for f in fits], axis=1)) * vol_mult[labels][:, None]
        drift_params = sharpe_drift(returns, cond_vol)
    else:
        mu = regime_drift_daily(returns, labels, transition, drift_shrinkage)
        drift_params = LogDrift(log_return_per_year=_regime_values(mu * DAYS_PER_YEAR))
    synthetic = SyntheticParams(
        transition_daily=transition.tolist(),
        drift=drift_params,
        vol_multiplier=_regime_values(vol_mult),
        correlation=_correlations(
            assets, np.stack([_regime_corr(z[labels == k]) for k in range(3)])
        ),
        garch=garch,
        nu=float(np.clip(np.median([f[1] for f in fits]), 2.5, 100.0)),
        initial_price_usd={a: float(close[-1, i]) for i, a in enumerate(assets)},
        jumps=jump_statistics(returns, jump, diffusive, labels, assets),
        depeg=_depeg_params(frames, [numeraire, *depeg_reference], stationary),
        eth_fallback=EthFallbackParams(garch=eth_garch, initial_price_usd=eth_price),
        range_scale=_range_scale(frames, assets, diffusive),
    )
    cfg = MarketConfig(
        source="synthetic",
        assets=list(assets),
        numeraire=numeraire,
        data_dir=str(data_dir),
        start=frames[assets[0]].index[0].date(),
        end=end_date,
        synthetic=synthetic,
        regime_rule=rule,
    )
    if len(assets) == 1:
        return cfg
    target = np.stack([_regime_corr(returns[labels == k]) for k in range(3)])
    return match_correlations(cfg, target)


def _regime_corr(x: np.ndarray) -> np.ndarray:
    if x.shape[1] == 1:
        return np.ones((1, 1))
    return nearest_correlation(np.corrcoef(x, rowvar=False))


def _correlations(assets: list[str], matrices: np.ndarray) -> RegimeCorrelations:
    return RegimeCorrelations(
        assets=list(assets), **{r: m.tolist() for r, m in zip(REGIME_NAMES, matrices, strict=True)}
    )


def match_correlations(
    cfg: MarketConfig,
    target: np.ndarray,
    iterations: int = 4,
    n_paths: int = 128,
    length: int = 730,
    seed: int = 0,
) -> MarketConfig:
    """Adjust the per-regime shock correlations until the model's return correlations match ``target``.

    Fixed-point iteration ``C <- nearest_correlation(C + target - model)`` where ``model`` is the pooled
    correlation of simulated daily returns on each regime's days (true regimes, common random numbers).

    Args:
        target: ``(3, N, N)`` data return correlations per regime (``REGIME_NAMES`` order).
    """
    assets = list(cfg.assets)
    current = cfg.synthetic.correlation.matrices(assets)
    seeds = np.arange(seed, seed + n_paths)
    for _ in range(iterations):
        paths = generate_synthetic_paths(cfg, seeds, length, 0)
        ret = np.diff(np.log(paths.close), axis=1)
        reg = paths.regime[:, 1:]
        model = np.stack([_regime_corr(ret[reg == k]) for k in range(3)])
        current = np.stack(
            [
                nearest_correlation(np.clip(c + t - m, -0.995, 0.995))
                for c, t, m in zip(current, target, model, strict=True)
            ]
        )
        syn = cfg.synthetic.model_copy(update={"correlation": _correlations(assets, current)})
        cfg = cfg.model_copy(update={"synthetic": syn})
    return cfg


def _rounded(value: Any, digits: int = 8) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def write_market_config(cfg: MarketConfig, path: str | Path, header: str = "") -> None:
    """Write ``cfg`` as YAML (floats to 8 significant digits) with ``header`` as leading comment lines."""
    body = yaml.safe_dump(
        _rounded(cfg.model_dump(mode="json")), sort_keys=False, default_flow_style=None, width=110
    )
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(comment + body)


def run_calibration(
    data_dir: str | Path,
    out_path: str | Path,
    assets: list[str],
    end: str | dt.date = "2022-12-31",
    numeraire: str = "USDC",
    start: str | dt.date | None = None,
    allow_held_out: bool = False,
    drift_shrinkage: float = 1.0,
    n_report_paths: int = 200,
    seed: int = 0,
    console: Any = None,
    drift: str = "arithmetic",
) -> tuple[MarketConfig, pd.DataFrame, pd.DataFrame]:
    """Calibrate, write the config to ``out_path`` and print the fitted-vs-data tables (``defialloc calibrate``).

    Returns:
        ``(config, report, expected)``: :func:`calibration_report` and :func:`expected_return_report`
        on the same ``n_report_paths`` simulated paths.
    """
    cfg = calibrate_market(
        data_dir, assets, numeraire, start, end, allow_held_out, drift_shrinkage, drift=drift
    )
    data = load_ohlcv(data_dir, assets, cfg.start, cfg.end)
    n_days = len(next(iter(data.values())))
    paths = simulate_report_paths(cfg, n_days, n_report_paths, seed)
    report = calibration_report(cfg, data, paths=paths)
    expected = expected_return_report(cfg, data, paths)
    header = (
        f"Calibrated synthetic market, fitted on {cfg.start}..{cfg.end} ({n_days} days)\n"
        f"of {','.join(assets)} with numeraire {numeraire}, written by:\n"
        f"  defialloc calibrate --data-dir {data_dir} --out {out_path} --assets {','.join(assets)} "
        f"--numeraire {numeraire} --end {end} --drift {drift}\n"
        "(envs/market/calibrate.py:run_calibration; model and caveats: docs/market.md)"
    )
    write_market_config(cfg, out_path, header)
    print_report(report, cfg, out_path, console, expected)
    return cfg, report, expected
