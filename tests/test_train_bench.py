"""`defialloc bench train`: the step timer passes the env through unchanged and the report adds up."""

import numpy as np
import pytest

from defialloc.envs import make_vec_env
from defialloc.envs.config import REPO_ROOT, load_config
from defialloc.training.bench_train import StepTimer, bench_algorithm
from defialloc.training.config import load_train_config

SIM = load_config(None, {"env.horizon": 10})


def test_step_timer_is_a_transparent_wrapper_that_counts_env_steps():
    plain, timed = (
        make_vec_env(SIM, n_envs=3, seed=5),
        StepTimer(make_vec_env(SIM, n_envs=3, seed=5)),
    )
    np.testing.assert_array_equal(plain.reset(), timed.reset())
    actions = np.random.default_rng(0).uniform(-1, 1, size=(12, 3, plain.action_space.shape[0]))
    for a in actions:  # 12 steps: crosses an episode end (horizon 10) with its automatic reset
        o1, r1, d1, _ = plain.step(a)
        o2, r2, d2, _ = timed.step(a)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(d1, d2)
    assert timed.env_steps == 36
    assert timed.seconds > 0


def test_bench_algorithm_reports_throughput_and_env_share():
    cfg = load_train_config(
        REPO_ROOT / "configs" / "train" / "ppo.yaml",
        {
            "env.horizon": 10,
            "n_envs": 4,
            "ppo.n_steps": 16,
            "ppo.batch_size": 32,
            "ppo.n_epochs": 1,
        },
    )
    result = bench_algorithm(cfg, steps=128)
    assert result["env_steps"] == 128
    assert 0.0 < result["env_share"] < 1.0
    assert result["env_steps_per_s"] == pytest.approx(128 / result["wall_s"], rel=0.02)
    assert result["env_only_steps_per_s"] > result["env_steps_per_s"]
