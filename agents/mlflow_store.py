"""Where MLflow data goes: one tracking-URI rule and one experiment set-up for every writer.

``$MLFLOW_TRACKING_URI`` if set, else an embedded SQLite store ``mlflow.db`` in the working folder; for a
local SQLite store, artifacts go to ``mlartifacts/<experiment>`` beside the database (not ``./mlruns``).
Imports mlflow only (no torch), so the paper-trading runtime can use it.
"""

from __future__ import annotations

import os
from pathlib import Path


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def local_artifact_root(uri: str) -> str | None:
    """Artifact folder for a local SQLite store (``<db folder>/mlartifacts``), None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts").resolve().as_uri()


def setup_mlflow(experiment: str) -> str:
    """Point mlflow at :func:`tracking_uri`, create ``experiment`` if needed; return its id."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    root = local_artifact_root(uri)
    location = None if root is None else f"{root}/{experiment}"
    return client.create_experiment(experiment, artifact_location=location)
