"""Train a PPO or SAC agent from a :class:`~defialloc.training.config.TrainConfig`, tracked in MLflow.

One call of :func:`train` is one MLflow run (or the continuation of one, with ``resume_run_id``):

1. seeds (python, numpy, torch, envs) and torch threads (1 by default: fastest for small MLPs on CPU);
2. the batched env (``defialloc.envs.make_vec_env``, training path seeds) under ``VecNormalize``;
3. params (the flattened resolved config), tags (algo, config hash, git commit), the resolved config
   YAML as an artifact; SB3's metrics streamed through :class:`~defialloc.training.mlflow_logger.MLflowKVWriter`;
4. periodic validation on ``scenario_seeds("validation", n)`` with the best model kept, and
   checkpoints at rollout boundaries (Ctrl-C stops at the next boundary with a checkpoint);
5. the final and best models (+ VecNormalize statistics as plain arrays) as artifacts; the policy
   (best by validation) exported to ONNX (``onnx_export/``) and registered in the Model Registry as
   a pyfunc that needs mlflow, onnxruntime, numpy and pandas only (``agents/registry.py``); the
   alias (``candidate``) moves only when it validates better than the current candidate;
6. the backtest of the agent against the baselines (:func:`evaluate_against_baselines`).

Files of a run live in ``<output_dir>/<run_id>/``: ``config.yaml``, ``checkpoint/``, ``best/``, ``final/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from defialloc.agents.baselines.policies import UPPER_REFERENCES, baselines_for
from defialloc.agents.mlflow_store import redact_uri
from defialloc.agents.sb3 import SB3Policy, load_model, make_agent, resolve_device
from defialloc.agents.sb3_io import (
    LEGACY_REPLAY_FILE,
    NormalizationStats,
    find_statistics,
    load_replay_buffer,
)
from defialloc.envs import make_vec_env
from defialloc.envs.config import ConfigError
from defialloc.envs.seeds import scenario_seeds
from defialloc.evaluation.progress import is_terminal
from defialloc.evaluation.tracking import git_commit, setup_mlflow, tracking_uri
from defialloc.training.callbacks import (
    BEST_FILE,
    MODEL_FILE,
    REPLAY_BUFFER_FILE,
    STATE_FILE,
    CheckpointCallback,
    EntropySchedule,
    LineProgressCallback,
    RunAwareCallback,
    RunState,
    TrainingInterrupted,
    ValidationCallback,
    save_checkpoint,
)
from defialloc.training.config import TrainConfig, load_train_config
from defialloc.training.mlflow_logger import log_metrics, make_sb3_logger
from defialloc.training.register_run import finish_run

RUN_DIR_TAG = "defialloc.run_dir"
STATUS_TAG = "defialloc.status"
CONFIG_FILE = "config.yaml"
#: keys a resumed run may change (everything else must match the interrupted run's config)
RESUMABLE_OVERRIDES = frozenset(
    {"total_timesteps", "device", "torch_threads", "eval.final", "eval.workers"}
)


@dataclass
class TrainResult:
    """What a training call produced. Steps are env steps summed over all envs."""

    run_id: str
    experiment_id: str
    algo: str
    num_timesteps: int
    completed: bool
    run_dir: Path
    env_steps_per_s: float
    best_metric: float | None = None
    best_step: int | None = None
    model_version: str | None = None
    #: why the registry alias moved to this version or stayed (agents/registry.py)
    registration_note: str | None = None
    evaluation_run_ids: dict[str, str] = field(default_factory=dict)

    @property
    def best_model_dir(self) -> Path:
        return self.run_dir / "best"

    @property
    def final_model_dir(self) -> Path:
        return self.run_dir / "final"

    def policy_dir(self) -> Path:
        """The model to use: the best validated one if any, else the final one."""
        return (
            self.best_model_dir
            if (self.best_model_dir / MODEL_FILE).is_file()
            else self.final_model_dir
        )


def configure_torch(seed: int, threads: int) -> None:
    """Seed python/numpy/torch and set torch's intra-op threads."""
    torch.set_num_threads(threads)
    set_random_seed(seed)


