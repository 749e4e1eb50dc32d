"""The active-set QP solves of :mod:`defialloc.agents.baselines.qp` over ``B`` same-size problems at once.

A backtest step rebalances ``B`` envs, each one small QP (5-11 variables). Solved one by one, the
~50 numpy calls per problem cost ~100-400 us of Python overhead against ~2 us of LAPACK work (one
oracle step on 64 envs took ~40 ms). Here each primal-dual active-set round (Hintermueller, Ito &
Kunisch 2002; :func:`defialloc.agents.baselines.qp._pdas`) is one masked KKT assembly and one batched
``np.linalg.solve`` for all problems: a fixed variable's row and column become the identity (its
value, the bound, moves to the right-hand side) and a general row not held becomes
``lambda_r = 0``, so each ``(n + k + m)`` system is the per-problem KKT system up to a permutation
plus decoupled unit rows. Guess updates and tolerances are the per-problem ones, vectorized.
:mod:`defialloc.agents.baselines.batch_l1_qp` adds the turnover L1 term on the same loop.

Problems are strictly convex (``H`` positive definite): the method stops only at the KKT point, the
unique optimum, which is the per-problem solvers' answer to rounding (tested to 1e-8). A problem the
batched rounds do not finish goes to the per-problem solver (``serial`` in the result; the
policies count those as ``serial_qp`` in their diagnostics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from defialloc.agents.baselines import qp as qp_mod
from defialloc.agents.baselines.qp import REL_TOL, QPResult

#: batched rounds a problem gets before the per-problem solver takes it over
BATCH_ROUNDS = 12


@dataclass
class BatchQPResult:
    """Outcome of :func:`solve_qp_batch` / :func:`solve_qp_l1_batch` for ``B`` problems of size ``n``.

    Attributes:
        x: ``(B, n)`` solutions (each problem's last iterate where ``status != "optimal"``).
        status: ``(B,)`` ``"optimal"``, ``"max_iter"`` or ``"singular_kkt"`` per problem.
        iterations: ``(B,)`` KKT solves per problem.
        at_lower, at_upper: ``(B, n)`` bool working-set masks of the bounds at the solution.
        active_rows: ``(B, m)`` bool working-set masks of the general rows.
        reduced_gradient: ``(B, n)`` bound multipliers ``z`` (zero for free variables).
        row_multipliers: ``(B, m)`` multipliers of the general rows.
        serial: ``(B,)`` bool, True where the per-problem code finished the problem.
    """

    x: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    at_lower: np.ndarray
    at_upper: np.ndarray
    active_rows: np.ndarray
    reduced_gradient: np.ndarray
    row_multipliers: np.ndarray
    serial: np.ndarray


def initial_bound_set_batch(
    x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, n_eq: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`defialloc.agents.baselines.qp.initial_bound_set` per row of ``x0 (B, n)``: the bounds each start
    sits on, freeing the lowest-index ones until at least ``n_eq`` variables are free."""
    at_lower = x0 <= lower
    at_upper = (x0 >= upper) & ~at_lower
    fixed = at_lower | at_upper
    excess = fixed.sum(axis=1) - (x0.shape[1] - n_eq)
    unfix = fixed & (np.cumsum(fixed, axis=1) <= excess[:, None])
    return at_lower & ~unfix, at_upper & ~unfix


def _batch(arr: np.ndarray | None, b: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``arr`` broadcast to ``(b, *shape)`` (a shared ``shape`` array is repeated), as float64."""
    if arr is None:
        return np.zeros((b, *shape))
    out = np.asarray(arr, dtype=np.float64)
    if out.shape == shape:
        out = np.broadcast_to(out, (b, *shape))
    if out.shape != (b, *shape):
        raise ValueError(f"{name} must have shape {shape} or {(b, *shape)}, got {out.shape}")
    return out


def _rows(arr: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Rows ``a`` of a batched input; an input shared by every problem (a broadcast view) stays one
    row that numpy broadcasts, instead of ``len(a)`` copies."""
    return arr[:1] if arr.strides[0] == 0 else arr[a]


def _solve_stack(kkt: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve every ``kkt[i] sol = rhs[i]``; ``(solutions, ok mask)`` (singular matrices not ok)."""
    try:
        return np.linalg.solve(kkt, rhs[..., None])[..., 0], np.ones(kkt.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        # one singular matrix fails the whole stack: redo them one by one to find it
        sol = np.zeros_like(rhs)
        ok = np.ones(kkt.shape[0], dtype=bool)
        for i in range(kkt.shape[0]):
            try:
                sol[i] = np.linalg.solve(kkt[i], rhs[i])
            except np.linalg.LinAlgError:
                ok[i] = False
        return sol, ok


def _matvec(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``a[b] @ v[b]`` for every problem: ``(B, r, c), (B, c) -> (B, r)``."""
    return np.matmul(a, v[..., None])[..., 0]


def _kkt(
    H: np.ndarray, E: np.ndarray, G: np.ndarray, free: np.ndarray, wg: np.ndarray
) -> np.ndarray:
    """``(B, n+k+m, n+k+m)`` KKT matrices of the working sets: each problem's per-problem KKT
    matrix (free variables, equality rows, held rows) up to a permutation, plus unit rows for the
    fixed variables and the rows not held (their value and multiplier are pinned by the rhs)."""
    b, n = free.shape
    k, m = E.shape[1], G.shape[1]
    kkt = np.zeros((b, n + k + m, n + k + m))
    # free rows and columns hold H, a fixed variable's row and column the identity
    kkt[:, :n, :n] = np.where(free[:, :, None] & free[:, None, :], H, np.eye(n))
    e_free = np.where(free[:, None, :], E, 0.0)
    kkt[:, n : n + k, :n] = e_free
    kkt[:, :n, n : n + k] = e_free.transpose(0, 2, 1)
    if m:
        g_free = np.where(wg[:, :, None] & free[:, None, :], G, 0.0)
        kkt[:, n + k :, :n] = g_free
        kkt[:, :n, n + k :] = g_free.transpose(0, 2, 1)
        rows = n + k + np.arange(m)
        kkt[:, rows, rows] = ~wg
    return kkt


def _tolerances(H: np.ndarray, lin: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``solve_qp``'s multiplier and feasibility tolerances ``(B,)`` for solves started at ``start``."""
    x_size = np.maximum(1.0, np.abs(start).max(axis=1))
    scale = np.maximum(np.abs(H).max(axis=(1, 2)) * x_size, np.abs(lin).max(axis=1))
    return REL_TOL * np.maximum(scale, 1e-300), 1e-13 * x_size


def _pdas_solve(
    H: np.ndarray, lin: np.ndarray, lo: np.ndarray, up: np.ndarray, E: np.ndarray, e: np.ndarray,
    G: np.ndarray, h: np.ndarray, wl: np.ndarray, wu: np.ndarray, wg: np.ndarray,
    free: np.ndarray, ok: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One primal-dual solve per problem (``qp._pdas``'s KKT step): the QP with the guessed bounds
    fixed and the guessed rows held as equalities. Returns ``(x, lam, z)``: the iterate, the row
    multipliers (0 for rows not held) and the reduced gradient. Sets ``ok`` False where the KKT
    matrix is singular (rows already False are not solved)."""
    n, k, m = lin.shape[1], E.shape[1], G.shape[1]
    xf = np.where(wl, lo, np.where(wu, up, 0.0))  # fixed values, 0 where free
    kkt = _kkt(H, E, G, free, wg)
    rhs = np.empty((lin.shape[0], n + k + m))
    rhs[:, :n] = np.where(free, -lin - _matvec(H, xf), xf)
    rhs[:, n : n + k] = e - _matvec(E, xf)
    if m:
        rhs[:, n + k :] = np.where(wg, h - _matvec(G, xf), 0.0)
    if not ok.all():
        kkt[~ok] = np.eye(n + k + m)  # not solved; keeps the stack solvable
    sol, nonsingular = _solve_stack(kkt, rhs)
    ok &= nonsingular
    x = np.where(free, sol[:, :n], xf)
    lam = np.where(wg, sol[:, n + k :], 0.0)
    z = _matvec(H, x) + lin + _matvec(E.transpose(0, 2, 1), sol[:, n : n + k])
    if m:
        z += _matvec(G.transpose(0, 2, 1), lam)
    return x, lam, z


def _piece(
    x: np.ndarray, go_up: np.ndarray, kink: np.ndarray, lo: np.ndarray, up: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``l1_qp._segments`` for one kink per variable (NaN: none), on ``(B, n)`` arrays: the piece of
    ``[lo, up]`` that contains ``x``; at the kink, the piece above it where ``go_up``."""
    below = (kink < x) | ((kink == x) & go_up)
    above = (kink > x) | ((kink == x) & ~go_up)
    return np.where(below, np.maximum(lo, kink), lo), np.where(above, np.minimum(up, kink), up)


def _keep_enough_free(
    new_l: np.ndarray, new_u: np.ndarray, new_g: np.ndarray, free: np.ndarray, x: np.ndarray,
    lo: np.ndarray, up: np.ndarray, k: int, rows: np.ndarray,
) -> None:  # fmt: skip
    """Where a new guess would fix so many variables that the held rows over-determine ``x``
    (``qp._pdas`` gives up there), keep free the newly fixed variables that violate their bounds
    least, until enough are free. A heuristic that departs from the per-problem guess sequence:
    without it most turnover-penalized problems give up as soon as the one variable that carries
    the budget leaves its piece. It can only change the path, not the answer: the method stops
    only at a KKT point of the strictly convex problem (the unique optimum), or hands over."""
    fixed = new_l | new_u
    deficit = k + new_g.sum(axis=1) - (~fixed).sum(axis=1)
    rows = np.flatnonzero(rows & (deficit > 0))
    if rows.size == 0:
        return
    newly = fixed[rows] & free[rows]
    xr = x[rows]
    violation = np.where(newly, np.maximum(lo[rows] - xr, xr - up[rows]), np.inf)
    need, idx = deficit[rows], np.arange(rows.size)
    for step in range(int(need.max())):  # usually one: the variable that carried the budget
        j = violation.argmin(axis=1)
        pick = (need > step) & np.isfinite(violation[idx, j])
        new_l[rows[pick], j[pick]] = False
        new_u[rows[pick], j[pick]] = False
        violation[idx[pick], j[pick]] = np.inf


def _put(out: BatchQPResult, i: int, res: QPResult) -> None:
    """Store a per-problem result as problem ``i`` of the batch."""
    out.x[i], out.status[i], out.iterations[i] = res.x, res.status, res.iterations
    out.at_lower[i], out.at_upper[i] = res.at_lower, res.at_upper
    out.active_rows[i] = res.active_rows[: out.active_rows.shape[1]]
    out.reduced_gradient[i] = res.reduced_gradient
    out.row_multipliers[i] = res.row_multipliers[: out.row_multipliers.shape[1]]
    out.serial[i] = True


def _active_set_batch(
    H: np.ndarray, g: np.ndarray, lo: np.ndarray, up: np.ndarray, x0: np.ndarray,
    E: np.ndarray, e: np.ndarray, G: np.ndarray, h: np.ndarray,
    wl0: np.ndarray, wu0: np.ndarray, wg0: np.ndarray,
    pieces: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
    serial: Callable[[int], QPResult],
) -> BatchQPResult:  # fmt: skip
    """The solver behind :func:`solve_qp_batch` (``pieces`` None) and :func:`solve_qp_l1_batch`.

    Primal-dual active-set rounds for all problems in lockstep: one batched KKT solve per round,
    then each problem's guess update (``qp._pdas``'s rule). With ``pieces = (anchor, tau, kinks,
    seg_lo, seg_hi)`` every variable lives on one piece between its kinks (as in
    :func:`~defialloc.agents.baselines.l1_qp.solve_qp_l1`), and a variable held at a kink moves to the next
    piece as soon as its multiplier exceeds the slope jump there (``2 tau``) instead of after its
    piecewise QP converged: one semismooth-Newton loop instead of nested loops.

    A problem stops when its guess repeats and no variable moves: the KKT conditions of the full
    problem hold, and the strictly convex problem has one optimum, the per-problem solvers' answer.
    A stopped problem stays in the working arrays, frozen (its guess no longer changes, so its
    solve repeats bit for bit), until at most half of them still iterate: then the working arrays
    are compacted. Gathering and scattering a dozen arrays every round would cost more than
    re-solving a few finished 6x6 systems.

    A problem whose guess over-determines ``x`` (rows only: bounds are kept free enough by
    :func:`_keep_enough_free`), whose KKT matrix is singular or that has not stopped in
    :data:`BATCH_ROUNDS` rounds is solved by ``serial(i)``: the per-problem solver on the
    original inputs (flagged in ``serial``).
    """
    b, n = g.shape
    k, m = E.shape[1], G.shape[1]
    if pieces is None:
        anchor = tau = kinks = None
        seg_lo, seg_hi, lin = lo, up, g
    else:
        anchor, tau, kinks, seg_lo, seg_hi = pieces
        lin = g + tau[:, None] * np.where(seg_lo >= anchor, 1.0, -1.0)
    mult_tol, feas_tol = _tolerances(H, lin, x0)
    row_norm = np.sqrt(np.einsum("bij,bij->bi", G, G))
    row_norm[row_norm == 0.0] = 1.0  # an all-zero row (0 <= h) never binds; avoid 0 / 0
    out = BatchQPResult(
        x=x0.copy(),
        status=np.full(b, "optimal", dtype=object),
        iterations=np.zeros(b, dtype=np.int64),
        at_lower=wl0.copy(),
        at_upper=wu0.copy(),
        active_rows=wg0.copy(),
        reduced_gradient=np.zeros((b, n)),
        row_multipliers=np.zeros((b, m)),
        serial=np.zeros(b, dtype=bool),
    )
    # working arrays of the problems in `idx`; `live`: still iterating
    per_problem = {
        "H": H, "g": g, "lo": lo, "up": up, "lin": lin, "sl": seg_lo, "sh": seg_hi,
        "wl": wl0, "wu": wu0, "wg": wg0, "mt": mult_tol[:, None], "ft": feas_tol[:, None],
        "rn": row_norm, "h_size": np.abs(H).max(axis=(1, 2))[:, None],
    }  # fmt: skip
    if pieces is not None:
        per_problem |= {"anchor": anchor, "tau": tau[:, None], "kinks": kinks}
    w = {name: arr.copy() for name, arr in per_problem.items()}
    Ew, ew, Gw, hw = _rows(E, slice(None)), _rows(e, slice(None)), _rows(G, slice(None)), _rows(h, slice(None))  # fmt: skip
    idx = np.arange(b)
    live, handed = np.ones(b, dtype=bool), np.zeros(b, dtype=bool)
    done_at = np.zeros(b, dtype=np.int64)
    last = None

    def retire(rows: np.ndarray) -> None:
        """Write the outputs of the finished working rows ``rows`` (bool)."""
        x, lam, z, free = last
        i = idx[rows]
        out.x[i] = np.minimum(np.maximum(x[rows], w["sl"][rows]), w["sh"][rows])
        out.iterations[i] = done_at[rows]
        out.at_lower[i], out.at_upper[i], out.active_rows[i] = w["wl"][rows], w["wu"][rows], w["wg"][rows]  # fmt: skip
        out.reduced_gradient[i] = np.where(free[rows], 0.0, z[rows])
        out.row_multipliers[i] = lam[rows]

    def hand_over(rows: np.ndarray) -> None:
        for i in idx[rows]:
            _put(out, i, serial(int(i)))

    for rounds in range(1, BATCH_ROUNDS + 1):
        wl, wu, wg = w["wl"], w["wu"], w["wg"]
        free = ~(wl | wu)
        # a guess that over-determines x fails; a handed-over problem is not solved again
        ok = (free.sum(axis=1) >= k + wg.sum(axis=1)) & ~handed
        sl, sh = w["sl"], w["sh"]
        x, lam, z = _pdas_solve(w["H"], w["lin"], sl, sh, Ew, ew, Gw, hw, wl, wu, wg, free, ok)
        last = (x, lam, z, free)
        mt, ft = w["mt"], w["ft"]
        new_l = (wl & (z >= -mt)) | (free & (x < sl - ft))
        new_u = (wu & (z <= mt)) | (free & (x > sh + ft))
        same = (new_l == wl).all(axis=1) & (new_u == wu).all(axis=1)
        new_g = wg
        if m:
            rn = w["rn"]
            violated = _matvec(Gw, x) - hw > ft * rn
            new_g = (wg & (lam >= -mt / rn)) | (~wg & violated)
            same &= (new_g == wg).all(axis=1)
        if pieces is not None:
            # solve_qp_l1's rule: a variable held at a kink by its piece's bound crosses it when
            # its multiplier exceeds the slope jump there (2 tau)
            zf = np.where(free, 0.0, z)
            tol = REL_TOL * np.maximum(np.abs(zf).max(axis=1, keepdims=True), w["h_size"])
            jump = 2.0 * w["tau"]
            down = wl & (sl > w["lo"]) & (zf > jump * (sl == w["anchor"]) + tol)
            rise = wu & (sh < w["up"]) & (-zf > jump * (sh == w["anchor"]) + tol)
            moved = down | rise
            same &= ~moved.any(axis=1)
        done = live & same & ok
        done_at[done] = rounds
        failed = live & ~ok
        live &= ~done & ~failed
        handed |= failed
        go = live[:, None]
        if pieces is not None and live.any():
            # a crossing variable is free on its new piece (and no longer held at the kink)
            new_l &= ~down
            new_u &= ~rise
            new_lo, new_hi = _piece(x, rise, w["kinks"], w["lo"], w["up"])
            mv = go & moved
            w["sl"], w["sh"] = np.where(mv, new_lo, sl), np.where(mv, new_hi, sh)
            w["lin"] = np.where(mv, w["g"] + w["tau"] * np.where(w["sl"] >= w["anchor"], 1.0, -1.0), w["lin"])  # fmt: skip
        if live.any():
            _keep_enough_free(new_l, new_u, new_g, free, x, sl, sh, k, live)
            w["wl"], w["wu"] = np.where(go, new_l, wl), np.where(go, new_u, wu)
            if m:
                w["wg"] = np.where(go, new_g, wg)
        if failed.any():
            hand_over(failed)
        n_live = int(live.sum())
        if n_live == 0:
            break
        if 2 * n_live <= live.size:  # compact: retire the finished rows, keep the live ones
            retire(~live & ~failed & (done_at > 0))
            keep = np.flatnonzero(live)
            w = {name: arr[keep] for name, arr in w.items()}
            Ew, ew, Gw, hw = _rows(E, idx[keep]), _rows(e, idx[keep]), _rows(G, idx[keep]), _rows(h, idx[keep])  # fmt: skip
            idx, live, done_at, handed = idx[keep], live[keep], done_at[keep], handed[keep]
            last = None
    if last is not None:
        retire(~live & (done_at > 0))
    hand_over(live)
    return out


def _inputs(
    hessian: np.ndarray, linear: np.ndarray, lower: np.ndarray, upper: np.ndarray,
    x0: np.ndarray, eq_matrix: np.ndarray, eq_rhs: np.ndarray,
    ineq_matrix: np.ndarray | None, ineq_rhs: np.ndarray | None,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """The problem data as float64 batches: ``H (B,n,n)``, ``g, lo, up, x0 (B,n)``, ``E (B,k,n)``,
    ``e (B,k)``, ``G (B,m,n)``, ``h (B,m)``."""
    H = np.asarray(hessian, dtype=np.float64)
    if H.ndim != 3 or H.shape[1] != H.shape[2]:
        raise ValueError(f"hessian must be a (B, n, n) stack, got shape {H.shape}")
    b, n = H.shape[0], H.shape[1]
    k = np.asarray(eq_matrix).shape[-2]
    m = 0 if ineq_matrix is None else np.asarray(ineq_matrix).shape[-2]
    return (
        H,
        _batch(linear, b, (n,), "linear"),
        _batch(lower, b, (n,), "lower"),
        _batch(upper, b, (n,), "upper"),
        _batch(x0, b, (n,), "x0").copy(),
        _batch(eq_matrix, b, (k, n), "eq_matrix"),
        _batch(eq_rhs, b, (k,), "eq_rhs"),
        _batch(ineq_matrix, b, (m, n), "ineq_matrix"),
        _batch(ineq_rhs, b, (m,), "ineq_rhs"),
    )


def _masks(mask: np.ndarray | None, b: int, size: int) -> np.ndarray:
    return np.zeros((b, size), dtype=bool) if mask is None else np.array(mask, dtype=bool)


def solve_qp_batch(
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
    at_lower: np.ndarray | None = None,
    at_upper: np.ndarray | None = None,
    active_rows: np.ndarray | None = None,
) -> BatchQPResult:
    """:func:`defialloc.agents.baselines.qp.solve_qp` on ``B`` problems: ``min 0.5 x'H_b x + g_b'x`` s.t.
    ``E_b x = e_b``, ``lower_b <= x <= upper_b``, ``G_b x <= h_b``.

    Args:
        hessian: ``(B, n, n)`` symmetric positive definite.
        linear, lower, upper, x0: ``(B, n)`` (bounds may be ``+-inf``; ``x0`` feasible).
        eq_matrix, eq_rhs: ``(k, n)`` / ``(k,)`` shared by every problem, or ``(B, k, n)`` / ``(B, k)``.
        ineq_matrix, ineq_rhs: ``(m, n)`` / ``(m,)`` shared, or ``(B, m, n)`` / ``(B, m)``.
        at_lower, at_upper, active_rows: ``(B, n)`` / ``(B, m)`` initial working sets (warm start).
    """
    H, g, lo, up, x, E, e, G, h = _inputs(
        hessian, linear, lower, upper, x0, eq_matrix, eq_rhs, ineq_matrix, ineq_rhs
    )
    b, n, m = g.shape[0], g.shape[1], G.shape[1]
    wl, wu, wg = _masks(at_lower, b, n), _masks(at_upper, b, n), _masks(active_rows, b, m)

    def serial(i: int) -> QPResult:
        return qp_mod.solve_qp(
            H[i], g[i], lo[i], up[i], x[i], eq_matrix=E[i], eq_rhs=e[i], ineq_matrix=G[i],
            ineq_rhs=h[i], at_lower=wl[i], at_upper=wu[i], active_rows=wg[i],
        )  # fmt: skip

    return _active_set_batch(H, g, lo, up, x, E, e, G, h, wl, wu, wg, None, serial)
