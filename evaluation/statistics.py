"""Statistics for comparing policies: IQM, bootstrap CIs, P(improvement), PSR and DSR.

Conventions, fixed in writing (also in ``docs/metrics.md``):

- ``scores`` are one number per scenario (e.g. a Sharpe ratio or final log-wealth), shaped
  ``(n_scenarios,)`` or ``(n_runs, n_scenarios)`` where runs are training seeds. Every run is
  evaluated on the same scenarios, so column ``j`` of two policies' scores is a paired comparison.
- Bootstrap: the stratified bootstrap resamples scenarios WITH replacement WITHIN each run (runs
  are never mixed); the interval is the percentile interval of the resampled statistic. Each call
  is reproducible for a given ``seed`` (an int or a ``numpy.random.Generator``).
- ``iqm`` is rliable's interquartile mean: ``scipy.stats.trim_mean(x, 0.25)`` over all values
  (it drops ``floor(0.25 n)`` values at each end).
- ``probability_of_improvement(x, y)`` is the paired ``P(X > Y)``: the fraction of paired
  (run, scenario) cells where ``x > y``, ties counting 1/2.
- PSR/DSR (Bailey & Lopez de Prado) work on PER-PERIOD (not annualized) Sharpe ratios
  ``mean / std(ddof=1)``; skewness and Pearson kurtosis (normal = 3) are moment (biased) estimates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from defialloc.evaluation.metrics import _as_returns, _check_level, _is_constant

Statistic = Callable[..., np.ndarray] | Literal["mean", "median", "iqm"]
SeedLike = int | np.random.Generator
# Resampled values held in memory at once; blocks of bootstrap draws keep within it.
_BOOT_BLOCK_ELEMENTS = 1 << 22


class ConfidenceInterval(NamedTuple):
    """A point estimate with its percentile bootstrap interval (unpacks as a 3-tuple)."""

    point: float
    low: float
    high: float


def iqm(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: mean of the middle 50 % (``trim_mean(x, 0.25)``); all values if axis=None."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        raise ValueError("iqm: x is empty; need at least 1 value")
    return stats.trim_mean(a, 0.25, axis=axis)


def _as_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Validate scores and return them as ``(n_runs, n_scenarios)``."""
    a = np.asarray(scores, dtype=float)
    if a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(
            f"{name} must be non-empty (n_scenarios,) or (n_runs, n_scenarios), got {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf; allowed: finite scores")
    return a.reshape(1, -1) if a.ndim == 1 else a


def _resolve(statistic: Statistic) -> Callable[..., np.ndarray]:
    named = {"mean": np.mean, "median": np.median, "iqm": iqm}
    if isinstance(statistic, str):
        if statistic not in named:
            raise ValueError(f"statistic = {statistic!r}; allowed: {sorted(named)} or a callable")
        return named[statistic]
    return statistic


def _bootstrap_distribution(
    scores: np.ndarray, fn: Callable[..., np.ndarray], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n_boot,)`` statistic of scenario resamples drawn within each run of ``scores`` (R, S)."""
    n_runs, n_scen = scores.shape
    rows = np.arange(n_runs)[None, :, None]
    per_block = max(1, _BOOT_BLOCK_ELEMENTS // scores.size)
    out = np.empty(n_boot)
    for start in range(0, n_boot, per_block):  # memory blocks; each block is one vectorized draw
        b = min(per_block, n_boot - start)
        cols = rng.integers(0, n_scen, size=(b, n_runs, n_scen))
        out[start : start + b] = fn(scores[rows, cols].reshape(b, -1), axis=-1)
    return out


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Statistic = "mean",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: SeedLike = 0,
) -> ConfidenceInterval:
    """Point estimate and percentile CI of ``statistic`` over all scores, resampling within runs.

    ``statistic`` is "mean", "median", "iqm" or a callable ``f(a, axis=-1)`` reducing the last axis
    (it receives the flattened ``(n_runs * n_scenarios)`` resample of each draw).
    """
    a = _as_scores(scores, "scores")
    level = _check_level(level)
    if int(n_boot) < 1:
        raise ValueError(f"n_boot = {n_boot} must be >= 1")
    fn = _resolve(statistic)
    point = float(fn(a.reshape(1, -1), axis=-1)[0])
    boot = _bootstrap_distribution(a, fn, int(n_boot), np.random.default_rng(seed))
    low, high = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return ConfidenceInterval(point, float(low), float(high))


def _paired(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as ``(n_runs, n_scenarios)``; a single-run side is broadcast against the other."""
    a, b = _as_scores(x, "x"), _as_scores(y, "y")
    if a.shape[1] != b.shape[1] or (a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0])):
        raise ValueError(
            f"x {np.shape(x)} and y {np.shape(y)} must be paired on the same scenarios "
            "(equal shapes, or one of them (n_scenarios,))"
        )
    a, b = np.broadcast_arrays(a, b)
    return a, b


