"""Validation of optimizer inputs and the weight constraints shared by every baseline optimizer.

Weights are over the ``N`` risky assets only; ``budget`` is their sum (``1 - budget`` is cash, so
``budget < 1`` holds cash and ``budget > 1`` borrows it: a levered book). Errors here are caller
mistakes and raise ``ValueError``; non-finite numbers in ``cov``/``mu`` are data problems, which the
optimizers answer with a fallback (see :mod:`defialloc.agents.baselines.optimizers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

#: relative asymmetry ``max|C - C'| / max|C|`` tolerated in a covariance matrix
SYMMETRY_RTOL = 1e-8
#: eigenvalues below ``-PSD_RTOL * max eigenvalue`` mean the matrix is not a covariance
PSD_RTOL = 1e-8
#: constraint violation (relative to the budget) tolerated in a returned solution
FEAS_TOL = 1e-8


@dataclass(frozen=True)
class WeightConstraints:
    """Constraints on a weight vector ``w`` over ``n`` risky assets.

    Attributes:
        long_only: ``w >= 0``.
        max_weight: per-asset cap on ``|w_i|`` in (0, 1], or None for no cap.
        budget: ``sum(w)``, the invested fraction of equity (> 0 when long-only).
        max_gross_leverage: cap on ``sum|w_i|`` (long-short only; long-only gross equals budget).
    """

    long_only: bool
    max_weight: float | None
    budget: float
    max_gross_leverage: float | None

    def bounds(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` box bounds, ``(n,)`` each (``+-inf`` where unbounded)."""
        cap = math.inf if self.max_weight is None else self.max_weight
        lower = np.full(n, 0.0 if self.long_only else -cap)
        return lower, np.full(n, cap)

    @property
    def gross_is_binding(self) -> bool:
        """Whether the gross-leverage cap is an extra constraint (long-short with a cap)."""
        return not self.long_only and self.max_gross_leverage is not None

    def single_point(self, n: int) -> bool:
        """Whether the caps leave one feasible portfolio: ``max_weight * n == |budget|`` forces
        every ``|w_i|`` to the cap, i.e. equal weights (a degenerate vertex, solved directly)."""
        return self.max_weight is not None and self.max_weight * n <= abs(self.budget) * (1 + 1e-12)

    def equal_weight(self, n: int) -> np.ndarray:
        """``(n,)`` equal weights summing to the budget (always feasible after validation)."""
        return np.full(n, self.budget / n)

    def is_feasible(self, w: np.ndarray) -> bool:
        """Whether ``w`` satisfies every constraint up to :data:`FEAS_TOL`."""
        tol = FEAS_TOL * max(1.0, abs(self.budget))
        total = float(w.sum())  # NaN fails every comparison below
        if not abs(total - self.budget) <= tol:
            return False
        if self.long_only and not float(w.min()) >= -tol:
            return False
        if self.max_weight is not None and not float(abs(w).max()) <= self.max_weight + tol:
            return False
        if (
            self.gross_is_binding
            and not float(abs(w).sum()) <= float(self.max_gross_leverage) + tol
        ):
            return False
        return bool(np.isfinite(total))


def make_constraints(
    n: int,
    *,
    long_only: bool,
    max_weight: float | None,
    budget: float,
    max_gross_leverage: float | None,
) -> WeightConstraints:
    """Validate the constraint arguments for ``n`` assets; raise ValueError if infeasible."""
    budget = float(budget)
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    if long_only and budget <= 0.0:
        raise ValueError(f"budget must be > 0 for a long-only portfolio, got {budget}")
    if max_weight is not None:
        max_weight = float(max_weight)
        if not 0.0 < max_weight <= 1.0:
            raise ValueError(f"max_weight must be in (0, 1], got {max_weight}")
        if max_weight * n < abs(budget) * (1.0 - 1e-12):
            raise ValueError(
                f"max_weight * n_assets must be >= |budget| for a feasible portfolio, got "
                f"max_weight={max_weight} * n_assets={n} = {max_weight * n} < |budget|={abs(budget)}"
            )
    if max_gross_leverage is not None:
        max_gross_leverage = float(max_gross_leverage)
        if not math.isfinite(max_gross_leverage) or max_gross_leverage < abs(budget):
            raise ValueError(
                f"max_gross_leverage must be finite and >= |budget|={abs(budget)} (gross exposure "
                f"sum|w| is at least |sum w|), got {max_gross_leverage}"
            )
    return WeightConstraints(bool(long_only), max_weight, budget, max_gross_leverage)


def as_cov(cov: np.ndarray, name: str = "cov") -> np.ndarray:
    """``cov`` as a float64 ``(N, N)`` array; raise ValueError on a wrong shape."""
    arr = np.asarray(cov, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must be a square (N, N) matrix with N >= 1, got shape {arr.shape}"
        )
    return arr


def check_symmetric(cov: np.ndarray, name: str = "cov") -> np.ndarray:
    """Return the symmetrized finite ``cov``; raise ValueError if it is far from symmetric."""
    asym = float(abs(cov - cov.T).max())
    size = float(abs(cov).max())
    if asym > SYMMETRY_RTOL * size:
        raise ValueError(
            f"{name} must be symmetric: max |{name} - {name}.T| = {asym:.3g} exceeds "
            f"{SYMMETRY_RTOL:g} * max|{name}| = {SYMMETRY_RTOL * size:.3g}"
        )
    return 0.5 * (cov + cov.T)


def check_not_indefinite(cov: np.ndarray, name: str = "cov") -> None:
    """Raise ValueError if ``cov`` has a clearly negative eigenvalue (not a covariance matrix)."""
    eig = np.linalg.eigvalsh(cov)
    if eig[0] < -PSD_RTOL * max(float(eig[-1]), 0.0) or eig[-1] <= 0.0 and eig[0] < 0.0:
        raise ValueError(
            f"{name} must be positive semi-definite: smallest eigenvalue {eig[0]:.3g} < "
            f"-{PSD_RTOL:g} * largest {eig[-1]:.3g}"
        )


def as_vector(values: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    """``values`` as a float64 ``(n,)`` vector (None passes through); ValueError on wrong length."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match cov, got {arr.shape}")
    return arr


def as_prev_weights(prev_weights: np.ndarray | None, n: int) -> np.ndarray | None:
    """Validated ``(n,)`` previous weights (finite), or None."""
    prev = as_vector(prev_weights, n, "prev_weights")
    if prev is not None and not np.all(np.isfinite(prev)):
        raise ValueError(f"prev_weights must be finite, got {prev}")
    return prev


def prepare_cov(cov: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Symmetrized ``cov`` divided by its mean variance ``scale``, ``scale``, and ``""`` or a
    failure status.

    Scaling makes tolerances unit-free; it changes no argmin. Raises ValueError for asymmetric or
    indefinite matrices; returns ``"nan_input"`` / ``"singular_cov"`` for data problems.
    """
    if not np.isfinite(cov).all():
        return cov, 1.0, "nan_input"
    cov = check_symmetric(cov)
    scale = float(cov.trace()) / cov.shape[0]
    if scale <= 0.0:
        check_not_indefinite(cov)
        return cov, 1.0, "singular_cov"
    hessian = cov / scale
    if lapack.dpotrf(hessian)[1] != 0:  # Cholesky failed: not positive definite
        check_not_indefinite(cov)
        return cov, 1.0, "singular_cov"
    return hessian, scale, ""
