"""A small dense primal active-set QP solver for portfolio problems (N up to a few hundred).

Solves::

    minimize    0.5 x'Hx + g'x
    subject to  E x  = e            (k equality rows, e.g. the budget 1'x = b)
                lower <= x <= upper  (box; entries may be +-inf)
                G x <= h            (m general rows, e.g. kappa-trick caps or a gross-leverage facet)

with H symmetric positive definite. This is the textbook primal active-set method (Nocedal & Wright,
Numerical Optimization, Alg. 16.3): from a feasible point, each iteration solves the equality-
constrained QP on the current working set by one dense KKT solve over the free variables (bounds in
the working set fix their variables), steps to the nearest blocking constraint, and drops the
constraint with the most negative multiplier once the working-set optimum is reached. Iterations are
about the number of constraints that change between the start and the optimum, each an ``O(n^3)``
dense solve, which for ten assets is a few microseconds: far below the ~30 ms a cvxpy model takes
just to build. Why not an interior-point method: it cannot warm-start from the previous rebalance's
active set and would need many more linear solves.

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
PDAS_ROUNDS = 6
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
    eq_matrix: np.ndarray,
    eq_rhs: np.ndarray,
    at_lower: np.ndarray,
    at_upper: np.ndarray,
    mult_tol: float,
    feas_tol: float,
) -> tuple[QPResult | None, int]:
    """Primal-dual active-set guess for box + equality problems (Hintermueller, Ito & Kunisch 2002).

    Each round fixes the guessed bounds, solves the equality-constrained QP over the rest, and
    re-guesses: free variables beyond a bound get fixed, fixed ones with a wrong-signed multiplier
    get freed. When the guess repeats, the point satisfies the KKT conditions, so it is optimal.
    It usually needs 2-4 solves where the primal method needs one per active bound, but it may
    cycle, so it gets :data:`PDAS_ROUNDS` rounds before the caller runs the primal method.

    Returns:
        ``(result or None, solves used)``.
    """
    wl, wu = at_lower.copy(), at_upper.copy()
    k = eq_matrix.shape[0]
    for rounds in range(1, PDAS_ROUNDS + 1):
        fixed_mask = wl | wu
        free = (~fixed_mask).nonzero()[0]
        fixed = fixed_mask.nonzero()[0]
        nf = free.size
        if nf < k:
            return None, rounds - 1
        x = np.where(wl, lower, np.where(wu, upper, 0.0))
        kkt = np.zeros((nf + k, nf + k))
        kkt[:nf, :nf] = hessian[free[:, None], free]
        e_free = eq_matrix[:, free]
        kkt[:nf, nf:] = e_free.T
        kkt[nf:, :nf] = e_free
        rhs = np.empty(nf + k)
        rhs[:nf] = -linear[free] - hessian[free[:, None], fixed] @ x[fixed]
        rhs[nf:] = eq_rhs - eq_matrix[:, fixed] @ x[fixed]
        sol, info = _lu_solve(kkt, rhs)
        if info != 0:
            return None, rounds
        x[free] = sol[:nf]
        z = hessian @ x + linear + sol[nf:] @ eq_matrix
        new_wl = (wl & (z >= -mult_tol)) | (~fixed_mask & (x < lower - feas_tol))
        new_wu = (wu & (z <= mult_tol)) | (~fixed_mask & (x > upper + feas_tol))
        if (new_wl == wl).all() and (new_wu == wu).all():
            z[free] = 0.0
            x = np.minimum(np.maximum(x, lower), upper)
            empty = np.zeros(0)
            result = QPResult(x, "optimal", rounds, wl, wu, np.zeros(0, dtype=bool), z, empty)
            return result, rounds
        wl, wu = new_wl, new_wu
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
    # magnitude of the gradient, so that tolerances are invariant to the units of H and g
    x_size = max(1.0, float(abs(x0).max()))
    scale = max(float(abs(hessian).max()) * x_size, float(abs(linear).max()), 1e-300)
    mult_tol = REL_TOL * scale
    step_tol = 1e-14 * x_size
    z = np.zeros(n)
    lam_rows = np.zeros(m)
    status = "max_iter"
    iterations = 0
    pdas_solves = 0
    if m == 0 and k > 0:
        guess, pdas_solves = _pdas(
            hessian, linear, lower, upper, E, eq_rhs, wl, wu, mult_tol, 1e-13 * x_size
        )
        if guess is not None:
            return guess
    for iterations in range(pdas_solves + 1, pdas_solves + cap + 1):  # noqa: B007 - iterations is reported after the loop
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

        # ratio test: the largest step along p that keeps every non-working constraint feasible
        alpha, block_kind, block_idx = 1.0, 0, -1
        x_free = x[free]
        down = p_free < -step_tol
        if down.any():
            r = (lower[free][down] - x_free[down]) / p_free[down]
            i = int(r.argmin())
            if r[i] < alpha:
                alpha, block_kind, block_idx = max(float(r[i]), 0.0), _LOWER, int(free[down][i])
        up = p_free > step_tol
        if up.any():
            r = (upper[free][up] - x_free[up]) / p_free[up]
            i = int(r.argmin())
            if r[i] < alpha:
                alpha, block_kind, block_idx = max(float(r[i]), 0.0), _UPPER, int(free[up][i])
        if m:
            idle = (~wg).nonzero()[0]
            if idle.size:
                gp = G[idle][:, free] @ p_free
                rising = gp > step_tol * row_norm[idle]
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
            if False:
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


def _segments(
    x: np.ndarray, go_up: np.ndarray, kinks: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per variable, the piece ``[seg_lo, seg_hi]`` of ``[lower, upper]`` between consecutive
    ``kinks`` (``(n, K)``, NaN = none) that contains ``x``; at a kink, the piece above it where
    ``go_up`` else the piece below."""
    xc = x[:, None]
    below = (kinks < xc) | ((kinks == xc) & go_up[:, None])
    above = (kinks > xc) | ((kinks == xc) & ~go_up[:, None])
    seg_lo = np.maximum(lower, np.max(np.where(below, kinks, -np.inf), axis=1))
    seg_hi = np.minimum(upper, np.min(np.where(above, kinks, np.inf), axis=1))
    return seg_lo, seg_hi


