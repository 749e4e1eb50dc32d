"""Equal-risk-contribution (risk parity) weights by Newton's method on a strictly convex program.

The long-only ERC portfolio solves (Spinu 2013, "An algorithm for computing risk parity weights";
Roncalli, Introduction to Risk Parity and Budgeting, sec. 2.2)::

    y* = argmin_{y > 0}  0.5 y'Σy - (1/N) sum_i log(y_i)

whose first-order condition ``y_i (Σy)_i = 1/N`` for every i says that all risk contributions are
equal; ``w = budget * y* / sum(y*)`` rescales without changing the contributions' equality. The
objective is strictly convex for positive definite Σ, so damped Newton converges globally and
quadratically near the solution (typically 5-8 steps).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

#: stop when every relative risk contribution is within this of 1/N
RC_TOL = 1e-13
MAX_NEWTON_STEPS = 100
#: squared Newton decrement of the self-concordant ``N f`` below which Newton steps are not damped
#: (inside the quadratic-convergence zone: lambda^2 < 0.01, Boyd & Vandenberghe sec. 9.6)
NEWTON_ZONE = 1e-2


def risk_parity_newton(hessian: np.ndarray) -> tuple[np.ndarray, str, int]:
    """Solve the log-barrier program for a positive definite ``(N, N)`` ``hessian``.

    Returns:
        ``(y (N,), status, newton_steps)``; ``y > 0`` is unnormalized (``y'Σy = 1`` at the optimum),
        status ``"optimal"`` or ``"max_iter"``.
    """
    n = hessian.shape[0]
    target = 1.0 / n
    y = 1.0 / np.sqrt(np.diag(hessian))  # inverse-vol start: exact when Σ is diagonal
    y /= np.sqrt(y @ hessian @ y)

    def objective(v: np.ndarray) -> float:
        return 0.5 * float(v @ hessian @ v) - target * float(np.sum(np.log(v)))

    diag = np.arange(n) * (n + 1)
    for step in range(1, MAX_NEWTON_STEPS + 1):
        hy = hessian @ y
        contributions = y * hy
        if float(abs(contributions / contributions.sum() - target).max()) <= RC_TOL * target:
            return y, "optimal", step - 1
        grad = hy - target / y
        newton_hess = hessian.copy()
        newton_hess.flat[diag] += target / (y * y)
        _, direction, info = lapack.dposv(newton_hess, -grad)
        if info != 0:
            return y, "max_iter", step
        slope = float(grad @ direction)  # minus the squared Newton decrement of f
        if not slope < -1e-30:
            return y, "optimal", step - 1  # no descent left: optimal to machine precision
        # stay inside y > 0; damp (Armijo backtracking) only outside the quadratic-convergence
        # zone, since near the optimum the objective's rounding noise exceeds the predicted
        # decrease and would stall the line search
        shrinking = direction < 0.0
        t = 1.0
        if shrinking.any():
            t = min(1.0, 0.99 * float((-y[shrinking] / direction[shrinking]).min()))
        if -slope * n > NEWTON_ZONE:
            f = objective(y)
            while t > 1e-12 and objective(y + t * direction) > f + 1e-4 * t * slope:
                t *= 0.5
        y = y + t * direction
    return y, "max_iter", MAX_NEWTON_STEPS


def risk_parity_newton_batch(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`risk_parity_newton` on ``B`` positive definite matrices ``hessian (B, N, N)`` at once.

    The same start, stopping tests, step-to-boundary rule and Armijo backtracking per problem,
    vectorized (the Newton systems by one batched solve), so each problem takes the same steps as
    the per-problem function, to rounding.

    Returns:
        ``(y (B, N), converged (B,) bool, newton_steps (B,))``.
    """
    b, n = hessian.shape[0], hessian.shape[1]
    target = 1.0 / n
    diag = np.arange(n)
    y = 1.0 / np.sqrt(hessian[:, diag, diag])
    y /= np.sqrt(np.einsum("bi,bij,bj->b", y, hessian, y))[:, None]
    steps = np.full(b, MAX_NEWTON_STEPS, dtype=np.int64)
    converged = np.zeros(b, dtype=bool)
    active = np.ones(b, dtype=bool)

    def objective(h: np.ndarray, v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 0.5 * np.einsum("bi,bij,bj->b", v, h, v) - target * np.log(v).sum(axis=1)

    for step in range(1, MAX_NEWTON_STEPS + 1):
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        h, ya = hessian[a], y[a]
        hy = np.matmul(h, ya[..., None])[..., 0]
        contributions = ya * hy
        share = contributions / contributions.sum(axis=1, keepdims=True)
        stop = np.abs(share - target).max(axis=1) <= RC_TOL * target
        grad = hy - target / ya
        newton_hess = h.copy()
        newton_hess[:, diag, diag] += target / (ya * ya)
        try:
            direction = np.linalg.solve(newton_hess, -grad[..., None])[..., 0]
            solved = np.ones(a.size, dtype=bool)
        except np.linalg.LinAlgError:  # one failure fails the stack: find it
            direction = np.zeros_like(ya)
            solved = np.zeros(a.size, dtype=bool)
            for j in range(a.size):
                try:
                    direction[j] = np.linalg.solve(newton_hess[j], -grad[j])
                    solved[j] = True
                except np.linalg.LinAlgError:
                    pass
        slope = np.einsum("bi,bi->b", grad, direction)  # minus the squared Newton decrement
        no_descent = ~(slope < -1e-30)
        # stopped here: converged (relative contributions equal, or no descent left) or failed
        done_ok = stop | (solved & no_descent)
        failed = ~stop & ~solved
        steps[a[done_ok]] = step - 1
        steps[a[failed]] = step
        converged[a[done_ok]] = True
        active[a[done_ok | failed]] = False
        move = ~done_ok & ~failed
        if not move.any():
            continue
        a, ya, d, sl, h = a[move], ya[move], direction[move], slope[move], h[move]
        # stay inside y > 0; damp (Armijo backtracking) only outside the quadratic-convergence zone
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(d < 0.0, -ya / d, np.inf)
        t = np.minimum(1.0, 0.99 * ratio.min(axis=1))
        damp = -sl * n > NEWTON_ZONE
        if damp.any():
            f = objective(h, ya)
            while True:
                trial = damp & (t > 1e-12)
                if not trial.any():
                    break
                worse = np.zeros(a.size, dtype=bool)
                f_new = objective(h[trial], ya[trial] + t[trial, None] * d[trial])
                worse[trial] = f_new > f[trial] + 1e-4 * t[trial] * sl[trial]
                if not worse.any():
                    break
                t = np.where(worse, 0.5 * t, t)
                damp &= worse
        y[a] = ya + t[:, None] * d
    return y, converged, steps
