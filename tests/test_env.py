"""The Gymnasium contract, accounting identity, determinism and batched == single."""

import sys

import gymnasium as gym
import numpy as np
import pytest

from defialloc import envs
from defialloc.envs import make_env, make_vec_env
from defialloc.envs.actions import weights_to_actions
from defialloc.envs.config import ConfigError

SHORT = {"env.horizon": 60}


def test_gymnasium_and_sb3_env_checkers_pass():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(envs.ENV_ID, **{"env.horizon": 30})
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(make_env(**{"env.horizon": 30}), warn=True)


def test_importing_envs_and_stepping_does_not_load_torch():
    import subprocess

    code = (
        "import sys, numpy as np, envs; e = envs.make_env(seed=0, **{'env.horizon': 5});"
        "e.step(np.zeros(e.action_space.shape)); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _random_action(rng, dim):
    """Mix uniform actions with extreme ones (one-hot, all cash, all -1) to exercise every path."""
    u = rng.uniform()
    if u < 0.6:
        return rng.uniform(-1, 1, dim)
    if u < 0.8:
        a = -np.ones(dim)
        a[rng.integers(dim)] = 1.0
        return a
    if u < 0.9:
        return -np.ones(dim)
    return np.zeros(dim)  # hold near the current allocation if inside the band


def test_accounting_identity_over_10000_random_steps():
    """V(t+1) = V(t) - fees - slippage - gas + sum_i holdings_i (p_i(t+1) - p_i(t)), to 1e-9 relative."""
    env = make_env(seed=11, **{"env.horizon": 365, "env.initial_value_usd": 5e6})
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=11)
    steps, worst, total_costs = 0, 0.0, {"fees": 0.0, "slippage": 0.0, "gas": 0.0}
    while steps < 10_000:
        action = _random_action(rng, env.action_space.shape[0])
        _, _, terminated, truncated, new = env.step(action.astype(np.float32))
        expected = (
            info["portfolio_value"]
            - sum(new["costs"].values())
            + float(np.dot(new["holdings"], new["prices"] - info["prices"]))
        )
        worst = max(worst, abs(new["portfolio_value"] - expected) / info["portfolio_value"])
        assert np.all(new["holdings"] >= -1e-9), new["holdings"]
        for k in total_costs:
            total_costs[k] += new["costs"][k]
        info = new
        steps += 1
        if terminated or truncated:
            _, info = env.reset()
    assert worst < 1e-9
    assert total_costs["fees"] > 0 and total_costs["gas"] > 0 and total_costs["slippage"] > 0


def test_determinism_for_a_seed():
    def run(seed):
        env = make_env(**SHORT)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(5)
        trace = [obs]
        for _ in range(60):
            obs, r, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
            trace.append(np.append(obs, r))
        return np.concatenate(trace)

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_batched_env_equals_single_envs():
    n_envs, seed, steps = (
        4,
        21,
        130,
    )  # crosses an episode boundary (horizon 60): auto-reset included
    venv = make_vec_env(n_envs=n_envs, seed=seed, **SHORT)
    singles = [make_env(**SHORT) for _ in range(n_envs)]
    obs_single = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(singles)])
    obs_batch = venv.reset()
    np.testing.assert_allclose(obs_batch, obs_single, rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        actions = rng.uniform(-1, 1, (n_envs, venv.action_space.shape[0])).astype(np.float32)
        obs_batch, rewards, dones, infos = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(actions[i])
            assert dones[i] == (term or trunc)
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-7)
            if term or trunc:
                np.testing.assert_allclose(
                    infos[i]["terminal_observation"], o, rtol=1e-6, atol=1e-7
                )
                o, _ = env.reset()
            np.testing.assert_allclose(obs_batch[i], o, rtol=1e-6, atol=1e-7)


