"""Where MLflow data goes: one tracking-URI rule, one default experiment, one way to print a URI.

``$MLFLOW_TRACKING_URI`` if set, else an embedded SQLite store ``mlflow.db`` in the working folder; for a
local SQLite store, artifacts go to ``mlartifacts/<experiment>`` beside the database (not ``./mlruns``).
Every command logs to and reads from the same default experiment, :func:`default_experiment`
(``$MLFLOW_EXPERIMENT_NAME``, MLflow's own variable, else ``defialloc``), unless told otherwise.
A URI is printed only through :func:`redact_uri` (no password, token or key reaches a terminal or a
report). Imports mlflow only (no torch), so the paper-trading runtime can use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# MLflow prints "View run ... at <tracking URI>" for every run it ends on a server: with nested runs
# that is two lines per policy, and the URI may hold credentials; our commands print their own,
# redacted (set the variable to false to get MLflow's lines back)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: the experiment every command uses by default (train, evaluate, compare, export, paper, demo)
DEFAULT_EXPERIMENT = "defialloc"
#: query parameters whose values are secrets
_SECRET_QUERY = re.compile(r"(pass|pwd|secret|token|key|auth|credential|signature|sig)", re.I)


def default_experiment() -> str:
    """``$MLFLOW_EXPERIMENT_NAME`` if set, else ``defialloc``."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def redact_uri(uri: str) -> str:
    """``uri`` safe to print: the password of ``user:password@host`` and secret-looking query
    values (``token=``, ``password=``, ``key=``, ...) become ``***``; a user name alone is kept."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unprintable URI>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if sep else f"{user}@{host}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = any(_SECRET_QUERY.search(k) for k, _ in pairs)
    if netloc == parts.netloc and not secret:
        return uri  # nothing to hide (and sqlite:////abs/path keeps its empty host)
    query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def display_tracking_uri() -> str:
    """:func:`tracking_uri` with credentials redacted (what messages and reports show)."""
    return redact_uri(tracking_uri())


def local_artifact_root(uri: str) -> str | None:
    """Artifact folder for a local SQLite store (``<db folder>/mlartifacts``), None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts").resolve().as_uri()


def setup_mlflow(experiment: str | None = None) -> str:
    """Point mlflow at :func:`tracking_uri`, create ``experiment`` (default: :func:`default_experiment`)
    if needed; return its id."""
    import mlflow

    experiment = experiment or default_experiment()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    root = local_artifact_root(uri)
    location = None if root is None else f"{root}/{experiment}"
    # MLflow's UI opens a "model training" experiment on its runs table (not the GenAI overview)
    tags = {"mlflow.experimentKind": "custom_model_development"}
    return client.create_experiment(experiment, artifact_location=location, tags=tags)


def experiments_with_runs(tag: str | None = None, value: str | None = None) -> dict[str, int]:
    """``{experiment name: number of runs}`` at :func:`tracking_uri` (only runs with ``tag = value``
    when given); what a command lists when it is asked for an experiment that does not exist."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    found: dict[str, int] = {}
    for exp in client.search_experiments():
        query = f"tags.`{tag}` = '{value}'" if tag and value else ""
        runs = client.search_runs([exp.experiment_id], filter_string=query, max_results=1000)
        if runs:
            found[exp.name] = len(runs)
    return found
