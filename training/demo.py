"""The main job behind `make demo`."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from agents.policy import FixedWeightsPolicy, parse_weights
from envs.config import load_config
from evaluation.rollout import run_policy
from training.summary import print_episode_summary


def run_demo(console: Console) -> None:
    """Simulate an equal-weight policy on three calibrated synthetic scenarios and on replayed history."""
    cfg = load_config()
    console.rule("defialloc demo: equal-weight policy on the calibrated synthetic market")
    policy = FixedWeightsPolicy(
        parse_weights("equal", tuple(cfg.market.assets)), name="equal_weight"
    )
    print_episode_summary(run_policy(cfg, policy, np.arange(3)), cfg, console)
