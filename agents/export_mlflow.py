"""Log an ONNX export to MLflow and load an export source from an MLflow training run.

The MLflow side of ``agents/export.py``: ``source_from_run`` downloads a training run's model,
VecNormalize statistics and config into an ``ExportSource``; ``log_export`` logs the written
``policy.onnx`` + ``manifest.json`` as an ``mlflow.onnx`` model and a plain folder, and tags the
registered model version(s) of the training run with where the export lives.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from defialloc.agents.export import ExportSource, package_versions, source_from_files
from defialloc.agents.mlflow_store import redact_uri
from defialloc.agents.onnx_policy import (
    ACTION_OUTPUT,
    EXTRA_OUTPUT,
    INPUT_NAME,
    MANIFEST_FILE,
    ONNX_FILE,
    WEIGHTS_OUTPUT,
    PolicyManifest,
)
from defialloc.agents.sb3_io import find_statistics

#: the ONNX model logged to MLflow, and the plain export folder logged next to it
MLFLOW_MODEL_NAME = "onnx_policy"
MLFLOW_EXPORT_DIR = "onnx_export"
#: tags set on the registered model version the export belongs to
VERSION_TAGS = ("onnx_export_uri", "onnx_model_uri", "onnx_policy_id", "onnx_sha256")


# ---------------------------------------------------------------------------- sources
def source_from_run(run_id: str, which: str = "auto") -> ExportSource:
    """Download a training run's model (``best`` if it has one, else ``final``) and config from MLflow."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(
            f"--run-id {run_id}: no such run in {redact_uri(mlflow.get_tracking_uri())} ({exc})"
        ) from None
    top = {a.path for a in client.list_artifacts(run_id)}
    if which == "auto":
        which = "best" if "best" in top else "final"
    if which not in top:
        raise ValueError(
            f"--run-id {run_id}: the run has no {which!r} model artifacts (found {sorted(top)})"
        )
    with tempfile.TemporaryDirectory(prefix="defialloc-export-") as folder:
        fetch = mlflow.artifacts.download_artifacts
        model_dir = Path(fetch(run_id=run_id, artifact_path=which, dst_path=folder))
        cfg_file = Path(
            fetch(run_id=run_id, artifact_path="config/train_config.yaml", dst_path=folder)
        )
        # everything is loaded into memory here (nothing unpickled), so the downloads can go
        src = source_from_files(
            model_dir / "model.zip",
            find_statistics(model_dir),
            cfg_file,
            run.data.tags.get("algo"),
        )
    src.source = {
        "run_id": run_id,
        "artifact": which,
        "registered_model": run.data.tags.get("registered_model"),
    }
    return src


# ---------------------------------------------------------------------------- MLflow
def registered_versions(run_id: str) -> list[tuple[str, str]]:
    """``(name, version)`` of every registered model version logged by ``run_id``."""
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    return [(v.name, str(v.version)) for v in versions]


def log_export(
    out_dir: str | Path,
    manifest: PolicyManifest,
    *,
    run_id: str | None = None,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Log the export to MLflow and tag the registered model version(s) of the training run.

    With ``run_id`` (the training run) the ONNX model is logged into that run, whose status is kept;
    otherwise into a new run named ``export`` of ``experiment``. Logged: an ``mlflow.onnx`` model
    (``onnx_policy``, with a tensor signature and ``manifest.json`` as an extra file) and the plain
    folder (``onnx_export/``: what ``defialloc paper --policy`` takes). Every registered version of
    the run gets the tags ``onnx_export_uri``, ``onnx_model_uri``, ``onnx_policy_id``, ``onnx_sha256``.
    """
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    folder = Path(out_dir)
    n_weights = manifest.n_assets + 1
    outputs = [TensorSpec(np.dtype(np.float32), (-1, manifest.action_dim), name=ACTION_OUTPUT)]
    if manifest.has_weights_output:
        outputs.append(TensorSpec(np.dtype(np.float64), (-1, n_weights), name=WEIGHTS_OUTPUT))
    if manifest.action_dim > n_weights:
        outputs.append(
            TensorSpec(
                np.dtype(np.float32), (-1, manifest.action_dim - n_weights), name=EXTRA_OUTPUT
            )
        )
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, manifest.obs_dim), name=INPUT_NAME)]),
        outputs=Schema(outputs),
    )
    client = MlflowClient()
    if run_id is not None:
        status = client.get_run(run_id).info.status
        active = mlflow.start_run(run_id=run_id)
    else:
        status = "FINISHED"
        from defialloc.agents.mlflow_store import setup_mlflow

        active = mlflow.start_run(experiment_id=setup_mlflow(experiment), run_name="export")
    try:
        info = mlflow.onnx.log_model(
            onnx.load(str(folder / ONNX_FILE)),
            name=MLFLOW_MODEL_NAME,
            signature=signature,
            extra_files=[str(folder / MANIFEST_FILE)],
            metadata={
                "policy_id": manifest.policy_id,
                "algo": manifest.algo,
                "assets": list(manifest.asset_names),
            },
            save_as_external_data=False,
            pip_requirements=[f"onnxruntime=={package_versions()['onnxruntime']}", "numpy"],
        )
        mlflow.log_artifacts(str(folder), MLFLOW_EXPORT_DIR)
        mlflow.set_tags({"onnx_policy_id": manifest.policy_id, "onnx_sha256": manifest.onnx_sha256})
        the_run = active.info.run_id
    finally:
        mlflow.end_run()
        if run_id is not None:  # the training run keeps its own status (RUNNING, KILLED, ...)
            client.update_run(run_id, status=status)
    tags = {
        "onnx_export_uri": f"runs:/{the_run}/{MLFLOW_EXPORT_DIR}",
        "onnx_model_uri": info.model_uri,
        "onnx_policy_id": manifest.policy_id,
        "onnx_sha256": manifest.onnx_sha256,
    }
    attached = registered_versions(the_run) if run_id is not None else []
    for name, ver in attached:
        for key, value in tags.items():
            client.set_model_version_tag(name, ver, key, value)
    return {"run_id": the_run, "model_uri": info.model_uri, "attached_versions": attached, **tags}
