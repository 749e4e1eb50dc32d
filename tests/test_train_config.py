"""Training config: the shipped YAMLs load, overrides route to the right section, errors are clear."""

from pathlib import Path

import pytest
import yaml

from defialloc.envs.config import REPO_ROOT, ConfigError, parse_cli_overrides
from defialloc.training.config import TrainConfig, flatten, load_train_config, split_overrides

TRAIN_CONFIGS = sorted((REPO_ROOT / "configs" / "train").glob("*.yaml"))
PPO = REPO_ROOT / "configs" / "train" / "ppo.yaml"


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path):
    cfg = load_train_config(path)
    assert cfg.algo in path.name
    kwargs = cfg.agent_kwargs()
    assert kwargs["policy"]["net_arch"] == cfg.policy.net_arch
    assert kwargs["learning_rate"] == getattr(cfg, cfg.algo).learning_rate


def test_all_four_configs_exist():
    assert {p.name for p in TRAIN_CONFIGS} >= {
        "ppo.yaml",
        "sac.yaml",
        "demo_ppo.yaml",
        "demo_sac.yaml",
    }


def test_overrides_route_to_training_and_simulation_sections():
    over = parse_cli_overrides(
        [
            "ppo.learning_rate=1e-4",
            "n_envs=8",
            "env.horizon=60",
            "simulation.env.warmup=70",
            "market.step_days=1",
        ]
    )
    cfg = load_train_config(PPO, over)
    assert cfg.ppo.learning_rate == pytest.approx(1e-4)
    assert cfg.n_envs == 8
    assert cfg.simulation.env.horizon == 60
    assert cfg.simulation.env.warmup == 70


def test_split_overrides():
    train, sim = split_overrides(
        {"sac.tau": 0.01, "env.horizon": 5, "simulation.market.step_days": 2, "seed": 1}
    )
    assert train == {"sac.tau": 0.01, "seed": 1}
    assert sim == {"env.horizon": 5, "market.step_days": 2}


@pytest.mark.parametrize(
    "items, fragments",
    [
        (["ppo.learning_rat=0.1"], ["ppo.learning_rat", "unknown key"]),
        (["n_envs=0"], ["n_envs = 0", "greater than or equal to 1"]),
        (["algo=dqn"], ["algo = 'dqn'", "'ppo' or 'sac'"]),
        (["ppo.batch_size=100000"], ["ppo.batch_size=100000", "n_steps * n_envs = 4096"]),
        (["ppo.gamma=1.5"], ["ppo.gamma = 1.5", "less than or equal to 1"]),
        (["sac.ent_coef=lots", "algo=sac"], ["ent_coef='lots'", "'auto'"]),
        (["env.horizon=-3"], ["simulation:", "env.horizon = -3"]),
        (["policy.net_arch=[64, 0]"], ["policy.net_arch", "layer width 0"]),
        (["eval.metric=profit"], ["eval.metric = 'profit'"]),
    ],
)
def test_errors_name_key_value_and_allowed_range(items, fragments):
    with pytest.raises(ConfigError) as info:
        load_train_config(PPO, parse_cli_overrides(items))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_file_and_missing_simulation(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: ppo\ntotal_timesteps: 10\n")
    with pytest.raises(ConfigError, match="simulation: missing"):
        load_train_config(bad)


def test_simulation_path_resolves_next_to_the_training_file(tmp_path: Path):
    (tmp_path / "sim.yaml").write_text("env: {horizon: 33}\n")
    (tmp_path / "train.yaml").write_text("algo: ppo\nsimulation: sim.yaml\ntotal_timesteps: 100\n")
    cfg = load_train_config(tmp_path / "train.yaml")
    assert cfg.simulation.env.horizon == 33


def test_resolved_config_round_trips_and_hash_tracks_changes():
    cfg = load_train_config(PPO)
    again = load_train_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    assert load_train_config(PPO, {"seed": 1}).config_hash() != cfg.config_hash()
    assert load_train_config(PPO, {"env.horizon": 30}).config_hash() != cfg.config_hash()
    assert isinstance(load_train_config(cfg), TrainConfig)


def test_flatten_and_params():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": None, "f": True}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "x",
        "e": "null",
        "f": "true",
    }
    params = load_train_config(PPO, {"ppo.learning_rate": 0.00025}).flat_params()
    assert params["ppo.learning_rate"] == "0.00025"
    assert params["algo"] == "ppo"
    assert params["simulation.env.horizon"] == str(load_train_config(PPO).simulation.env.horizon)
    assert all(len(k) <= 250 and len(v) <= 6000 for k, v in params.items())  # MLflow's limits


def test_sac_update_ratio_settings():
    cfg = load_train_config(REPO_ROOT / "configs" / "train" / "sac.yaml")
    kwargs = cfg.agent_kwargs()
    assert kwargs["train_freq"] == cfg.sac.train_freq
    # fewer than one gradient step per transition is what makes SAC usable on CPU
    assert cfg.sac.gradient_steps / (cfg.sac.train_freq * cfg.n_envs) < 1


def test_simulation_overrides_in_the_file_apply_and_the_command_line_wins(tmp_path):
    cfg = {
        "algo": "ppo",
        "simulation": "configs/default.yaml",
        "total_timesteps": 1000,
        "simulation_overrides": {"env.action.kind": "delta", "env.decision_every": 5},
    }
    loaded = load_train_config(dict(cfg))
    assert (
        loaded.simulation.env.action.kind == "delta" and loaded.simulation.env.decision_every == 5
    )
    loaded = load_train_config(dict(cfg), {"env.decision_every": 1})
    assert loaded.simulation.env.decision_every == 1
    assert load_train_config(loaded.resolved()).resolved() == loaded.resolved()  # round trip
    with pytest.raises(ConfigError, match="not simulation keys"):
        load_train_config({**cfg, "simulation_overrides": {"ppo.n_steps": 8}})
    with pytest.raises(ConfigError, match="simulation_overrides"):
        load_train_config({**cfg, "simulation_overrides": ["env.horizon"]})
