"""A batched primal active-set QP solver: many small problems that share their constraint rows.

Solves, for every state ``s`` of a batch at once::

    minimize  0.5 z' H_s z + c_s' z   subject to   A z <= b     (the same rows for every state)

with each ``H_s`` symmetric positive definite. Bounds are rows too (``-z_i <= -l_i``). The method is
the textbook primal active-set method (Nocedal & Wright, Numerical Optimization, Alg. 16.3), run in
lockstep over the states that have not converged: from a feasible ``z`` and a working set ``W`` of
rows held as equalities, solve the equality-constrained step, move to the nearest blocking row, and
at a working-set optimum drop the row with the most negative multiplier. A state stops when its step
is zero and every working multiplier is ``>= 0``: the KKT conditions hold, so (``H`` definite) its
``z`` is THE optimum; nothing else is accepted as "optimal".

Why not :func:`defialloc.agents.baselines.qp.solve_qp` per state: its primal-dual guesses cycle on the ceiling's
problems (many rows binding at once) and every problem then pays 15 wasted rounds plus a Python-level
primal loop (~1 ms each). Here one KKT system of FIXED size ``n + m`` per state,
``[[H, A'], [D A, I - D]] [p; lam] = [-g; 0]`` with ``D = diag(row in W)`` (rows outside ``W`` get
``lam_i = 0``), lets ``numpy.linalg.solve`` factor the whole batch in one call. The matrix is
nonsingular whenever ``A_W`` has full row rank, which the method maintains (a blocking row has
``a_i'p > 0`` while ``A_W p = 0``, so it is independent of ``W``). States that reach the iteration
cap or a numerically singular system are handed to ``solve_qp`` one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defialloc.agents.baselines.qp import solve_qp

#: a step below this (relative to max(1, |z|)) is a working-set optimum
NULL_STEP_RTOL = 1e-11
#: multipliers above ``-MULT_RTOL * scale`` count as >= 0 (scale: the gradient's magnitude)
MULT_RTOL = 1e-10
#: a row is "rising" along ``p`` when ``a'p`` exceeds this times ``|p|`` (rounding noise otherwise)
RISE_RTOL = 1e-12


@dataclass
class BatchResult:
    """Outcome of :func:`solve_batch` for ``B`` states.

    Attributes:
        z: ``(B, n)`` solutions (for a non-optimal state: its last feasible iterate).
        working: ``(B, m)`` bool working sets at the solutions (a warm start for nearby problems).
        status: ``(B,)`` ``"optimal"``, or ``"max_iter"`` / ``"singular_kkt"`` where even the
            per-state fallback failed.
        iterations: ``(B,)`` batched iterations each state took (fallback solves not counted).
        fallbacks: states handed to ``solve_qp``.
    """

    z: np.ndarray
    working: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    fallbacks: int


def _kkt_solve(
    hessian: np.ndarray, grad: np.ndarray, rows: np.ndarray, working: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps ``p`` ``(S, n)`` and multipliers ``(S, m)`` of the states' working sets; the third
    output flags the states whose system was numerically singular (their ``p`` is 0)."""
    s, n = grad.shape
    m = rows.shape[0]
    kkt = np.zeros((s, n + m, n + m))
    kkt[:, :n, :n] = hessian
    kkt[:, :n, n:] = rows.T
    w = working.astype(np.float64)
    kkt[:, n:, :n] = w[:, :, None] * rows[None]
    idx = np.arange(m) + n
    kkt[:, idx, idx] = 1.0 - w
    rhs = np.zeros((s, n + m))
    rhs[:, :n] = -grad
    bad = np.zeros(s, dtype=bool)
    try:
        sol = np.linalg.solve(kkt, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:  # one singular system fails the stacked call: solve them apart
        sol = np.zeros((s, n + m))
        for i in range(s):
            try:
                sol[i] = np.linalg.solve(kkt[i], rhs[i])
            except np.linalg.LinAlgError:
                bad[i] = True
    bad |= ~np.isfinite(sol).all(axis=1)
    sol[bad] = 0.0
    return sol[:, :n], sol[:, n:], bad


def solve_batch(
    hessian: np.ndarray,
    linear: np.ndarray,
    rows: np.ndarray,
    rhs: np.ndarray,
    z0: np.ndarray,
    working0: np.ndarray | None = None,
    *,
    max_iter: int | None = None,
) -> BatchResult:
    """Minimize ``0.5 z'H_s z + c_s'z`` s.t. ``rows z <= rhs`` for every state ``s``.

    Args:
        hessian: ``(B, n, n)`` symmetric positive definite.
        linear: ``(B, n)``.
        rows, rhs: ``(m, n)`` and ``(m,)``, shared by every state (bounds included as rows).
        z0: ``(B, n)`` FEASIBLE starting points (e.g. each state's previous solution).
        working0: ``(B, m)`` bool initial working sets: rows active at ``z0`` and linearly
            independent (a previous solution's working set); None: empty.
        max_iter: batched iteration cap (default ``5 (n + m) + 20``); states still running are
            solved by ``solve_qp`` from their feasible iterate.
    """
    b, n = linear.shape
    m = rows.shape[0]
    if hessian.shape != (b, n, n) or z0.shape != (b, n) or rows.shape[1] != n or rhs.shape != (m,):
        raise ValueError(
            f"shapes: hessian {hessian.shape}, linear {linear.shape}, rows {rows.shape}, "
            f"rhs {rhs.shape}, z0 {z0.shape}; expected (B, n, n), (B, n), (m, n), (m,), (B, n)"
        )
    z = z0.astype(np.float64, copy=True)
    working = np.zeros((b, m), dtype=bool) if working0 is None else working0.copy()
    status = np.full(b, "running", dtype=object)
    iterations = np.zeros(b, dtype=np.int64)
    row_norm = np.maximum(np.sqrt((rows * rows).sum(axis=1)), 1e-300)
    bound_col = np.where((rows != 0).sum(axis=1) == 1, np.argmax(rows != 0, axis=1), -1)
    cap = 5 * (n + m) + 20 if max_iter is None else int(max_iter)
    for _ in range(cap):
        live = np.flatnonzero(status == "running")
        if live.size == 0:
            break
        iterations[live] += 1
        zl, wl, hl = z[live], working[live], hessian[live]
        grad = np.einsum("sij,sj->si", hl, zl) + linear[live]
        p, lam, bad = _kkt_solve(hl, grad, rows, wl)
        status[live[bad]] = "singular_kkt"
        size = np.maximum(1.0, np.abs(zl).max(axis=1))
        null = (np.abs(p).max(axis=1) <= NULL_STEP_RTOL * size) & ~bad
        # working-set optimum: optimal if every working multiplier is >= 0, else drop the worst
        scale = np.maximum(np.abs(grad).max(axis=1), np.abs(linear[live]).max(axis=1))
        scale = np.maximum(scale, 1e-300)
        lam_w = np.where(wl, lam / row_norm, np.inf)
        worst = np.argmin(lam_w, axis=1)
        negative = lam_w[np.arange(live.size), worst] < -MULT_RTOL * scale
        done = null & ~negative
        status[live[done]] = "optimal"
        drop = null & negative
        working[live[drop], worst[drop]] = False
        # a step: the nearest row outside W that p runs into (ratio test), or the full step
        move = ~null & ~bad
        if move.any():
            mv = live[move]
            pm, zm, wm = p[move], zl[move], wl[move]
            ap = pm @ rows.T  # (S, m)
            rising = (ap > RISE_RTOL * np.abs(pm).max(axis=1, keepdims=True) * row_norm) & ~wm
            slack = np.maximum(rhs - zm @ rows.T, 0.0)
            ratio = np.where(rising, slack / np.where(rising, ap, 1.0), np.inf)
            block = np.argmin(ratio, axis=1)
            alpha = np.minimum(ratio[np.arange(mv.size), block], 1.0)
            z[mv] = zm + alpha[:, None] * pm
            hit = ratio[np.arange(mv.size), block] <= 1.0
            rows_hit, rows_idx = mv[hit], block[hit]
            working[rows_hit, rows_idx] = True
            # a blocking bound is met exactly (no rounding residue off the bound)
            col = bound_col[rows_idx]
            on_bound = col >= 0
            if on_bound.any():
                r = rows_idx[on_bound]
                c = col[on_bound]
                z[rows_hit[on_bound], c] = rhs[r] / rows[r, c]
    stuck = np.flatnonzero(status != "optimal")
    for s in stuck:  # rare: the robust per-state solver from the feasible iterate
        bounds_lo = np.full(n, -np.inf)
        bounds_hi = np.full(n, np.inf)
        res = solve_qp(
            hessian[s], linear[s], bounds_lo, bounds_hi, z[s], ineq_matrix=rows, ineq_rhs=rhs
        )
        status[s] = res.status
        if res.status == "optimal":
            z[s] = res.x
            working[s] = res.active_rows
    return BatchResult(z, working, status.astype(str), iterations, int(stuck.size))
