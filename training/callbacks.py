"""SB3 callbacks of a training run: periodic validation (best model kept) and checkpoints.

Step counts are SB3's ``num_timesteps``: env steps summed over all envs (one vec-env step of
``n_envs`` envs adds ``n_envs``). Both callbacks fire at the first vec-env step at or after each
multiple of their period, and their progress (next due step, best score) is part of the checkpoint
so a resumed run continues the same schedule.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from defialloc.agents.sb3 import ObsNormalizer, SB3Policy
from defialloc.agents.sb3_io import REPLAY_FILE, STATS_FILE, save_replay_buffer, save_statistics
from defialloc.envs.config import SimulationConfig
from defialloc.evaluation.progress import LINE_INTERVAL_S, LineProgress
from defialloc.evaluation.rollout import EpisodeRecord, run_policy
from defialloc.training.mlflow_logger import log_metrics

MODEL_FILE = "model.zip"
#: plain arrays (npz), never pickles: loading a run's files runs no code (agents/sb3_io.py)
VECNORMALIZE_FILE = STATS_FILE
REPLAY_BUFFER_FILE = REPLAY_FILE
STATE_FILE = "state.json"
BEST_FILE = "best.json"
#: per-scenario validation of the best model (numpy arrays only: read with allow_pickle=False)
BEST_SCORES_FILE = "validation.npz"


@dataclass
class RunState:
    """Progress of a run that a checkpoint must carry besides the model (``state.json``)."""

    num_timesteps: int = 0
    next_validation_step: int = 0
    next_checkpoint_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    completed: bool = False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls(**json.loads(path.read_text()))


def validation_scores(record: EpisodeRecord, periods_per_year: float) -> dict[str, np.ndarray]:
    """Per-scenario values of one validation rollout (``K`` scenarios, ``T`` steps).

    - ``log_growth`` ``(K,)``: ``log(V_T / V_0)``;
    - ``sharpe`` ``(K,)``: annualized Sharpe of per-step simple returns
      (``mean / std(ddof=1) * sqrt(periods_per_year)``; zero variance counts as 0);
    - ``returns`` ``(K, T)``: per-step simple returns (net of every cost).
    """
    value = record.value_usd
    returns = record.returns
    std = returns.std(axis=1, ddof=1) if returns.shape[1] > 1 else np.zeros(len(returns))
    sharpe = np.where(std > 0, returns.mean(axis=1) / np.where(std > 0, std, 1.0), 0.0) * np.sqrt(
        periods_per_year
    )
    return {
        "log_growth": np.log(value[:, -1] / value[:, 0]),
        "sharpe": sharpe,
        "returns": np.asarray(returns, dtype=float),
    }


def validation_metrics(
    record: EpisodeRecord, periods_per_year: float, ruin_fraction: float = 0.05
) -> dict[str, float]:
    """Scenario-averaged metrics of one validation rollout (``K`` scenarios, ``T`` steps).

    - ``mean_log_growth`` / ``median_log_growth``: of ``log(V_T / V_0)`` per scenario;
    - ``mean_return``: mean of ``V_T / V_0 - 1``;
    - ``mean_sharpe``: mean over scenarios of the annualized Sharpe of per-step simple returns
      (``mean / std(ddof=1) * sqrt(periods_per_year)``; scenarios with zero variance count as 0);
    - ``mean_max_drawdown`` (positive fraction, the start counts as a peak), ``mean_turnover``
      (one-sided, per step), ``mean_cost_usd`` (fees + slippage + gas per scenario);
    - ``ruin_rate``: share of scenarios that ended at or below ``ruin_fraction`` of the initial value.
    """
    value = record.value_usd
    per_scenario = validation_scores(record, periods_per_year)
    growth = per_scenario["log_growth"]
    peak = np.maximum.accumulate(value, axis=1)
    cost = (
        record.fees_usd.sum(axis=1) + record.slippage_usd.sum(axis=1) + record.gas_usd.sum(axis=1)
    )
    return {
        "mean_log_growth": float(growth.mean()),
        "median_log_growth": float(np.median(growth)),
        "mean_return": float(np.expm1(growth).mean()),
        "mean_sharpe": float(per_scenario["sharpe"].mean()),
        "mean_max_drawdown": float((1.0 - value / peak).max(axis=1).mean()),
        "mean_turnover": float(record.turnover.mean()),
        "mean_cost_usd": float(cost.mean()),
        "ruin_rate": float((value[:, -1] <= ruin_fraction * value[:, 0]).mean()),
    }


def save_checkpoint(
    model, venv: VecNormalize, state: RunState, folder: Path, replay_buffer: bool
) -> None:
    """Write model, VecNormalize statistics (npz), (SAC) replay buffer (npz) and ``state.json``.

    Written to a sibling temporary folder first and swapped in, so an interruption mid-save leaves
    the previous checkpoint intact.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save(tmp / MODEL_FILE)
    save_statistics(venv, tmp)
    if replay_buffer and isinstance(model, OffPolicyAlgorithm):
        save_replay_buffer(model, tmp / REPLAY_BUFFER_FILE)
    state.num_timesteps = int(model.num_timesteps)
    state.save(tmp / STATE_FILE)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


