"""The sweep's parent run, its trials read back from MLflow, and the checks on the tracking store.

Resume without pickles: a sweep's parent run is tagged with the sweep name and the hash of its plan;
running the same command again finds the unfinished parent run and reads its nested trial runs:
trials tagged ``defialloc.status`` ``completed`` or ``early_stopped`` are not run again, unfinished
ones continue from their run folder's checkpoint.

Stores: SQLite and file stores live on one machine's disk, so a sweep whose trials run on other
machines must log to an ``mlflow server`` (HTTP) that every node can reach; this is checked before
Ray is contacted (the address) and again on the cluster's node list.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from defialloc.envs.config import ConfigError
from defialloc.training.sweeps.context import (
    CONFIG_TAG,
    DONE_STATUSES,
    LABEL_TAG,
    OVERRIDES_TAG,
    SEED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)

NAME_TAG, HASH_TAG, STATE_TAG, KIND_TAG = (
    "defialloc.sweep_name",
    "defialloc.sweep_hash",
    "defialloc.sweep_state",
    "kind",
)
SERVER_HINT = (
    "run an MLflow server that every node can reach, e.g. `mlflow server --backend-store-uri "
    "sqlite:///mlflow.db --host 0.0.0.0 --port 5000` on this machine, and set "
    "MLFLOW_TRACKING_URI=http://<this machine's address>:5000 before starting the sweep"
)


def redact_uri(uri: str) -> str:
    """The URI with any password (and a token-like user) replaced by ``***``, for printing."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def single_machine_store(uri: str) -> bool:
    """SQLite and file stores (and bare paths) live on one machine's disk."""
    scheme = urlsplit(uri).scheme.lower()
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # C:\\ on Windows


def _local_names() -> set[str]:
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return {n.lower() for n in names if n}


def is_local_host(host: str) -> bool:
    """Loopback addresses and this machine's own names and addresses."""
    host = host.strip("[]").lower()
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    return host in _local_names()


def address_host(address: str) -> str | None:
    """Host of a Ray address (``host:port``, ``ray://host:port``); None for ``auto`` / ``local``."""
    if address in ("auto", "local", ""):
        return None
    if "://" not in address:
        address = f"ray://{address}"
    return urlsplit(address).hostname


def check_store_for_address(uri: str, address: str | None) -> None:
    """Refuse a single-machine store (SQLite) when the Ray address is on another machine."""
    if address is None:
        return
    host = address_host(address)
    if host is not None and not is_local_host(host) and single_machine_store(uri):
        raise ConfigError(
            f"--address {address} is a Ray cluster on another machine, but MLflow tracks to "
            f"{redact_uri(uri)}, a store on this machine's disk that its trials cannot write to: "
            f"{SERVER_HINT}"
        )


def check_store_for_nodes(
    uri: str, node_hosts: Iterable[str], this_machine: Iterable[str] = ()
) -> None:
    """Refuse a store the cluster's nodes cannot reach: SQLite/file, or a loopback server, with a
    node on another machine (``this_machine``: more addresses of this machine, e.g. Ray's view)."""
    own = {h.lower() for h in this_machine}
    remote = sorted({h for h in node_hosts if h.lower() not in own and not is_local_host(h)})
    if not remote:
        return
    server = urlsplit(uri).hostname
    if single_machine_store(uri) or (server is not None and is_local_host(server)):
        raise ConfigError(
            f"the Ray cluster has nodes on other machines ({', '.join(remote)}), but MLflow tracks "
            f"to {redact_uri(uri)}, which they cannot reach: {SERVER_HINT}"
        )


def plan_hash(payload: dict[str, Any]) -> str:
    """Short stable hash of what defines a sweep (its file, resolved bases, seeds)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class ParentRun:
    run_id: str
    experiment_id: str
    resumed: bool


def open_parent(
    experiment: str,
    name: str,
    digest: str,
    kind: str,
    params: dict[str, Any],
    *,
    fresh: bool = False,
) -> ParentRun:
    """The sweep's parent run: the latest unfinished one with this name and hash (unless
    ``fresh``), else a new one."""
    from mlflow import MlflowClient

    from defialloc.evaluation.tracking import setup_mlflow

    experiment_id = setup_mlflow(experiment)
    client = MlflowClient()
    if not fresh:
        found = client.search_runs(
            [experiment_id],
            f"tags.`{NAME_TAG}` = '{name}' and tags.`{HASH_TAG}` = '{digest}' "
            f"and tags.`{STATE_TAG}` = 'running'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return ParentRun(run_id, experiment_id, True)
    tags = {NAME_TAG: name, HASH_TAG: digest, STATE_TAG: "running", KIND_TAG: kind}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(
        run.info.run_id,
        params=[_param(k, v) for k, v in params.items()],
    )
    return ParentRun(run.info.run_id, experiment_id, False)


def finished_parent(experiment: str, name: str, digest: str) -> Any | None:
    """The latest finished parent run with this name and plan hash (an MLflow ``Run``), or None:
    a plan that already ran to the end (e.g. an experiment's ablation) is reused, not re-run."""
    from mlflow import MlflowClient

    from defialloc.evaluation.tracking import setup_mlflow

    found = MlflowClient().search_runs(
        [setup_mlflow(experiment)],
        f"tags.`{NAME_TAG}` = '{name}' and tags.`{HASH_TAG}` = '{digest}' "
        f"and tags.`{STATE_TAG}` = 'done'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return Param(key, text[:6000])


def finish_parent(run_id: str, status: str = "FINISHED") -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    if status == "FINISHED":
        client.set_tag(run_id, STATE_TAG, "done")
    client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


@dataclass(frozen=True)
class TrialRun:
    """A trial's training run as MLflow has it."""

    run_id: str
    key: str
    config_id: str
    label: str
    overrides: dict[str, Any]
    seed: int
    status: str  # ``defialloc.status`` (running, interrupted, completed, early_stopped, failed)
    score: float | None  # best validation metric
    start_time: int

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES


def trial_runs(parent_run_id: str, experiment_id: str, metric: str) -> list[TrialRun]:
    """Every trial run nested under the parent (several per key if a trial restarted from 0)."""
    from mlflow import MlflowClient

    from defialloc.training.train import STATUS_TAG

    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.`{SWEEP_TAG}` = '{parent_run_id}'", max_results=50_000
    )
    out = []
    for run in runs:
        tags = run.data.tags
        if TRIAL_TAG not in tags:
            continue
        score = run.data.metrics.get(f"val/best_{metric}")
        out.append(
            TrialRun(
                run_id=run.info.run_id,
                key=tags[TRIAL_TAG],
                config_id=tags.get(CONFIG_TAG, ""),
                label=tags.get(LABEL_TAG, ""),
                overrides=json.loads(tags.get(OVERRIDES_TAG, "{}")),
                seed=int(tags.get(SEED_TAG, "0")),
                status=tags.get(STATUS_TAG, "unknown"),
                score=None if score is None else float(score),
                start_time=int(run.info.start_time or 0),
            )
        )
    return out


def latest_by_key(runs: Iterable[TrialRun]) -> dict[str, TrialRun]:
    """One run per trial key: a done one if any, else the latest started."""
    best: dict[str, TrialRun] = {}
    for run in sorted(runs, key=lambda r: (r.done, r.start_time)):
        best[run.key] = run
    return best