def solve_qp_l1(
    hessian: np.ndarray,
    linear: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    x0: np.ndarray,
    *,
    eq_matrix: np.ndarray,
    eq_rhs: np.ndarray,
    ineq_matrix: np.ndarray | None = None,
    ineq_rhs: np.ndarray | None = None,
    turnover_anchor: np.ndarray | None = None,
    turnover_penalty: float = 0.0,
    gross_offset: np.ndarray | None = None,
    gross_rhs: float | None = None,
    max_rounds: int | None = None,
) -> QPResult:
    """:func:`solve_qp` plus two convex piecewise-linear terms that make a lifted QP singular::

        + turnover_penalty * ||x - turnover_anchor||_1             (in the objective)
        ||x||_1 + gross_offset'x <= gross_rhs                       (one more constraint)

    The gross row covers ``||w||_1 <= L`` (offset 0, rhs L) and its kappa-trick form
    ``||y||_1 <= (L/b) 1'y`` (offset ``-(L/b) 1``, rhs 0). Each variable is confined to one piece
    between its kinks (``x = anchor``, ``x = 0``), where both terms are linear, and the piecewise QP
    is solved exactly. A variable held at a kink by its bound moves to the adjacent piece when its
    multiplier ``z`` exceeds the slope jump there (``2 tau`` at the anchor, ``2 lambda_gross`` at
    zero): then no subgradient satisfies the full KKT conditions. Otherwise ``z`` is a valid
    subgradient and the point is optimal for the full problem. Each move strictly lowers the
    objective (the value at the kink is shared by both pieces), so the rounds terminate.

    Args are as in :func:`solve_qp`; ``x0`` must satisfy every constraint, the gross row included.
    """
    n = x0.shape[0]
    use_turnover = turnover_anchor is not None and turnover_penalty > 0.0
    use_gross = gross_rhs is not None
    anchor = turnover_anchor if use_turnover else np.full(n, np.nan)
    zero = np.zeros(n) if use_gross else np.full(n, np.nan)
    kinks = np.stack((anchor, zero), axis=1)
    kinks = np.where((kinks > lower[:, None]) & (kinks < upper[:, None]), kinks, np.nan)
    go_up = (hessian @ x0 + linear) < 0.0
    seg_lo, seg_hi = _segments(x0, go_up, kinks, lower, upper)
    G = np.zeros((0, n)) if ineq_matrix is None else ineq_matrix
    h = np.zeros(0) if ineq_rhs is None else ineq_rhs
    if use_gross:
        G = np.concatenate((G, np.zeros((1, n))), axis=0)
        h = np.append(h, float(gross_rhs))
    offset = np.zeros(n) if gross_offset is None else gross_offset
    k = eq_matrix.shape[0]
    wl, wu = initial_bound_set(x0, seg_lo, seg_hi, k)
    wg = np.zeros(G.shape[0], dtype=bool)
    x = x0
    cap = 2 * n + 10 if max_rounds is None else max_rounds
    total_iter = 0
    result: QPResult | None = None
    for _ in range(cap):
        g = linear + (
            turnover_penalty * np.where(seg_lo >= anchor, 1.0, -1.0) if use_turnover else 0.0
        )
        if use_gross:
            G[-1] = np.where(seg_lo >= 0.0, 1.0, -1.0) + offset
        result = solve_qp(
            hessian, g, seg_lo, seg_hi, x,
            eq_matrix=eq_matrix, eq_rhs=eq_rhs, ineq_matrix=G, ineq_rhs=h,
            at_lower=wl, at_upper=wu, active_rows=wg,
        )  # fmt: skip
        total_iter += result.iterations
        result.iterations = total_iter
        if result.status != "optimal":
            return result
        lam_gross = result.row_multipliers[-1] if use_gross else 0.0
        z = result.reduced_gradient
        tol = REL_TOL * max(float(np.max(np.abs(z))), float(np.max(np.abs(hessian))), 1e-300)
        # slope jump of the L1 terms at each piece's ends: 2 tau at the anchor, 2 lambda at zero
        jump_lo = 2.0 * turnover_penalty * (seg_lo == anchor) + 2.0 * lam_gross * (seg_lo == zero)
        jump_hi = 2.0 * turnover_penalty * (seg_hi == anchor) + 2.0 * lam_gross * (seg_hi == zero)
        move_down = result.at_lower & (seg_lo > lower) & (z > jump_lo + tol)
        move_up = result.at_upper & (seg_hi < upper) & (-z > jump_hi + tol)
        if not (np.any(move_down) or np.any(move_up)):
            return result
        x = result.x
        new_lo, new_hi = _segments(x, move_up, kinks, lower, upper)
        moved = move_down | move_up
        seg_lo = np.where(moved, new_lo, seg_lo)
        seg_hi = np.where(moved, new_hi, seg_hi)
        wl = result.at_lower & ~move_down
        wu = result.at_upper & ~move_up
        wg = result.active_rows
    assert result is not None
    result.status = "max_iter"
    return result
