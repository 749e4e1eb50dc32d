"""ONNX export of SB3 policies: the graph equals the SB3 deterministic policy mapped to weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import VecNormalize
from typer.testing import CliRunner

from defialloc import envs
from defialloc.agents.export import ExportSource, _actions_to_weights, export_policy, section_hash
from defialloc.agents.export_mlflow import log_export
from defialloc.agents.onnx_policy import (
    MANIFEST_FILE,
    ONNX_FILE,
    OnnxPolicy,
    load_manifest,
    sha256_file,
)
from defialloc.agents.sb3 import ObsNormalizer
from defialloc.envs.actions import actions_to_weights
from defialloc.envs.features import feature_names

N_OBS = 1000
TOL = 1e-5


def tiny_config():
    return envs.load_config(None, {"env.horizon": 40})


def train_tiny(algo: str, cfg, steps: int = 400, seed: int = 0):
    """A few hundred SB3 steps on the batched env under VecNormalize (normalization stats non-trivial)."""
    torch.set_num_threads(1)
    venv = VecNormalize(envs.make_vec_env(cfg, n_envs=4, seed=seed))
    kwargs = {"net_arch": [32, 32]}
    if algo == "ppo":
        model = PPO(
            "MlpPolicy",
            venv,
            n_steps=32,
            batch_size=64,
            n_epochs=2,
            seed=seed,
            policy_kwargs=kwargs,
        )
    else:
        model = SAC("MlpPolicy", venv, learning_starts=64, batch_size=64, buffer_size=2_000, seed=seed,
                    policy_kwargs=kwargs)  # fmt: skip
    model.learn(steps)
    return model, venv


def env_observations(cfg, n: int = N_OBS, seed: int = 1) -> np.ndarray:
    """``n`` raw observations from env rollouts with random actions (reset episodes included)."""
    venv = envs.make_vec_env(cfg, n_envs=4, seed=seed)
    rng = np.random.default_rng(seed)
    obs = [venv.reset()]
    while sum(len(o) for o in obs) < n:
        o, *_ = venv.step(rng.uniform(-1, 1, (4, venv.action_space.shape[0])))
        obs.append(o)
    return np.concatenate(obs)[:n]


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def observations(cfg):
    return env_observations(cfg)


_EXPORTS: dict[str, tuple] = {}


def _export(algo: str, cfg, tmp_path_factory) -> tuple:
    """Train and export once per algorithm for the whole module."""
    if algo not in _EXPORTS:
        model, venv = train_tiny(algo, cfg)
        venv.training = False
        out = tmp_path_factory.mktemp(f"export_{algo}")
        source = ExportSource(model, ObsNormalizer.from_vec_normalize(venv), cfg, algo)
        _EXPORTS[algo] = (algo, model, venv, out, export_policy(source, out))
    return _EXPORTS[algo]


@pytest.fixture(scope="module", params=["ppo", "sac"])
def exported(request, cfg, tmp_path_factory):
    return _export(request.param, cfg, tmp_path_factory)


@pytest.fixture(scope="module")
def ppo_exported(cfg, tmp_path_factory):
    return _export("ppo", cfg, tmp_path_factory)


def test_onnx_equals_sb3_deterministic_policy_on_1000_env_observations(exported, observations):
    algo, model, venv, out, _ = exported
    assert observations.shape[0] == N_OBS
    # reference: SB3's own VecNormalize + model.predict (not the exporter's code path)
    expected_actions, _ = model.predict(venv.normalize_obs(observations), deterministic=True)
    expected_weights = actions_to_weights(expected_actions.astype(np.float64))
    got = OnnxPolicy(out).predict(observations)
    assert got["action"].shape == (N_OBS, 6) and got["target_weights"].shape == (N_OBS, 6)
    np.testing.assert_allclose(got["action"], expected_actions, atol=TOL, rtol=0)
    np.testing.assert_allclose(got["target_weights"], expected_weights, atol=TOL, rtol=0)
    np.testing.assert_allclose(got["target_weights"].sum(axis=1), 1.0, atol=1e-12)
    # the Policy interface returns the same actions (what the env receives)
    np.testing.assert_allclose(
        OnnxPolicy(out).act(observations), expected_actions, atol=TOL, rtol=0
    )


def test_normalization_is_part_of_the_graph(exported, observations):
    """Without VecNormalize's statistics the actions would differ: the test can tell."""
    _, model, venv, out, _ = exported
    raw_actions, _ = model.predict(observations, deterministic=True)
    got = OnnxPolicy(out).act(observations)
    assert np.max(np.abs(got - raw_actions)) > 1e-3


def test_batch_axis_is_dynamic(exported, observations):
    _, _, _, out, _ = exported
    policy = OnnxPolicy(out)
    full = policy.act(observations[:7])
    assert policy.act(observations[:1]).shape == (1, 6)
    np.testing.assert_allclose(policy.act(observations[3:4]), full[3:4], atol=1e-7)


