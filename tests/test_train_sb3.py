"""agents/sb3.py (factory, observation normalizer, SB3Policy) and the validation metrics."""

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecNormalize

from defialloc.agents.sb3 import ObsNormalizer, SB3Policy, make_agent, policy_kwargs, resolve_device
from defialloc.agents.sb3_io import save_statistics
from defialloc.envs import make_vec_env
from defialloc.envs.config import load_config
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.metrics import max_drawdown, sharpe_ratio
from defialloc.evaluation.rollout import EpisodeRecord, run_policy
from defialloc.training.callbacks import validation_metrics

SIM = load_config(None, {"env.horizon": 20})


@pytest.fixture(scope="module")
def trained():
    """A PPO model after a few updates, with non-trivial VecNormalize statistics."""
    torch.set_num_threads(1)
    venv = VecNormalize(make_vec_env(SIM, n_envs=4, seed=0), norm_reward=False)
    cfg = {
        "policy": {"net_arch": [16, 16], "log_std_init": -0.5},
        "n_steps": 32,
        "batch_size": 64,
        "n_epochs": 2,
    }
    model = make_agent("ppo", venv, cfg, "cpu", seed=0)
    model.learn(256)
    return model, venv


def test_policy_kwargs_map_config_to_sb3():
    ppo = policy_kwargs("ppo", {"net_arch": [32, 16], "activation": "tanh", "log_std_init": -1.0})
    assert ppo["net_arch"] == {"pi": [32, 16], "vf": [32, 16]}
    assert ppo["activation_fn"] is torch.nn.Tanh
    assert ppo["log_std_init"] == -1.0
    sac = policy_kwargs(
        "sac",
        {"net_arch": [64], "critic_arch": [128, 128], "activation": "relu", "log_std_init": -1.0},
    )
    assert sac["net_arch"] == {"pi": [64], "qf": [128, 128]}
    assert sac["activation_fn"] is torch.nn.ReLU
    # SAC uses log_std_init only with gSDE: dropped rather than silently ignored
    assert "log_std_init" not in sac
    with pytest.raises(ValueError, match="policy.activation='swish'"):
        policy_kwargs("ppo", {"activation": "swish"})
    with pytest.raises(ValueError, match="algo='td3'"):
        policy_kwargs("td3", {})