def probability_of_improvement(
    x: np.ndarray,
    y: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: SeedLike = 0,
) -> ConfidenceInterval:
    """Paired ``P(X > Y)`` (ties 1/2) with a stratified paired bootstrap CI.

    ``x`` and ``y`` are ``(n_scenarios,)`` or ``(n_runs, n_scenarios)`` on the same scenarios; a
    1-D one is broadcast against a 2-D other (e.g. a deterministic baseline vs seeded agents).
    Resampling picks whole (x, y) pairs, so the pairing is kept.
    """
    a, b = _paired(x, y)
    wins = (a > b) + 0.5 * (a == b)
    return stratified_bootstrap_ci(wins, "mean", n_boot=n_boot, level=level, seed=seed)


def paired_difference_ci(
    x: np.ndarray,
    y: np.ndarray,
    statistic: Statistic = "mean",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: SeedLike = 0,
) -> ConfidenceInterval:
    """``statistic`` of the paired differences ``x - y`` with its stratified bootstrap CI.

    Shapes as in ``probability_of_improvement``; significant when the CI excludes 0.
    """
    a, b = _paired(x, y)
    return stratified_bootstrap_ci(a - b, statistic, n_boot=n_boot, level=level, seed=seed)


def ratio_of_means_ci(
    numerator: np.ndarray,
    denominator: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: SeedLike = 0,
) -> ConfidenceInterval:
    """``mean(numerator) / mean(denominator)`` with a paired stratified bootstrap CI.

    Both are ``(n_scenarios,)`` or ``(n_runs, n_scenarios)`` on the same scenarios (a 1-D one is
    broadcast against a 2-D other); each draw resamples scenarios within each run and takes the
    SAME cells of both, so the pairing is kept. A ratio of means rather than a mean of per-scenario
    ratios: a scenario whose denominator is near 0 would otherwise dominate. A draw whose
    denominator mean is 0 gives NaN and is left out of the percentiles.

    Raises:
        ValueError: non-finite or unpaired inputs, or ``mean(denominator) == 0``.
    """
    num, den = _paired(numerator, denominator)
    level = _check_level(level)
    if int(n_boot) < 1:
        raise ValueError(f"n_boot = {n_boot} must be >= 1")
    if den.mean() == 0.0:
        raise ValueError("denominator has mean 0: the ratio of means is undefined")
    rng = np.random.default_rng(seed)
    n_runs, n_scen = num.shape
    rows = np.arange(n_runs)[None, :, None]
    per_block = max(1, _BOOT_BLOCK_ELEMENTS // num.size)
    boot = np.empty(int(n_boot))
    for start in range(0, int(n_boot), per_block):
        b = min(per_block, int(n_boot) - start)
        cols = rng.integers(0, n_scen, size=(b, n_runs, n_scen))
        top = num[rows, cols].reshape(b, -1).mean(axis=1)
        bottom = den[rows, cols].reshape(b, -1).mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot[start : start + b] = np.where(bottom != 0.0, top / bottom, np.nan)
    boot = boot[np.isfinite(boot)]
    point = float(num.mean() / den.mean())
    low, high = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return ConfidenceInterval(point, float(low), float(high))


def is_significant(ci: ConfidenceInterval | tuple[float, float, float], null: float = 0.0) -> bool:
    """True when the interval ``(point, low, high)`` excludes ``null`` (0 for differences)."""
    _, low, high = ci
    return bool(low > null or high < null)


def improvement_is_significant(ci: ConfidenceInterval | tuple[float, float, float]) -> bool:
    """True when a P(improvement) interval excludes 0.5 (either direction)."""
    return is_significant(ci, null=0.5)


def sharpe_per_period(returns: np.ndarray) -> float:
    """Non-annualized Sharpe ``mean / std(ddof=1)``; NaN for zero variance or T < 2."""
    r = _as_returns(returns)
    if r.size < 2 or _is_constant(r):
        return float("nan")
    return float(r.mean() / r.std(ddof=1))


def psr_from_moments(
    sr: float, sr_benchmark: float, n_obs: int, skew: float, kurtosis: float
) -> float:
    """``Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2))``.

    Per-period Sharpe ratios; ``kurtosis`` is Pearson (normal = 3), not excess.
    """
    if n_obs < 2:
        raise ValueError(f"n_obs = {n_obs} must be >= 2")
    var_term = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    if not np.isfinite(sr) or var_term <= 0:
        return float("nan")
    return float(stats.norm.cdf((sr - sr_benchmark) * np.sqrt(n_obs - 1) / np.sqrt(var_term)))


def probabilistic_sharpe_ratio(returns: np.ndarray, sr_benchmark: float = 0.0) -> float:
    """Probability that the true per-period Sharpe exceeds ``sr_benchmark`` (per period)."""
    r = _as_returns(returns)
    sr = sharpe_per_period(r)
    if np.isnan(sr):
        return float("nan")
    skew = float(stats.skew(r, bias=True))
    kurt = float(stats.kurtosis(r, fisher=False, bias=True))
    return psr_from_moments(sr, sr_benchmark, r.size, skew, kurt)


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """Expected maximum of ``n_trials`` per-period Sharpe estimates under a zero true Sharpe.

    ``sqrt(V) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e)))``, ``g`` = Euler-Mascheroni.
    """
    if n_trials < 2:
        raise ValueError(f"n_trials = {n_trials} must be >= 2")
    if not np.isfinite(sr_variance) or sr_variance < 0:
        raise ValueError(f"sr_variance = {sr_variance} must be finite and >= 0")
    g = np.euler_gamma
    z = (1 - g) * stats.norm.ppf(1 - 1 / n_trials) + g * stats.norm.ppf(1 - 1 / (n_trials * np.e))
    return float(np.sqrt(sr_variance) * z)


def deflated_sharpe_ratio(returns: np.ndarray, sr_trials: Sequence[float]) -> float:
    """PSR of ``returns`` against the expected max Sharpe of all ``sr_trials`` tried.

    ``sr_trials`` are the per-period Sharpe ratios of every candidate tried (including the chosen
    one), N >= 2; their variance is the sample variance (ddof=1).
    """
    trials = np.asarray(sr_trials, dtype=float)
    if trials.ndim != 1 or trials.size < 2 or not np.isfinite(trials).all():
        raise ValueError(f"sr_trials must be >= 2 finite per-period Sharpe ratios, got {trials!r}")
    benchmark = expected_max_sharpe(trials.size, float(trials.var(ddof=1)))
    return probabilistic_sharpe_ratio(returns, sr_benchmark=benchmark)


def summarize_scores(
    scores_by_policy: Mapping[str, np.ndarray],
    baseline: str | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: SeedLike = 0,
) -> pd.DataFrame:
    """One row per policy: n, mean and IQM with stratified-bootstrap CIs.

    With ``baseline`` (a key of ``scores_by_policy``) it adds, paired against the baseline: the mean
    difference ``diff_mean`` with its CI, ``prob_improvement`` with its CI, and ``significant``
    (the P(improvement) CI excludes 0.5). Every bootstrap uses the same ``seed``.
    """
    if baseline is not None and baseline not in scores_by_policy:
        raise ValueError(f"baseline = {baseline!r} is not one of {sorted(scores_by_policy)}")
    rows = []
    for name, scores in scores_by_policy.items():
        mean = stratified_bootstrap_ci(scores, "mean", n_boot, level, seed)
        mid = stratified_bootstrap_ci(scores, "iqm", n_boot, level, seed)
        row = {
            "policy": name,
            "n": int(np.size(scores)),
            "mean": mean.point,
            "mean_ci_low": mean.low,
            "mean_ci_high": mean.high,
            "iqm": mid.point,
            "iqm_ci_low": mid.low,
            "iqm_ci_high": mid.high,
        }
        if baseline is not None:
            poi = probability_of_improvement(
                scores, scores_by_policy[baseline], n_boot, level, seed
            )
            diff = paired_difference_ci(
                scores, scores_by_policy[baseline], "mean", n_boot, level, seed
            )
            row |= {
                "diff_mean": diff.point,
                "diff_ci_low": diff.low,
                "diff_ci_high": diff.high,
                "prob_improvement": poi.point,
                "poi_ci_low": poi.low,
                "poi_ci_high": poi.high,
                "significant": improvement_is_significant(poi),
            }
        rows.append(row)
    return pd.DataFrame(rows).set_index("policy")
