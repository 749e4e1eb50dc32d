"""The backtest of the same export on the same path: the reference a paper run is shown against.

When the feed streams a path a backtest can also run (a replayed period, or a simulated scenario),
the runner backtests the policy on it once, when the ledger is created, with the code every backtest
uses (:func:`defialloc.evaluation.rollout.run_policy`: the replayed period's path seed is 0, as in
``defialloc.evaluation.backtest.run_period_backtest``; a simulated scenario's is its seed), behind the same
kill-switch wrapper when one is on. The marked values go to the ledger's ``reference`` table, one
row per decision bar: paper-view and the MLflow run show paper equity against it (on a replayed
period the two are equal at every bar; tests/test_paper_levered.py). Live feeds have no reference.

``run_policy`` needs numpy, envs and agents only (no torch): the paper runtime stays torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from defialloc.agents.kill_switch_policy import KillSwitchPolicy
from defialloc.agents.onnx_policy import OnnxPolicy
from defialloc.envs.config import SimulationConfig, load_config
from defialloc.envs.kill_switch import KillSwitchConfig
from defialloc.envs.seeds import TRAIN_SEED_BASE
from defialloc.envs.simulator import PortfolioSimulator
from defialloc.training.paper.feeds import Feed, PathFeed


def reference_backtest(
    policy: OnnxPolicy,
    feed: Feed,
    config: SimulationConfig,
    kill_switch: KillSwitchConfig | None,
) -> tuple[dict[str, Any], list[tuple[int, float]]] | None:
    """``(description, [(bar_index, value_usd), ...])`` of the backtest of ``policy`` on the feed's
    path, one row per decision bar (the marked value before trading, as the ``equity`` table), or
    None when the feed has no path a backtest can run."""
    seed = getattr(feed, "backtest_seed", None)
    if not isinstance(feed, PathFeed) or seed is None or not 0 <= seed < TRAIN_SEED_BASE:
        return None
    from defialloc.evaluation.rollout import run_policy

    warmup = config.env.warmup
    horizon = feed.length - warmup - 1
    if horizon < 1:
        return None
    cfg = load_config(config, {"env.horizon": horizon})
    runner = policy if kill_switch is None else KillSwitchPolicy(policy, kill_switch, cfg)
    # the numpy reference simulator, the one the streaming trader steps (one bar at a time, where a
    # compiled step gains nothing): the two are equal bar for bar, and the paper runtime never loads
    # compiled kernels (numba's on-disk cache is read with pickle)
    record = run_policy(
        cfg,
        runner,
        np.array([seed], dtype=np.int64),
        paths=feed.paths,
        simulator=PortfolioSimulator,
    )
    values = record.value_usd[0]
    rows = [(warmup + k, float(v)) for k, v in enumerate(values)]
    description = {
        "kind": "backtest",
        "code": "defialloc.evaluation.rollout.run_policy",
        "path_seed": int(seed),
        "kill_switch": None if kill_switch is None else kill_switch.model_dump(mode="json"),
        "first_bar": warmup,
        "last_bar": warmup + horizon,
    }
    return description, rows