def build_env(
    cfg: TrainConfig,
    seed: int,
    vecnormalize_path: Path | None = None,
    wrap: Callable[[VecEnv], VecEnv] | None = None,
) -> VecNormalize:
    """The batched training env wrapped in VecNormalize (statistics restored from a file if given).

    ``wrap`` (e.g. ``bench_train.StepTimer``) goes between the raw env and VecNormalize.
    """
    with warnings.catch_warnings():
        # SB3's VecEnv base class warns that our batched env has no render_mode; it needs none
        warnings.filterwarnings("ignore", message="The `render_mode` attribute is not defined")
        venv = make_vec_env(cfg.simulation, n_envs=cfg.n_envs, seed=seed)
    if wrap is not None:
        venv = wrap(venv)
    if vecnormalize_path is not None:  # plain arrays (or a legacy pickle read without running it)
        return NormalizationStats.load(vecnormalize_path).restore(venv, training=True)
    gamma = cfg.ppo.gamma if cfg.algo == "ppo" else cfg.sac.gamma
    return VecNormalize(
        venv,
        norm_obs=cfg.normalize.obs,
        norm_reward=cfg.normalize.reward,
        clip_obs=cfg.normalize.clip_obs,
        clip_reward=cfg.normalize.clip_reward,
        gamma=gamma,
    )


def run_dir_of(run_id: str, client: MlflowClient | None = None) -> Path:
    """The local folder of a run, from its ``defialloc.run_dir`` tag."""
    run = (client or MlflowClient()).get_run(run_id)
    folder = run.data.tags.get(RUN_DIR_TAG)
    if folder is None:
        raise ValueError(
            f"run {run_id} has no {RUN_DIR_TAG} tag: it was not started by `defialloc train`"
        )
    return Path(folder)