def test_ppo_mean_is_clamped_to_the_box(cfg, observations, tmp_path):
    """A PPO mean far outside [-1, 1] must come out clamped, as model.predict clips it."""
    model, venv = train_tiny("ppo", cfg, steps=64)
    with torch.no_grad():
        model.policy.action_net.bias[0] = 5.0
        model.policy.action_net.bias[1] = -5.0
    venv.training = False
    export_policy(ExportSource(model, ObsNormalizer.from_vec_normalize(venv), cfg, "ppo"), tmp_path)
    got = OnnxPolicy(tmp_path).predict(observations[:200])
    expected, _ = model.predict(venv.normalize_obs(observations[:200]), deterministic=True)
    np.testing.assert_array_equal(got["action"][:, 0], 1.0)
    np.testing.assert_array_equal(got["action"][:, 1], -1.0)
    np.testing.assert_allclose(got["action"], expected, atol=TOL, rtol=0)


def test_leverage_and_hedge_dimensions_are_read_from_the_env(tmp_path):
    """With lending and perps the action has 1 + N more entries: labelled, clipped, passed through."""
    from stable_baselines3.common.vec_env import VecNormalize

    cfg = envs.load_config(
        None, {"env.horizon": 30, "env.lending.enabled": True, "env.perps.enabled": True}
    )
    venv = VecNormalize(envs.make_vec_env(cfg, n_envs=2, seed=0))
    model = PPO(
        "MlpPolicy", venv, n_steps=8, batch_size=16, seed=0, policy_kwargs={"net_arch": [16]}
    )
    with torch.no_grad():
        model.policy.action_net.bias[6] = 5.0  # leverage output past the upper bound
        model.policy.action_net.bias[7] = -5.0  # first hedge ratio past the lower bound
    venv.training = False
    manifest = export_policy(
        ExportSource(model, ObsNormalizer.from_vec_normalize(venv), cfg, "ppo"), tmp_path
    )
    assets = tuple(cfg.market.assets)
    assert manifest.action_dim == 12 == venv.action_space.shape[0]
    assert [(b.name, b.start, b.stop) for b in manifest.action_layout] == [
        ("weights", 0, 6),
        ("leverage", 6, 7),
        ("hedge", 7, 12),
    ]
    assert manifest.action_layout[2].labels == tuple(f"hedge_{a}" for a in assets)
    obs = env_observations(cfg, n=64)
    got = OnnxPolicy(tmp_path).predict(obs)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(got["action"], expected, atol=TOL, rtol=0)
    np.testing.assert_array_equal(got["extra_actions"], got["action"][:, 6:])
    np.testing.assert_allclose(
        got["target_weights"], actions_to_weights(expected[:, :6].astype(np.float64)), atol=TOL
    )
    np.testing.assert_array_equal(got["extra_actions"][:, :2], np.tile([1.0, -1.0], (len(obs), 1)))


def test_manifest_describes_the_export(exported, cfg):
    algo, _, venv, out, manifest = exported
    loaded = load_manifest(out)
    assert loaded == manifest
    assert loaded.algo == algo
    assert loaded.asset_names == tuple(cfg.market.assets)
    assert loaded.numeraire == cfg.market.numeraire
    assert list(loaded.observation_names) == feature_names(
        tuple(cfg.market.assets), cfg.env.observation
    )
    assert loaded.obs_dim == venv.observation_space.shape[0]
    weights = loaded.weights_block
    assert (weights.start, weights.stop) == (0, len(cfg.market.assets) + 1)
    assert weights.labels == (*cfg.market.assets, cfg.market.numeraire)
    assert loaded.step_days == cfg.market.step_days
    assert loaded.config_hash == cfg.config_hash()
    assert loaded.env_config_hash == section_hash(cfg.env) != loaded.market_config_hash
    assert loaded.onnx_sha256 == sha256_file(out / ONNX_FILE)
    assert envs.load_config(loaded.simulation_config) == cfg
    assert {"torch", "stable-baselines3", "onnx", "onnxruntime", "onnx_opset"} <= set(
        loaded.versions
    )
    assert loaded.normalization["enabled"] is True
    assert json.loads((out / MANIFEST_FILE).read_text())["policy_id"] == loaded.policy_id