class ValidationCallback(BaseCallback):
    """Every ``every_steps`` env steps: run the deterministic policy on the validation scenarios,
    log ``val/<metric>`` to MLflow, and keep the best model (by ``metric``) in ``best_dir``."""

    def __init__(
        self,
        simulation: SimulationConfig,
        seeds: np.ndarray,
        every_steps: int,
        metric: str,
        run_id: str,
        best_dir: Path,
        state: RunState,
        client: MlflowClient | None = None,
        name: str = "agent",
    ) -> None:
        super().__init__(verbose=0)
        self.simulation = simulation
        self.seeds = np.asarray(seeds)
        self.every_steps = every_steps
        self.metric = metric
        self.run_id = run_id
        self.best_dir = best_dir
        self.state = state
        self.client = client or MlflowClient()
        self.policy_name = name
        self.periods_per_year = 365.0 / simulation.market.step_days
        self.last_validated_step: int | None = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def _on_step(self) -> bool:
        if self.every_steps > 0 and self.num_timesteps >= self.state.next_validation_step:
            self.validate()
            while self.state.next_validation_step <= self.num_timesteps:
                self.state.next_validation_step += self.every_steps
        return True

    def validate(self) -> dict[str, float]:
        """Validate now (also called once more when training ends)."""
        venv = self.model.get_vec_normalize_env()
        normalizer = ObsNormalizer.from_vec_normalize(venv) if venv is not None else None
        policy = SB3Policy(
            self.model,
            normalizer,
            name=self.policy_name,
            decision_every=self.simulation.env.decision_every,
        )
        record = run_policy(self.simulation, policy, self.seeds)
        metrics = validation_metrics(record, self.periods_per_year)
        step = int(self.num_timesteps)
        score = metrics[self.metric]
        if self.state.best_metric is None or score > self.state.best_metric:
            self.state.best_metric, self.state.best_step = score, step
            self.best_dir.mkdir(parents=True, exist_ok=True)
            self.model.save(self.best_dir / MODEL_FILE)
            if venv is not None:
                save_statistics(venv, self.best_dir)
            best = {"metric": self.metric, "value": score, "step": step, "validation": metrics}
            (self.best_dir / BEST_FILE).write_text(json.dumps(best, indent=2))
            np.savez(
                self.best_dir / BEST_SCORES_FILE,
                seeds=self.seeds,
                step=np.int64(step),
                **validation_scores(record, self.periods_per_year),
            )
        logged = {f"val/{k}": v for k, v in metrics.items()}
        logged[f"val/best_{self.metric}"] = float(self.state.best_metric)
        log_metrics(self.run_id, logged, step, self.client)
        self.last_validated_step = step
        self.history.append((step, metrics))
        return metrics


class TrainingInterrupted(Exception):
    """Raised out of ``model.learn`` after a requested stop, once a consistent checkpoint is saved."""


