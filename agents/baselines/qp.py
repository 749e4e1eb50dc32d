"""A small dense primal active-set QP solver for portfolio problems (N up to a few hundred).

Solves::

    minimize    0.5 x'Hx + g'x
    subject to  E x  = e            (k equality rows, e.g. the budget 1'x = b)
                lower <= x <= upper  (box; entries may be +-inf)
                G x <= h            (m general rows, e.g. kappa-trick caps or a gross-leverage facet)

with H symmetric positive definite. Two active-set methods share the working-set bookkeeping:

1. The primal-dual active-set method (Hintermueller, Ito & Kunisch 2002) guesses which bounds and
   rows bind, solves the equality-constrained QP with them held, and re-guesses from the primal
   violations and multiplier signs; a repeated guess is a KKT point. It typically needs 2-8 dense
   KKT solves whatever the number of active bounds, but may cycle.
2. If it has not converged after :data:`PDAS_ROUNDS` rounds, the textbook primal active-set method
   (Nocedal & Wright, Numerical Optimization, Alg. 16.3) takes over from the feasible ``x0``: each
   iteration solves the equality-constrained QP on the working set, steps to the nearest blocking
   constraint, and drops the constraint with the most negative multiplier at a working-set
   optimum. It cannot cycle in practice (it only ever adds independent constraints), but needs
   about one iteration per constraint that changes between ``x0`` and the optimum.

Each solve is one dense ``(n_free + n_active)`` LU factorization: a few microseconds for ten assets,
against the ~3 ms PyPortfolioOpt/cvxpy spends per problem here (model build plus Clarabel). Why not
an interior-point method: it cannot warm-start from the previous rebalance's active set and needs
more, and larger, linear solves.

Multipliers follow ``grad f(x) + E'nu + G_W' lambda_W = z``, where ``z`` (the reduced gradient) is
``>= 0`` at lower bounds, ``<= 0`` at upper bounds, zero for free variables, and ``lambda >= 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

#: relative tolerance on multipliers and feasibility (scaled by the problem's magnitude)
REL_TOL = 1e-10
_LOWER, _UPPER, _ROW = 1, 2, 3
#: primal-dual active-set rounds tried before the primal active-set method
PDAS_ROUNDS = 15
#: a primal step below this (relative to max|x|) is treated as zero
NULL_STEP_RTOL = 1e-11
_NO_ROWS = np.zeros(0, dtype=np.intp)


def _lu_solve(matrix: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, int]:
    """``matrix^-1 rhs`` by LAPACK's dgesv (np.linalg.solve's Python overhead triples the cost of a
    10x10 solve); ``info != 0`` flags a singular matrix."""
    _, _, sol, info = lapack.dgesv(matrix, rhs)
    return sol, int(info)


@dataclass
class QPResult:
    """Outcome of :func:`solve_qp`.

    Attributes:
        x: ``(n,)`` solution (the last iterate when ``status != "optimal"``).
        status: ``"optimal"``, ``"max_iter"`` or ``"singular_kkt"``.
        iterations: KKT solves performed.
        at_lower, at_upper: ``(n,)`` bool working-set masks of bounds at the solution.
        active_rows: ``(m,)`` bool working-set mask of general rows at the solution.
        reduced_gradient: ``(n,)`` bound multipliers ``z`` (``>= 0`` at lower, ``<= 0`` at upper).
        row_multipliers: ``(m,)`` multipliers of the general rows (``>= 0``, zero when inactive).
    """

    x: np.ndarray
    status: str
    iterations: int
    at_lower: np.ndarray
    at_upper: np.ndarray
    active_rows: np.ndarray
    reduced_gradient: np.ndarray
    row_multipliers: np.ndarray


def initial_bound_set(
    x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, n_eq: int
) -> tuple[np.ndarray, np.ndarray]:
    """Working-set masks of the bounds that ``x0`` sits on, kept linearly independent of the
    ``n_eq`` equality rows by leaving at least ``n_eq`` variables free (valid for equality rows
    with no zero entries, such as the budget row)."""
    at_lower = x0 <= lower
    at_upper = (x0 >= upper) & ~at_lower
    fixed = np.flatnonzero(at_lower | at_upper)
    excess = fixed.size - (x0.size - n_eq)
    if excess > 0:
        at_lower[fixed[:excess]] = False
        at_upper[fixed[:excess]] = False
    return at_lower, at_upper


def _pdas(
    hessian: np.ndarray,
    linear: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    eq: tuple[np.ndarray, np.ndarray],
    ineq: tuple[np.ndarray, np.ndarray, np.ndarray],
    guess: tuple[np.ndarray, np.ndarray, np.ndarray],
    mult_tol: float,
    feas_tol: float,
) -> tuple[QPResult | None, int]:
    """Primal-dual active-set method (Hintermueller, Ito & Kunisch 2002) from a guessed working set.

    Each round fixes the guessed bounds and holds the guessed rows ``G_i x = h_i``, solves that
    equality-constrained QP, and re-guesses: free variables beyond a bound and violated rows join,
    bounds and rows with wrong-signed multipliers leave. When the guess repeats, the point is
    feasible and its multipliers have the right signs: the KKT conditions hold, so it is optimal.
    It usually needs 2-8 solves where the primal method needs one per active constraint, but it
    may cycle or hit a dependent guess, so it gets :data:`PDAS_ROUNDS` rounds before the caller
    falls back to the primal method.

    Args:
        eq: ``(E (k, n), e (k,))``. ineq: ``(G (m, n), h (m,), row norms (m,))``.
        guess: initial ``(at_lower, at_upper, active_rows)`` masks.

    Returns:
        ``(result or None, solves used)``.
    """
    E, e = eq
    G, h, row_norm = ineq
    wl, wu, wg = (mask.copy() for mask in guess)
    k, m = E.shape[0], G.shape[0]
    for rounds in range(1, PDAS_ROUNDS + 1):
        fixed_mask = wl | wu
        free = (~fixed_mask).nonzero()[0]
        fixed = fixed_mask.nonzero()[0]
        rows = wg.nonzero()[0] if m else _NO_ROWS
        cons = E if rows.size == 0 else np.concatenate((E, G[rows]))
        cons_rhs = e if rows.size == 0 else np.concatenate((e, h[rows]))
        nf, nc = free.size, cons.shape[0]
        if nf < nc:
            return None, rounds - 1  # the guess over-determines x
        x = np.where(wl, lower, np.where(wu, upper, 0.0))
        kkt = np.zeros((nf + nc, nf + nc))
        kkt[:nf, :nf] = hessian[free[:, None], free]
        cons_free = cons[:, free]
        kkt[:nf, nf:] = cons_free.T
        kkt[nf:, :nf] = cons_free
        rhs = np.empty(nf + nc)
        rhs[:nf] = -linear[free] - hessian[free[:, None], fixed] @ x[fixed]
        rhs[nf:] = cons_rhs - cons[:, fixed] @ x[fixed]
        sol, info = _lu_solve(kkt, rhs)
        if info != 0:
            return None, rounds
        x[free] = sol[:nf]
        mult = sol[nf:]
        z = hessian @ x + linear + mult @ cons
        new_wl = (wl & (z >= -mult_tol)) | (~fixed_mask & (x < lower - feas_tol))
        new_wu = (wu & (z <= mult_tol)) | (~fixed_mask & (x > upper + feas_tol))
        same = (new_wl == wl).all() and (new_wu == wu).all()
        lam = np.zeros(m)
        if m:
            lam[rows] = mult[k:]
            violated = G @ x - h > feas_tol * row_norm
            new_wg = (wg & (lam >= -mult_tol / row_norm)) | (~wg & violated)
            same = same and (new_wg == wg).all()
            wg_next = new_wg
        if same:
            z[free] = 0.0
            x = np.minimum(np.maximum(x, lower), upper)
            return QPResult(x, "optimal", rounds, wl, wu, wg, z, lam), rounds
        wl, wu = new_wl, new_wu
        if m:
            wg = wg_next
    return None, PDAS_ROUNDS


def solve_qp(
    hessian: np.ndarray,
    linear: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    x0: np.ndarray,
    *,
    eq_matrix: np.ndarray | None = None,
    eq_rhs: np.ndarray | None = None,
    ineq_matrix: np.ndarray | None = None,
    ineq_rhs: np.ndarray | None = None,
    at_lower: np.ndarray | None = None,
    at_upper: np.ndarray | None = None,
    active_rows: np.ndarray | None = None,
    max_iter: int | None = None,
) -> QPResult:
    """Minimize ``0.5 x'Hx + g'x`` over the polytope above, starting from a feasible ``x0``.

    Args:
        hessian: ``(n, n)`` symmetric positive definite ``H``.
        linear: ``(n,)`` linear term ``g``.
        lower, upper: ``(n,)`` box bounds (``-inf``/``inf`` allowed).
        x0: ``(n,)`` feasible starting point (the caller guarantees feasibility).
        eq_matrix, eq_rhs: ``(k, n)`` and ``(k,)`` equality rows (full row rank).
        ineq_matrix, ineq_rhs: ``(m, n)`` and ``(m,)`` rows of ``G x <= h``.
        at_lower, at_upper, active_rows: optional initial working set (warm start); it must hold
            at ``x0`` and be linearly independent together with the equality rows.
        max_iter: iteration cap; default ``10 (n + m) + 20``.
    """
    n = x0.shape[0]
    E = np.zeros((0, n)) if eq_matrix is None else eq_matrix
    G = np.zeros((0, n)) if ineq_matrix is None else ineq_matrix
    h = np.zeros(0) if ineq_rhs is None else ineq_rhs
    k, m = E.shape[0], G.shape[0]
    wl = np.zeros(n, dtype=bool) if at_lower is None else at_lower.copy()
    wu = np.zeros(n, dtype=bool) if at_upper is None else at_upper.copy()
    wg = np.zeros(m, dtype=bool) if active_rows is None else active_rows.copy()
    cap = 10 * (n + m) + 20 if max_iter is None else max_iter
    x = x0.astype(np.float64, copy=True)
    row_norm = np.sqrt(np.einsum("ij,ij->i", G, G)) if m else np.zeros(0)
    row_norm[row_norm == 0.0] = 1.0  # an all-zero row (0 <= h) never binds; avoid 0 / 0
    # magnitude of the gradient, so that tolerances are invariant to the units of H and g
    x_size = max(1.0, float(abs(x0).max()))
    scale = max(float(abs(hessian).max()) * x_size, float(abs(linear).max()), 1e-300)
    mult_tol = REL_TOL * scale
    step_tol = 1e-14 * x_size
    z = np.zeros(n)
    lam_rows = np.zeros(m)
    status = "max_iter"
    iterations = 0
    e = np.zeros(0) if eq_rhs is None else eq_rhs
    pdas_result, pdas_solves = _pdas(
        hessian, linear, lower, upper, (E, e), (G, h, row_norm), (wl, wu, wg), mult_tol,
        1e-13 * x_size,
    )  # fmt: skip
    if pdas_result is not None:
        return pdas_result
    # the loop variable is reported after the loop (B007 does not apply)
    for iterations in range(pdas_solves + 1, pdas_solves + cap + 1):  # noqa: B007
        free = (~(wl | wu)).nonzero()[0]
        rows_g = wg.nonzero()[0] if m else _NO_ROWS
        nf = free.size
        cons = E[:, free] if rows_g.size == 0 else np.concatenate((E, G[rows_g]))[:, free]
        nc = cons.shape[0]
        grad = hessian @ x + linear
        kkt = np.zeros((nf + nc, nf + nc))
        kkt[:nf, :nf] = hessian[free[:, None], free]
        kkt[:nf, nf:] = cons.T
        kkt[nf:, :nf] = cons
        rhs = np.zeros(nf + nc)
        rhs[:nf] = -grad[free]
        sol, info = _lu_solve(kkt, rhs)
        if info != 0:
            status = "singular_kkt"
            break
        p_free = sol[:nf]
        mult = sol[nf:]
        p_size = float(abs(p_free).max()) if nf else 0.0
        if p_size <= NULL_STEP_RTOL * x_size:
            # x already minimizes on the working set; a rounding-noise step must not "block" on a
            # constraint that the working set already implies (at a degenerate vertex that
            # dependent constraint would make the next KKT matrix singular)
            p_free = np.zeros(nf)
            p_size = 0.0
        # components below this are rounding noise relative to the step
        p_tol = max(step_tol, 1e-12 * p_size)

        # ratio test: the largest step along p that keeps every non-working constraint feasible
        alpha, block_kind, block_idx = 1.0, 0, -1
        x_free = x[free]
        down = p_free < -p_tol
        if down.any():
            r = (lower[free][down] - x_free[down]) / p_free[down]
            i = int(r.argmin())
            if r[i] < alpha:
                alpha, block_kind, block_idx = max(float(r[i]), 0.0), _LOWER, int(free[down][i])
        up = p_free > p_tol
        if up.any():
            r = (upper[free][up] - x_free[up]) / p_free[up]
            i = int(r.argmin())
            if r[i] < alpha:
                alpha, block_kind, block_idx = max(float(r[i]), 0.0), _UPPER, int(free[up][i])
        if m:
            idle = (~wg).nonzero()[0]
            if idle.size:
                gp = G[idle][:, free] @ p_free
                rising = gp > p_tol * row_norm[idle]
                if rising.any():
                    slack = h[idle][rising] - G[idle][rising] @ x
                    r = slack / gp[rising]
                    i = int(r.argmin())
                    if r[i] < alpha:
                        alpha, block_kind, block_idx = (
                            max(float(r[i]), 0.0),
                            _ROW,
                            int(idle[rising][i]),
                        )
        x[free] = x_free + alpha * p_free
        if block_kind == _LOWER:
            x[block_idx] = lower[block_idx]
            wl[block_idx] = True
            continue
        if block_kind == _UPPER:
            x[block_idx] = upper[block_idx]
            wu[block_idx] = True
            continue
        if block_kind == _ROW:
            wg[block_idx] = True
            continue

        # x is the optimum on the working set: its multipliers decide whether to drop a constraint
        grad += hessian[:, free] @ p_free
        z = grad + mult[:k] @ E if k else grad.copy()
        lam_rows = np.zeros(m)
        if rows_g.size:
            lam_rows[rows_g] = mult[k:]
            z += mult[k:] @ G[rows_g]
        z[free] = 0.0
        worst, drop_kind, drop_idx = -mult_tol, 0, -1
        if nf < n:
            z_lo = np.where(wl, z, np.inf)
            i = int(z_lo.argmin())
            if z_lo[i] < worst:
                worst, drop_kind, drop_idx = float(z_lo[i]), _LOWER, i
            z_hi = np.where(wu, z, -np.inf)
            i = int(z_hi.argmax())
            if -z_hi[i] < worst:
                worst, drop_kind, drop_idx = float(-z_hi[i]), _UPPER, i
        if rows_g.size:
            scaled = mult[k:] / row_norm[rows_g]
            i = int(scaled.argmin())
            if scaled[i] < worst:
                worst, drop_kind, drop_idx = float(scaled[i]), _ROW, int(rows_g[i])
        if drop_kind == 0:
            status = "optimal"
            break
        if drop_kind == _LOWER:
            wl[drop_idx] = False
        elif drop_kind == _UPPER:
            wu[drop_idx] = False
        else:
            wg[drop_idx] = False
            lam_rows[drop_idx] = 0.0
    return QPResult(
        x=x,
        status=status,
        iterations=iterations,
        at_lower=wl,
        at_upper=wu,
        active_rows=wg,
        reduced_gradient=z,
        row_multipliers=lam_rows,
    )