def load_resume_config(run_id: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The stored config of run ``run_id`` with the overrides a resume may change."""
    bad = sorted(set(overrides or {}) - RESUMABLE_OVERRIDES)
    if bad:
        raise ConfigError(
            f"cannot change {', '.join(bad)} when resuming; allowed: {', '.join(sorted(RESUMABLE_OVERRIDES))}"
        )
    mlflow.set_tracking_uri(tracking_uri())
    try:
        folder = run_dir_of(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(
            f"--resume {run_id}: no such run in {redact_uri(mlflow.get_tracking_uri())} ({exc})"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"--resume {run_id}: {exc}") from None
    if not (folder / "checkpoint" / STATE_FILE).is_file():
        raise ConfigError(f"--resume {run_id}: no checkpoint in {folder / 'checkpoint'}")
    cfg = load_train_config(folder / CONFIG_FILE, overrides)
    check_checkpoint(run_id, folder / "checkpoint", cfg.algo)
    state = RunState.load(folder / "checkpoint" / STATE_FILE)
    if state.completed and state.num_timesteps >= cfg.total_timesteps:
        raise RunAlreadyFinished(
            f"run {run_id} already finished: {state.num_timesteps:,} of total_timesteps="
            f"{cfg.total_timesteps:,} env steps, its model registered and evaluated. Nothing to "
            f"resume; to train it longer: defialloc train --resume {run_id} "
            f"total_timesteps=<more than {state.num_timesteps}>"
        )
    return cfg


def check_checkpoint(run_id: str, folder: Path, algo: str) -> None:
    """Refuse (ConfigError) a checkpoint whose files the safe loaders would not read, before the
    run is reopened: the model zip's serialized entries, the statistics (npz, or a legacy pickle
    through the restricted unpickler), the SAC replay buffer. Nothing in them is executed."""
    from defialloc.agents.sb3_io import read_model_data, safe_custom_objects

    try:
        safe_custom_objects(algo, read_model_data(folder / MODEL_FILE))
        stats = find_statistics(folder)
        if stats is not None:
            NormalizationStats.load(stats)
    except ValueError as exc:
        raise ConfigError(f"--resume {run_id}: checkpoint refused: {exc}") from None


class RunAlreadyFinished(ConfigError):
    """``--resume`` of a run that completed its budget: nothing to do (not an error of the run)."""


@contextlib.contextmanager
def _graceful_sigint(checkpoint: CheckpointCallback) -> Iterator[None]:
    """First Ctrl-C: stop at the next rollout boundary with a checkpoint; second: abort at once."""

    def handler(signum: int, frame: Any) -> None:
        if checkpoint.stop_requested:
            raise KeyboardInterrupt
        checkpoint.stop_requested = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_run(
    cfg: TrainConfig,
    resume_run_id: str | None,
    client: MlflowClient,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[Any, Path, RunState]:
    """Start (or reopen) the MLflow run; return it with the run folder and the restored state."""
    if resume_run_id is None:
        experiment_id = client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=cfg.mlflow.run_name,
            parent_run_id=parent_run_id,
            tags=tags,
        )
        run_dir = (Path(cfg.output_dir) / run.info.run_id).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(cfg.to_yaml())
        mlflow.log_params(cfg.flat_params())
        mlflow.set_tags(
            {
                "algo": cfg.algo,
                "config_hash": cfg.config_hash(),
                "simulation_config_hash": cfg.simulation.config_hash(),
                "git_commit": git_commit(),
                "kind": "training",
                RUN_DIR_TAG: str(run_dir),
            }
        )
        mlflow.log_text(cfg.to_yaml(), "config/train_config.yaml")
        state = RunState(
            next_validation_step=cfg.eval.every_steps or 0,
            next_checkpoint_step=cfg.checkpoint.every_steps or 0,
        )
        return run, run_dir, state
    run_dir = run_dir_of(resume_run_id, client)
    # start_run(run_id=...) refuses a run outside the process's active experiment (one a caller
    # set earlier, possibly in another store): resuming a run means working in its experiment
    mlflow.set_experiment(experiment_id=client.get_run(resume_run_id).info.experiment_id)
    run = mlflow.start_run(run_id=resume_run_id)
    (run_dir / CONFIG_FILE).write_text(cfg.to_yaml())  # a later resume keeps an extended budget
    state = RunState.load(run_dir / "checkpoint" / STATE_FILE)
    best_file = run_dir / "best" / BEST_FILE
    if best_file.is_file():  # the best model may be newer than the last checkpoint
        best = json.loads(best_file.read_text())
        state.best_metric, state.best_step = float(best["value"]), int(best["step"])
    mlflow.set_tag(f"resumed_at_step_{state.num_timesteps}", str(cfg.total_timesteps))
    return run, run_dir, state


def _build_model(
    cfg: TrainConfig, venv: VecEnv, device: str, run_dir: Path, resume: bool
) -> BaseAlgorithm:
    if not resume:
        return make_agent(cfg.algo, venv, cfg.agent_kwargs(), device, seed=cfg.seed)
    hyper = {k: v for k, v in cfg.agent_kwargs().items() if k != "policy"}
    folder = run_dir / "checkpoint"
    model = load_model(cfg.algo, folder / MODEL_FILE, venv, device, hyperparameters=hyper)
    for name in (REPLAY_BUFFER_FILE, LEGACY_REPLAY_FILE):  # runs before npz buffers: legacy pickle
        if cfg.algo == "sac" and (folder / name).is_file():
            load_replay_buffer(model, folder / name)
            break
    return model


def train(
    cfg: TrainConfig,
    *,
    resume_run_id: str | None = None,
    progress: bool = True,
    callbacks: Sequence[BaseCallback] = (),
    register: bool | None = None,
    final_evaluation: bool | None = None,
    cache: bool = False,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train (or continue training) an agent; see the module docstring for what is logged where.

    Args:
        cfg: the resolved training config (for a resume: :func:`load_resume_config`).
        resume_run_id: continue this run from its last checkpoint; the step count carries on and
            training stops at ``cfg.total_timesteps`` (SB3 rounds up to whole rollouts).
        progress: show progress: SB3's bar (tqdm + rich) on a terminal, else a plain line every
            few seconds (:class:`~defialloc.training.callbacks.LineProgressCallback`).
        callbacks: extra SB3 callbacks (run after validation and checkpointing).
        register: override ``cfg.mlflow.register_model``.
        final_evaluation: override ``cfg.eval.final`` (backtest vs the baselines when training ends).
        cache: take the baselines' backtests from the on-disk cache when they were already run
            on the same scenarios (:mod:`defialloc.evaluation.backtest_cache`), and store new ones.
        parent_run_id: a new run is nested under this MLflow run (a sweep's parent run).
        tags: extra MLflow tags of a new run (a sweep's trial key, ...).

    Returns:
        A :class:`TrainResult`; ``completed`` is False when the run was stopped (Ctrl-C) before
        ``total_timesteps``: it is then marked KILLED in MLflow and resumable.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    configure_torch(cfg.seed, cfg.torch_threads)
    device = resolve_device(cfg.device)
    setup_mlflow(cfg.mlflow.experiment)
    client = MlflowClient()
    run, run_dir, state = _start_run(cfg, resume_run_id, client, parent_run_id, tags)
    mlflow.set_tag(STATUS_TAG, "running")
    try:
        result = _train_session(
            cfg,
            run,
            run_dir,
            state,
            device,
            resume_run_id is not None,
            progress,
            callbacks,
            register,
            client,
        )
    except KeyboardInterrupt:  # a second Ctrl-C: the last periodic checkpoint is the resume point
        mlflow.set_tag(STATUS_TAG, "interrupted")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.set_tag(STATUS_TAG, "failed")
        mlflow.end_run(status="FAILED")
        raise
    if not result.completed:
        mlflow.set_tag(STATUS_TAG, "interrupted")
        mlflow.end_run(status="KILLED")
        return result
    mlflow.set_tag(STATUS_TAG, "completed")
    mlflow.end_run()
    if cfg.eval.final if final_evaluation is None else final_evaluation:
        result.evaluation_run_ids = evaluate_against_baselines(
            cfg, result, progress=progress, cache=cache
        )
    return result


def _train_session(
    cfg: TrainConfig,
    run: Any,
    run_dir: Path,
    state: RunState,
    device: str,
    resume: bool,
    progress: bool,
    callbacks: Sequence[BaseCallback],
    register: bool | None,
    client: MlflowClient,
) -> TrainResult:
    """Build env and model, learn, and (when the budget is reached) save, log and register."""
    run_id = run.info.run_id
    # a resumed run draws fresh training paths instead of replaying the first session's
    env_seed = cfg.seed + (state.num_timesteps if resume else 0)
    venv = build_env(cfg, env_seed, find_statistics(run_dir / "checkpoint") if resume else None)
    model = _build_model(cfg, venv, device, run_dir, resume)
    model.set_logger(make_sb3_logger(run_id, client=client))
    validation = ValidationCallback(
        cfg.simulation,
        scenario_seeds("validation", cfg.eval.n_scenarios),
        cfg.eval.every_steps,
        cfg.eval.metric,
        run_id,
        run_dir / "best",
        state,
        client,
        name=cfg.algo,
    )
    checkpoint = CheckpointCallback(
        run_dir / "checkpoint", cfg.checkpoint.every_steps, state, cfg.checkpoint.replay_buffer
    )
    schedules: list[BaseCallback] = []
    if cfg.algo == "ppo" and cfg.ppo.ent_coef_final is not None:
        schedules.append(
            EntropySchedule(cfg.ppo.ent_coef, cfg.ppo.ent_coef_final, cfg.total_timesteps)
        )
    for extra in callbacks:  # e.g. a sweep's reporter: it checkpoints and reports after validations
        if isinstance(extra, RunAwareCallback):
            extra.attach(validation, checkpoint, run_dir, run_id)
    steps_before, start = int(model.num_timesteps), time.perf_counter()
    remaining = cfg.total_timesteps - steps_before
    bar = progress and is_terminal()  # SB3's redrawn bar on a terminal only
    if progress and not bar:
        schedules.append(LineProgressCallback(cfg.total_timesteps))
    interrupted = False
    if remaining > 0:
        try:
            with _graceful_sigint(checkpoint):
                model.learn(
                    remaining,
                    callback=CallbackList([*schedules, validation, checkpoint, *callbacks]),
                    log_interval=1 if cfg.algo == "ppo" else cfg.n_envs,
                    reset_num_timesteps=not resume,
                    progress_bar=bar,
                )
        except TrainingInterrupted:
            interrupted = True
    elapsed = time.perf_counter() - start
    steps = int(model.num_timesteps)
    speed = (steps - steps_before) / elapsed if elapsed > 0 else float("nan")
    log_metrics(run_id, {"time/session_env_steps_per_s": speed}, steps, client)
    completed = not interrupted and steps >= cfg.total_timesteps
    result = TrainResult(run_id, run.info.experiment_id, cfg.algo, steps, completed, run_dir, speed)
    if completed:
        if validation.last_validated_step != steps:
            validation.validate()
        state.completed = True
        save_checkpoint(model, venv, state, run_dir / "checkpoint", cfg.checkpoint.replay_buffer)
        finish_run(cfg, model, venv, run_dir, result, register, state.best_metric)
    result.best_metric, result.best_step = state.best_metric, state.best_step
    venv.close()
    return result


def evaluate_against_baselines(
    cfg: TrainConfig, result: TrainResult, *, progress: bool = True, cache: bool = False
) -> dict[str, str]:
    """Backtest the trained policy (best by validation) against the baselines, paired, on the test
    scenario seeds and on the real held-out period; each is one evaluation run in the training
    run's experiment (``defialloc compare`` pairs them). Returns ``{"test": run_id, "held_out": ...}``.
    With ``cache`` every baseline runs once per scenario set across agents (the agent always runs).
    """
    from defialloc.evaluation.backtest import (
        load_evaluation_config,
        resolve_period,
        run_backtest,
        run_period_backtest,
    )
    from defialloc.evaluation.tracking import log_backtest

    folder = result.policy_dir()
    policy = SB3Policy.load(
        cfg.algo,
        folder / MODEL_FILE,
        find_statistics(folder),
        name=cfg.algo,
        device="cpu",
        decision_every=cfg.simulation.env.decision_every,
    )
    eval_cfg = load_evaluation_config()
    baselines = list(
        cfg.eval.baselines if cfg.eval.baselines is not None else eval_cfg.policies_to_run
    )
    baselines, _ = baselines_for(cfg.simulation, baselines)  # those this market can run
    extra = {
        "training_run_id": result.run_id,
        "agent": cfg.algo,
        "agent_steps": result.num_timesteps,
    }
    runs: dict[str, str] = {}
    seeds = scenario_seeds("test", cfg.eval.test_scenarios)
    test = run_backtest(
        cfg.simulation,
        [policy, *baselines],
        seeds,
        workers=cfg.eval.workers,
        progress=progress,
        scenario_set="test",
        cache=cache,
    )
    name = f"{cfg.mlflow.run_name or cfg.algo}-test"
    runs["test"] = log_backtest(
        test, cfg.mlflow.experiment, name, cfg.simulation, extra, plots=cfg.eval.plots
    )
    if cfg.eval.held_out:
        spec = resolve_period(cfg.eval.held_out_period, eval_cfg)
        feasible = [b for b in baselines if b not in UPPER_REFERENCES]  # no truth on real data
        held = run_period_backtest(
            cfg.simulation,
            [policy, *feasible],
            spec.start,
            spec.end,
            name=cfg.eval.held_out_period,
            workers=cfg.eval.workers,
            progress=progress,
            cache=cache,
        )
        name = f"{cfg.mlflow.run_name or cfg.algo}-{cfg.eval.held_out_period}"
        runs["held_out"] = log_backtest(
            held, cfg.mlflow.experiment, name, held.config, extra, plots=cfg.eval.plots
        )
    MlflowClient().set_tag(result.run_id, "evaluation_runs", json.dumps(runs))
    return runs
