"""Exact solution of portfolio QPs with L1 terms (turnover penalty, gross-leverage cap).

Lifting ``|x|`` into split variables ``x = u - v`` makes the Hessian singular, which the active-set
solver of :mod:`defialloc.agents.baselines.qp` cannot take; instead each variable is confined to one piece
between its kinks, where the L1 terms are linear, and moved across a kink only when the KKT
conditions of the full problem say so.
"""

from __future__ import annotations

import numpy as np

from defialloc.agents.baselines.qp import REL_TOL, QPResult, initial_bound_set, solve_qp


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
