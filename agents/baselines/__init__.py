"""Mean-variance baselines: fast long-only/capped/levered portfolio optimizers and moment estimators.

Pure numpy/scipy/scikit-learn (no env code). Optimizers return ``(N,)`` weights over the risky assets
(cash = ``1 - sum(w)``); the ``solve_*`` variants also return a :class:`SolveInfo`. Estimators take a
``(T, N)`` window of per-step returns and return per-step moments. See docs/baselines.md.
"""

from defialloc.agents.baselines.estimators import ewma_cov, ledoit_wolf_cov, sample_cov, shrunk_mean
from defialloc.agents.baselines.optimizers import (
    SolveInfo,
    SolverFallbackWarning,
    max_sharpe_weights,
    mean_variance_weights,
    min_variance_weights,
    risk_parity_weights,
    solve_max_sharpe,
    solve_mean_variance,
    solve_min_variance,
    solve_risk_parity,
)

__all__ = [
    "SolveInfo",
    "SolverFallbackWarning",
    "ewma_cov",
    "ledoit_wolf_cov",
    "max_sharpe_weights",
    "mean_variance_weights",
    "min_variance_weights",
    "risk_parity_weights",
    "sample_cov",
    "shrunk_mean",
    "solve_max_sharpe",
    "solve_mean_variance",
    "solve_min_variance",
    "solve_risk_parity",
]
from defialloc.agents.baselines.policies import (  # noqa: E402, F401
    BASELINES,
    FEASIBLE_BASELINES,
    UPPER_REFERENCES,
    make_policy,
)