def test_corrupt_or_swapped_files_are_refused(exported, tmp_path):
    _, _, _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / ONNX_FILE).read_bytes())
    (bad / ONNX_FILE).write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError, match="SHA-256 .* corrupt"):
        OnnxPolicy(bad)
    # garbage whose hash was written into the manifest: onnxruntime's refusal becomes a ValueError
    (bad / ONNX_FILE).write_bytes(b"not an onnx graph")
    manifest = json.loads((bad / MANIFEST_FILE).read_text())
    manifest["onnx_sha256"] = sha256_file(bad / ONNX_FILE)
    manifest.pop("policy_id")
    (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="onnxruntime cannot load"):
        OnnxPolicy(bad)
    # a manifest edited after export (its policy_id no longer matches)
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    manifest = json.loads((edited / MANIFEST_FILE).read_text())
    manifest["asset_names"] = list(reversed(manifest["asset_names"]))
    (edited / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="policy_id"):
        OnnxPolicy(edited)
    (edited / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        OnnxPolicy(edited)


def test_torch_action_map_matches_numpy_by_hand():
    cash_only = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    actions = torch.tensor(
        [[1.0, -1.0, -1.0, 0.0], [-1.0, -1.0, -1.0, -1.0], [3.0, -7.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    got = _actions_to_weights(actions, cash_only).numpy()
    # x = (clip(a) + 1) / 2: [1, 0, 0, .5] -> [2/3, 0, 0, 1/3]; all -1 -> cash only; [1, 0, .5, 1] / 2.5
    expected = np.array([[2 / 3, 0, 0, 1 / 3], [0, 0, 0, 1], [0.4, 0.0, 0.2, 0.4]])
    np.testing.assert_allclose(got, expected, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=12, max_size=12))
def test_torch_action_map_equals_envs_actions(values):
    actions = np.array(values).reshape(2, 6)
    actions[1, :3] = -1.0  # near-empty rows exercise the cash-only branch's neighbourhood
    cash_only = torch.zeros(6, dtype=torch.float64)
    cash_only[-1] = 1.0
    got = _actions_to_weights(torch.as_tensor(actions), cash_only).numpy()
    np.testing.assert_allclose(got, actions_to_weights(actions), atol=1e-15, rtol=0)


def test_export_cli_from_model_files(exported, observations, tmp_path):
    from defialloc.training.cli import app

    algo, model, venv, _, _ = exported
    run_dir = tmp_path / "run"
    (run_dir / "best").mkdir(parents=True)
    model.save(run_dir / "best" / "model.zip")
    venv.save(str(run_dir / "best" / "vecnormalize.pkl"))
    train_cfg = {
        "algo": algo,
        "simulation": tiny_config().model_dump(mode="json"),
        "total_timesteps": 400,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(train_cfg))
    out = tmp_path / "onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--model",
            str(run_dir / "best" / "model.zip"),
            "--out",
            str(out),
            "--no-mlflow",
        ],
    )
    assert result.exit_code == 0, result.output
    expected, _ = model.predict(venv.normalize_obs(observations[:100]), deterministic=True)
    np.testing.assert_allclose(OnnxPolicy(out).act(observations[:100]), expected, atol=TOL, rtol=0)
    assert load_manifest(out).algo == algo
    missing = CliRunner().invoke(
        app, ["export", "--model", str(tmp_path / "nope.zip"), "--out", str(out)]
    )
    assert missing.exit_code == 2 and "not found" in missing.output


def test_export_logs_to_mlflow_and_tags_the_registered_version(
    ppo_exported, observations, tmp_path, monkeypatch
):
    import mlflow
    from mlflow import MlflowClient

    from defialloc.training.cli import app

    algo, model, venv, out, manifest = ppo_exported
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # global MLflow state this test changes, restored at teardown
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", uri)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    from defialloc.agents.mlflow_store import setup_mlflow

    mlflow.set_experiment(experiment_id=setup_mlflow("export-test"))  # artifacts beside the tmp db
    # a training run as training/train.py leaves it: model artifacts, resolved config, registered version
    staged = tmp_path / "staged"
    (staged / "best").mkdir(parents=True)
    model.save(staged / "best" / "model.zip")
    venv.save(str(staged / "best" / "vecnormalize.pkl"))
    train_cfg = {
        "algo": algo,
        "simulation": tiny_config().model_dump(mode="json"),
        "total_timesteps": 400,
    }
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(staged / "best"), "best")
        mlflow.log_text(yaml.safe_dump(train_cfg), "config/train_config.yaml")
        mlflow.set_tag("algo", algo)
    client = MlflowClient()
    client.create_registered_model("defialloc-ppo")
    version = client.create_model_version(
        "defialloc-ppo", f"runs:/{run.info.run_id}/policy", run_id=run.info.run_id
    )

    out_dir = tmp_path / "from_run"
    result = CliRunner().invoke(app, ["export", "--run-id", run.info.run_id, "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    expected, _ = model.predict(venv.normalize_obs(observations[:100]), deterministic=True)
    np.testing.assert_allclose(
        OnnxPolicy(out_dir).act(observations[:100]), expected, atol=TOL, rtol=0
    )
    exported_manifest = load_manifest(out_dir)
    assert exported_manifest.source["run_id"] == run.info.run_id

    tags = client.get_model_version("defialloc-ppo", version.version).tags
    assert tags["onnx_policy_id"] == exported_manifest.policy_id
    assert tags["onnx_export_uri"] == f"runs:/{run.info.run_id}/onnx_export"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # the logged folder is a usable export, and the mlflow.onnx model loads
    fetched = Path(
        mlflow.artifacts.download_artifacts(tags["onnx_export_uri"], dst_path=str(tmp_path / "dl"))
    )
    np.testing.assert_allclose(
        OnnxPolicy(fetched).act(observations[:10]), expected[:10], atol=TOL, rtol=0
    )
    onnx_model = mlflow.onnx.load_model(tags["onnx_model_uri"])
    assert [i.name for i in onnx_model.graph.input] == ["observation"]
    # --model exports go to a run of their own
    logged = log_export(out, manifest, experiment="export-test")
    assert (
        logged["attached_versions"] == []
        and client.get_run(logged["run_id"]).data.tags["onnx_policy_id"]
    )
