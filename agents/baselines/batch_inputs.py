"""Inputs and outcomes of the batched optimizers: validation, covariance preparation, fallbacks.

The batched counterparts of :mod:`defialloc.agents.baselines.constraints`' checks and of the optimizers'
failure policy (see :mod:`defialloc.agents.baselines.batch_optimizers`): one set of numpy calls per batch of
``B`` problems instead of one per problem, with the same statuses and the same errors (naming the
problem's index in the batch).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from defialloc.agents.baselines import constraints as cons_mod
from defialloc.agents.baselines.constraints import FEAS_TOL, SYMMETRY_RTOL, WeightConstraints
from defialloc.agents.baselines.optimizers import SolverFallbackWarning


@dataclass
class BatchSolveInfo:
    """What a batched optimizer did, per problem (the batched form of ``SolveInfo``).

    Attributes:
        status: ``(B,)`` ``"optimal"`` or the failure status (see ``SolveInfo.status``).
        fallback: ``(B,)`` ``"none"``, ``"prev_weights"``, ``"equal_weight"`` or ``"min_variance"``.
        iterations: ``(B,)`` KKT solves or Newton steps.
        serial: ``(B,)`` True where the per-problem solver finished the problem (the batched
            primal-dual guesses gave up, or it was one of the last few still iterating).
    """

    status: np.ndarray
    fallback: np.ndarray
    iterations: np.ndarray
    serial: np.ndarray

    @classmethod
    def empty(cls, b: int) -> BatchSolveInfo:
        return cls(
            np.full(b, "optimal", dtype=object),
            np.full(b, "none", dtype=object),
            np.zeros(b, dtype=np.int64),
            np.zeros(b, dtype=bool),
        )

    @property
    def fallback_used(self) -> np.ndarray:
        """``(B,)`` True where the weights are not the solution of the requested problem."""
        return self.fallback != "none"

    def put(self, index: np.ndarray, other: BatchSolveInfo) -> None:
        """Copy ``other``'s rows into rows ``index``."""
        self.status[index], self.fallback[index] = other.status, other.fallback
        self.iterations[index], self.serial[index] = other.iterations, other.serial


def as_cov_batch(cov: np.ndarray, name: str = "cov") -> np.ndarray:
    """``cov`` as a float64 ``(B, N, N)`` stack; ValueError on a wrong shape."""
    arr = np.asarray(cov, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must be a (B, N, N) stack of square matrices with N >= 1, got shape {arr.shape}"
        )
    return arr


def as_rows(values: np.ndarray | None, b: int, n: int, name: str) -> np.ndarray | None:
    """``(B, n)`` float64 rows (None passes through); ValueError on a wrong shape."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (b, n):
        raise ValueError(f"{name} must have shape ({b}, {n}) to match cov, got {arr.shape}")
    return arr


def prepare_cov_batch(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`defialloc.agents.baselines.constraints.prepare_cov` per matrix of ``cov (B, N, N)``.

    Returns ``(hessian (B, N, N), scale (B,), status (B,))``: the symmetrized matrices divided by
    their mean variance ``scale``, and ``""`` or ``"nan_input"`` / ``"singular_cov"`` per matrix
    (where failed, ``hessian`` is the input and ``scale`` 1). Raises ValueError, naming the matrix,
    for an asymmetric or indefinite one.
    """
    cov = as_cov_batch(cov)
    b, n = cov.shape[0], cov.shape[1]
    hessian, scale = cov.copy(), np.ones(b)
    status = np.full(b, "", dtype=object)
    finite = np.isfinite(cov).all(axis=(1, 2))
    status[~finite] = "nan_input"
    idx = np.flatnonzero(finite)
    c = cov[idx]
    asym = np.abs(c - c.transpose(0, 2, 1)).max(axis=(1, 2), initial=0.0)
    bad = np.flatnonzero(asym > SYMMETRY_RTOL * np.abs(c).max(axis=(1, 2), initial=0.0))
    if bad.size:
        i = int(idx[bad[0]])
        cons_mod.check_symmetric(cov[i], name=f"cov[{i}]")  # raises with the numbers
    c = 0.5 * (c + c.transpose(0, 2, 1))
    sc = np.einsum("bii->b", c) / n
    positive = sc > 0.0
    h = c / np.where(positive, sc, 1.0)[:, None, None]
    pd = positive.copy()
    try:
        np.linalg.cholesky(h[positive])
    except np.linalg.LinAlgError:
        # one failure fails the stack: find which, with the per-problem test (Cholesky by LAPACK)
        for j in np.flatnonzero(positive):
            pd[j] = lapack.dpotrf(h[j])[1] == 0
    for j in np.flatnonzero(~pd):
        cons_mod.check_not_indefinite(c[j], name=f"cov[{int(idx[j])}]")  # raises if indefinite
    status[idx[~pd]] = "singular_cov"
    hessian[idx[pd]], scale[idx[pd]] = h[pd], sc[pd]
    return hessian, scale, status


def feasible_rows(cons: WeightConstraints, w: np.ndarray) -> np.ndarray:
    """``(B,)``: :meth:`WeightConstraints.is_feasible` of each row of ``w (B, n)``."""
    tol = FEAS_TOL * max(1.0, abs(cons.budget))
    total = w.sum(axis=1)
    ok = np.abs(total - cons.budget) <= tol
    if cons.long_only:
        ok &= w.min(axis=1) >= -tol
    if cons.max_weight is not None:
        ok &= np.abs(w).max(axis=1) <= cons.max_weight + tol
    return ok & np.isfinite(total)


def long_only_constraints(n: int, max_weight: float | None, budget: float) -> WeightConstraints:
    return cons_mod.make_constraints(
        n, long_only=True, max_weight=max_weight, budget=budget, max_gross_leverage=None
    )


def fall_back(
    weights: np.ndarray, info: BatchSolveInfo, rows: np.ndarray, status: np.ndarray | str,
    prev: np.ndarray | None, cons: WeightConstraints,
) -> None:  # fmt: skip
    """Rows ``rows`` get the previous weights (no trade), or equal weights without them."""
    if rows.size == 0:
        return
    n = weights.shape[1]
    weights[rows] = prev[rows] if prev is not None else cons.equal_weight(n)
    info.status[rows] = status
    info.fallback[rows] = "prev_weights" if prev is not None else "equal_weight"


def warn_fallbacks(func: str, info: BatchSolveInfo) -> None:
    """One warning per call that names how many problems fell back, by status."""
    used = info.fallback_used
    if used.any():
        kinds, counts = np.unique(info.status[used].astype(str), return_counts=True)
        detail = ", ".join(f"{c} {k}" for k, c in zip(kinds, counts, strict=True))
        warnings.warn(
            f"{func}: {int(used.sum())} of {used.size} problems fell back ({detail})",
            SolverFallbackWarning,
            stacklevel=3,
        )


def as_prev_rows(prev_weights: np.ndarray | None, b: int, n: int) -> np.ndarray | None:
    """Validated ``(B, n)`` previous weights (finite), or None."""
    prev = as_rows(prev_weights, b, n, "prev_weights")
    if prev is not None and not np.isfinite(prev).all():
        row = int(np.flatnonzero(~np.isfinite(prev).all(axis=1))[0])
        raise ValueError(f"prev_weights must be finite, got {prev[row]} in row {row}")
    return prev