def test_batched_env_draws_episodes_ahead_in_batches_with_single_env_paths():
    """Early ends at different steps (ruin at -3 %): the batched env draws the next episodes of all
    envs in one batch, yet every env still runs exactly the single env's episodes."""
    n_envs, seed, cfg = 4, 8, {**SHORT, "env.ruin_fraction": 0.97}
    venv = make_vec_env(n_envs=n_envs, seed=seed, **cfg)
    draws = []
    sample = venv.sim.sample_episodes
    venv.sim.sample_episodes = lambda seeds: draws.append(len(seeds)) or sample(seeds)
    singles = [make_env(**cfg) for _ in range(n_envs)]
    for i, env in enumerate(singles):
        env.reset(seed=seed + i)
    venv.reset()
    rng, resets = np.random.default_rng(1), 0
    for _ in range(150):
        actions = rng.uniform(-1, 1, (n_envs, venv.action_space.shape[0])).astype(np.float32)
        obs_batch, rewards, dones, _ = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, term, trunc, _ = env.step(actions[i])
            assert dones[i] == (term or trunc) and rewards[i] == pytest.approx(
                r, rel=1e-5, abs=1e-7
            )
            if term or trunc:
                o, _ = env.reset()
                resets += 1
            np.testing.assert_allclose(obs_batch[i], o, rtol=1e-6, atol=1e-7)
    assert resets >= 6 and len(draws) < resets  # several early ends, fewer draws than resets
    assert sum(draws) <= n_envs + resets + n_envs  # each drawn episode is used (or pending)
    venv.seed(seed)  # re-seeding forgets the episodes drawn ahead: the first episodes come back
    np.testing.assert_allclose(venv.reset(), np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(singles)]), rtol=1e-6, atol=1e-7)  # fmt: skip


def test_simulator_refuses_to_step_an_env_past_its_path():
    """The batched simulator reads each env's rows by a flat time index: an env left un-reset at
    the end of its path must raise, not read the next env's path."""
    from defialloc.envs.simulator import PortfolioSimulator

    venv = make_vec_env(n_envs=2, seed=0, **{"env.horizon": 3})
    sim = PortfolioSimulator(venv.config, 2)
    sim.reset_envs(np.arange(2), np.array([2**62, 2**62 + 1]))
    hold = np.zeros((2, sim.action_dim))
    for _ in range(3):
        sim.step(hold)
    with pytest.raises(RuntimeError, match=r"envs \[0, 1\] are at the end of their path"):
        sim.step(hold)


def test_reset_with_given_paths_rejects_bad_prices():
    env = make_env(**SHORT)
    env.reset(seed=1)
    sim = env.unwrapped.sim
    paths = sim.sample_episodes(np.array([2**62 + 5])).paths
    paths.low[0, sim.warmup + 3, 1] = np.nan
    with pytest.raises(ValueError, match="low must be finite and > 0"):
        env.reset(options={"paths": paths})


def test_ruin_terminates_and_horizon_truncates():
    env = make_env(seed=0, **{"env.horizon": 5})
    done = [env.step(np.zeros(env.action_space.shape, np.float32))[2:4] for _ in range(5)]
    assert done[-1] == (False, True) and all(d == (False, False) for d in done[:-1])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.action_space.shape, np.float32))
    env = make_env(seed=0, **{"env.horizon": 5, "env.ruin_fraction": 0.999})
    # all-in on the first asset after paying costs: value dips under 99.9% of the start at once
    action = weights_to_actions(np.eye(env.action_space.shape[0])[0]).astype(np.float32)
    assert env.step(action)[2] is True


def test_info_keys_and_alignment():
    env = make_env(seed=0, **SHORT)
    _, _, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    for key in ("portfolio_value", "holdings", "weights", "prices", "costs", "turnover", "regime"):
        assert key in info
    assert set(info["costs"]) >= {"fees", "slippage", "gas"}
    names = env.unwrapped.asset_names
    assert len(names) == len(info["holdings"]) == len(info["weights"]) == len(info["prices"])
    np.testing.assert_allclose(
        info["weights"], info["holdings"] * info["prices"] / info["portfolio_value"], rtol=1e-9
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"env.horizon": 0}, "env.horizon"),
        ({"env.amm.tiers": [{"fee": -0.01, "depth_share": 1.0}]}, "fee"),
        ({"env.amm.depth_usd": {"BTC": 0.0}}, "depth_usd"),
        ({"env.horizn": 10}, "horizn"),
        ({"env.warmup": 5}, "warmup"),
    ],
)
def test_bad_config_values_get_clear_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_env(**overrides)


def test_bad_action_gets_clear_error():
    env = make_env(seed=0, **SHORT)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(env.action_space.shape, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(env.action_space.shape[0] + 1, np.float32))
