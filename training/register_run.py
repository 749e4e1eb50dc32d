"""The end of a training run: save and log the final and best models, export the chosen policy to
ONNX and register it in the Model Registry (``agents/registry.py``: a pyfunc anyone can load; the
``candidate`` alias moves only when this version validates better than the current candidate)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from defialloc.agents.export import ExportSource, export_policy
from defialloc.agents.export_mlflow import MLFLOW_EXPORT_DIR
from defialloc.agents.onnx_policy import PolicyManifest
from defialloc.agents.registry import Validation, log_policy_model, register_policy
from defialloc.agents.sb3 import ObsNormalizer, load_model
from defialloc.agents.sb3_io import find_statistics, save_statistics
from defialloc.training.callbacks import MODEL_FILE
from defialloc.training.config import TrainConfig

if TYPE_CHECKING:
    from defialloc.training.train import TrainResult


def finish_run(
    cfg: TrainConfig,
    model: BaseAlgorithm,
    venv: VecNormalize,
    run_dir: Path,
    result: TrainResult,
    register: bool | None,
    best_metric: float | None = None,
) -> None:
    """Save and log the final model, log the best one, export the chosen policy (best if validated)
    to ONNX and register it (``agents/registry.py``: a pyfunc anyone can load; ``candidate`` moves
    only when this version validates better than the current candidate)."""
    final = run_dir / "final"
    final.mkdir(parents=True, exist_ok=True)
    model.save(final / MODEL_FILE)
    save_statistics(venv, final)
    mlflow.log_artifacts(str(final), "final")
    if (run_dir / "best" / MODEL_FILE).is_file():
        mlflow.log_artifacts(str(run_dir / "best"), "best")
    if not (cfg.mlflow.register_model if register is None else register):
        return
    export_dir = run_dir / "onnx"
    manifest = export_policy_dir(cfg, result.policy_dir(), export_dir, result.run_id)
    mlflow.log_artifacts(str(export_dir), MLFLOW_EXPORT_DIR)  # what `defialloc paper` takes
    validation = None
    if best_metric is not None:
        validation = Validation(
            cfg.eval.metric, best_metric, cfg.eval.n_scenarios, cfg.simulation.config_hash()
        )
    registration = register_policy(
        log_policy_model(export_dir),
        cfg.registered_name,
        validation,
        alias=cfg.mlflow.alias,
        description=(
            f"{cfg.algo.upper()} policy of training run {result.run_id} (ONNX, {manifest.obs_dim} "
            f"features -> {manifest.action_dim} actions). mlflow.pyfunc.load_model(...).predict("
            "float32 observations) returns weight_* (target weights, target action kind) and "
            "action_* columns; needs mlflow, onnxruntime, numpy and pandas only."
        ),
        tags={
            "algo": cfg.algo,
            "training_run_id": result.run_id,
            "policy_id": manifest.policy_id,
            "onnx_sha256": manifest.onnx_sha256,
        },
    )
    result.model_version = registration.version
    result.registration_note = registration.reason
    mlflow.set_tag("registered_model", f"{cfg.registered_name}/{registration.version}")


def export_policy_dir(cfg: TrainConfig, folder: Path, out: Path, run_id: str) -> PolicyManifest:
    """Export the model saved in ``folder`` (model zip + statistics) to ONNX in ``out``."""
    policy_model = load_model(cfg.algo, folder / MODEL_FILE, device="cpu")
    stats = find_statistics(folder)
    normalizer = (
        ObsNormalizer.load(stats)
        if stats is not None
        else ObsNormalizer.identity(int(policy_model.observation_space.shape[0]))
    )
    source = {"run_id": run_id, "artifact": folder.name, "registered_model": cfg.registered_name}
    return export_policy(
        ExportSource(policy_model, normalizer, cfg.simulation, cfg.algo, source), out
    )