class CheckpointCallback(BaseCallback):
    """Checkpoints at rollout boundaries, and a graceful stop on request.

    A checkpoint is taken at the start of a rollout, i.e. right after the previous update: every step
    counted in ``num_timesteps`` has then been learned from (PPO's rollout buffer is empty; SAC's
    replay buffer holds every transition), so a resumed run loses no steps. Setting
    :attr:`stop_requested` (the SIGINT handler of ``defialloc.training.train`` does) saves a checkpoint at the
    next rollout boundary and raises :class:`TrainingInterrupted`.
    """

    def __init__(
        self,
        folder: Path,
        every_steps: int,
        state: RunState,
        replay_buffer: bool,
        on_save: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(verbose=0)
        self.folder = folder
        self.every_steps = every_steps
        self.state = state
        self.replay_buffer = replay_buffer
        self.on_save = on_save
        self.stop_requested = False

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        due = self.every_steps > 0 and self.num_timesteps >= self.state.next_checkpoint_step
        if due:
            while self.state.next_checkpoint_step <= self.num_timesteps:
                self.state.next_checkpoint_step += self.every_steps
        if due or self.stop_requested:
            self.save()
        if self.stop_requested:
            raise TrainingInterrupted(f"stopped at step {self.num_timesteps} (checkpoint saved)")

    def save(self) -> None:
        """Checkpoint now (call only between updates, e.g. after ``learn`` returns)."""
        venv = self.model.get_vec_normalize_env()
        if venv is None:
            raise RuntimeError("checkpoints need the model's env wrapped in VecNormalize")
        save_checkpoint(self.model, venv, self.state, self.folder, self.replay_buffer)
        if self.on_save is not None:
            self.on_save(int(self.num_timesteps))


class RunAwareCallback(BaseCallback):
    """An extra callback of :func:`defialloc.training.train.train` that needs the run's own validation and
    checkpoint callbacks (a sweep's reporter): ``train`` calls :meth:`attach` before learning."""

    validation: ValidationCallback
    checkpoint: CheckpointCallback
    run_dir: Path
    run_id: str

    def attach(
        self,
        validation: ValidationCallback,
        checkpoint: CheckpointCallback,
        run_dir: Path,
        run_id: str,
    ) -> None:
        self.validation, self.checkpoint, self.run_dir, self.run_id = (
            validation,
            checkpoint,
            run_dir,
            run_id,
        )

    def _on_step(self) -> bool:
        return True


class LineProgressCallback(BaseCallback):
    """Training progress outside a terminal (a pipe, a CI log): one plain line every few seconds
    instead of SB3's redrawn bar (:class:`defialloc.evaluation.progress.LineProgress`)."""

    def __init__(self, total_timesteps: int, interval_s: float = LINE_INTERVAL_S) -> None:
        super().__init__()
        self.total, self.interval_s = int(total_timesteps), interval_s
        self.bar: LineProgress | None = None

    def _on_training_start(self) -> None:
        self.bar = LineProgress(self.total, "training", "env step", interval_s=self.interval_s)
        self.bar.n = int(self.num_timesteps)

    def _on_step(self) -> bool:
        assert self.bar is not None
        self.bar.update(int(self.num_timesteps) - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EntropySchedule(BaseCallback):
    """PPO's entropy coefficient moved linearly from ``initial`` to ``final`` over the run's budget
    (SB3's PPO takes a constant); logged as ``train/ent_coef`` with its real value every rollout."""

    def __init__(self, initial: float, final: float, total_timesteps: int) -> None:
        super().__init__()
        self.initial, self.final, self.total = float(initial), float(final), int(total_timesteps)

    def value(self, num_timesteps: int) -> float:
        progress_remaining = max(0.0, 1.0 - num_timesteps / self.total)
        return self.final + (self.initial - self.final) * progress_remaining

    def _on_rollout_start(self) -> None:
        self.model.ent_coef = self.value(self.num_timesteps)
        self.logger.record("train/ent_coef", self.model.ent_coef)

    def _on_step(self) -> bool:
        return True