def test_make_agent_builds_the_configured_networks():
    venv = make_vec_env(SIM, n_envs=2, seed=0)
    model = make_agent(
        "sac", venv, {"policy": {"net_arch": [24, 24]}, "buffer_size": 1000}, "cpu", seed=0
    )
    linear = [m for m in model.actor.latent_pi if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [24, 24]
    assert linear[0].in_features == venv.observation_space.shape[0]


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device='gpu'"):
        resolve_device("gpu")


def test_obs_normalizer_matches_hand_computation():
    norm = ObsNormalizer(
        mean=np.array([1.0, -2.0]), var=np.array([4.0, 0.25]), clip=1.5, epsilon=0.0
    )
    obs = np.array([[3.0, -2.0], [1.0, 0.0], [-9.0, -2.5]])
    # (3-1)/2 = 1, (-2+2)/0.5 = 0 ; 0, 4 -> clipped 1.5 ; -5 -> -1.5, -1
    expected = np.array([[1.0, 0.0], [0.0, 1.5], [-1.5, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(norm(obs), expected)
    assert norm(obs).dtype == np.float32
    identity = ObsNormalizer.identity(2)
    np.testing.assert_allclose(identity(obs), obs.astype(np.float32))


def test_normalizer_snapshot_equals_vecnormalize_and_is_frozen(trained):
    model, venv = trained
    raw = venv.get_original_obs()
    snap = ObsNormalizer.from_vec_normalize(venv)
    np.testing.assert_allclose(snap(raw), venv.normalize_obs(raw), rtol=1e-5, atol=1e-6)
    before = snap.mean.copy()
    venv.obs_rms.mean += 1.0
    np.testing.assert_array_equal(snap.mean, before)
    venv.obs_rms.mean -= 1.0


def test_sb3_policy_is_deterministic_and_uses_the_normalization(trained):
    model, venv = trained
    policy = SB3Policy(model, ObsNormalizer.from_vec_normalize(venv), name="ppo")
    obs = venv.get_original_obs()
    a1, a2 = policy.act(obs), policy.act(obs)
    np.testing.assert_array_equal(a1, a2)
    assert a1.shape == (obs.shape[0], venv.action_space.shape[0])
    assert np.all(np.abs(a1) <= 1.0)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(a1, expected, atol=1e-6)
    unnormalized = SB3Policy(model).act(obs)
    assert np.abs(unnormalized - a1).max() > 1e-3  # forgetting the statistics changes the actions
    with pytest.raises(ValueError, match=r"expected \(B, "):
        policy.act(obs[:, :-1])


def test_sb3_policy_runs_in_backtests_and_reloads_from_files(trained, tmp_path: Path):
    model, venv = trained
    model.save(tmp_path / "model.zip")
    save_statistics(venv, tmp_path)  # vecnormalize.npz: plain arrays
    venv.save(str(tmp_path / "vecnormalize.pkl"))  # what older runs hold
    policy = SB3Policy(model, ObsNormalizer.from_vec_normalize(venv))
    seeds = scenario_seeds("validation", 3)
    r1 = run_policy(SIM, policy, seeds)
    for stats in ("vecnormalize.npz", "vecnormalize.pkl"):  # the legacy pickle, read safely
        loaded = SB3Policy.load("ppo", tmp_path / "model.zip", tmp_path / stats, device="cpu")
        np.testing.assert_allclose(r1.value_usd, run_policy(SIM, loaded, seeds).value_usd)
    with pytest.raises(ValueError, match="not normalization statistics written by defialloc"):
        ObsNormalizer.load(tmp_path / "model.zip")


def _record(values: np.ndarray, turnover: np.ndarray | None = None) -> EpisodeRecord:
    k, t1 = values.shape
    zeros = np.zeros((k, t1 - 1))
    return EpisodeRecord(
        policy="p",
        seeds=np.arange(k),
        asset_names=("A",),
        value_usd=values,
        weights=np.zeros((k, t1 - 1, 2)),
        fees_usd=zeros + 1.0,
        slippage_usd=zeros + 0.5,
        gas_usd=zeros + 0.25,
        turnover=zeros if turnover is None else turnover,
        regime=np.zeros((k, t1 - 1), dtype=np.int8),
        regime_names=("calm",),
        alive=np.ones((k, t1 - 1), dtype=bool),
        step_days=1.0,
    )


def test_validation_metrics_against_hand_values():
    values = np.array([[100.0, 110.0, 99.0], [100.0, 100.0, 100.0], [100.0, 50.0, 4.0]])
    m = validation_metrics(_record(values, turnover=np.full((3, 2), 0.1)), periods_per_year=365.0)
    growth = [np.log(0.99), 0.0, np.log(0.04)]
    assert m["mean_log_growth"] == pytest.approx(np.mean(growth))
    assert m["median_log_growth"] == pytest.approx(np.log(0.99))
    assert m["mean_return"] == pytest.approx((-0.01 + 0.0 - 0.96) / 3)
    # scenario 1: returns +10%, -10%: mean 0 -> Sharpe 0; scenario 2: zero variance -> 0;
    # scenario 3: returns -0.5, -0.92: mean -0.71, std(ddof=1) = 0.42/sqrt(2)
    sharpe3 = -0.71 / (0.42 / np.sqrt(2)) * np.sqrt(365)
    assert m["mean_sharpe"] == pytest.approx(sharpe3 / 3)
    # drawdowns: 1 - 99/110 = 0.1, 0, 1 - 4/100 = 0.96
    assert m["mean_max_drawdown"] == pytest.approx((0.1 + 0.0 + 0.96) / 3)
    assert m["mean_turnover"] == pytest.approx(0.1)
    assert m["mean_cost_usd"] == pytest.approx(2 * 1.75)
    assert m["ruin_rate"] == pytest.approx(1 / 3)  # 4 <= 5% of 100


def test_validation_sharpe_and_drawdown_agree_with_the_metrics_module():
    rng = np.random.default_rng(1)
    returns = rng.normal(0.001, 0.02, size=(4, 50))
    values = 1e5 * np.concatenate([np.ones((4, 1)), np.cumprod(1 + returns, axis=1)], axis=1)
    m = validation_metrics(_record(values), periods_per_year=365.0)
    assert m["mean_sharpe"] == pytest.approx(np.mean([sharpe_ratio(r, 365.0) for r in returns]))
    assert m["mean_max_drawdown"] == pytest.approx(np.mean([max_drawdown(r) for r in returns]))
