"""The Model Registry side of an exported policy: log it as a pyfunc anyone can load, move aliases.

:func:`log_policy_model` logs an ONNX export (``policy.onnx`` + ``manifest.json``) as ONE MLflow model
with two flavors:

- ``python_function``: ``agents/onnx_pyfunc.py`` logged as code (MLflow "models from code"), the
  ONNX graph and the manifest as its artifacts: ``mlflow.pyfunc.load_model("models:/<name>@<alias>")``
  needs mlflow, onnxruntime, numpy and pandas only (no code of this repository, no pickle), and
  returns the target weights and the raw action with a signature;
- ``onnx``: the same ``policy.onnx``, so ``mlflow.onnx.load_model`` returns the graph itself.

:func:`register_policy` registers it and moves the ``candidate`` alias only when the new version
validates better than the current candidate (same validation metric, scenario count and simulation
config; otherwise the two scores are not comparable and the alias stays). :func:`promote` sets
another alias (``champion``) on a chosen version. :func:`download_registered_export` turns
``models:/<name>@<alias>`` (or ``models:/<name>/<version>``) back into an export folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from defialloc.agents.onnx_policy import MANIFEST_FILE, ONNX_FILE, PolicyManifest, load_manifest
from defialloc.agents.onnx_pyfunc import output_columns

#: the pyfunc model's name in its run, and the model code file logged with it
MODEL_NAME = "policy"
MODEL_CODE = Path(__file__).with_name("onnx_pyfunc.py")
#: registered model version tags (strings) that the candidate rule compares
METRIC_TAG = "validation_metric"
SCORE_TAG = "validation_score"
SCENARIOS_TAG = "validation_scenarios"
CONFIG_TAG = "simulation_config_hash"
DECISION_TAG = "candidate_decision"
#: what a registered model's runtime needs (pinned to the versions that logged it)
RUNTIME_PACKAGES = ("mlflow", "onnxruntime", "numpy", "pandas")


@dataclass(frozen=True)
class Validation:
    """The validation score a version is registered with (higher is better)."""

    metric: str
    score: float
    n_scenarios: int
    config_hash: str

    def comparable(self, other: Validation) -> bool:
        return (self.metric, self.n_scenarios, self.config_hash) == (
            other.metric,
            other.n_scenarios,
            other.config_hash,
        )

    def tags(self) -> dict[str, str]:
        return {
            METRIC_TAG: self.metric,
            SCORE_TAG: repr(float(self.score)),
            SCENARIOS_TAG: str(self.n_scenarios),
            CONFIG_TAG: self.config_hash,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Validation | None:
        try:
            return cls(
                tags[METRIC_TAG], float(tags[SCORE_TAG]), int(tags[SCENARIOS_TAG]), tags[CONFIG_TAG]
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Registration:
    """A registered version and what happened to the alias."""

    name: str
    version: str
    model_uri: str
    alias: str | None
    alias_moved: bool
    reason: str


def pip_requirements() -> list[str]:
    """The registered model's requirements, pinned to this environment's versions."""
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def signature(manifest: PolicyManifest) -> Any:
    """Input ``(-1, obs_dim)`` float32 tensor -> columns ``weight_*`` (float64), ``action_*`` (float32)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    weights, actions = output_columns(manifest.to_dict())
    outputs = [ColSpec("double", c) for c in weights] + [ColSpec("float", c) for c in actions]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, manifest.obs_dim))]),
        outputs=Schema(outputs),
    )


def _save_pyfunc_with_onnx_flavor(path: str, mlflow_model: Any, **kwargs: Any) -> None:
    """``mlflow.pyfunc.save_model`` (models from code), then an ``onnx`` flavor on the same graph."""
    import mlflow
    import onnx

    mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    graph = Path(path) / "artifacts" / ONNX_FILE
    if not graph.is_file():
        raise RuntimeError(f"the pyfunc model did not store {ONNX_FILE} under artifacts/")
    mlflow_model.add_flavor(
        "onnx",
        onnx_version=onnx.__version__,
        data=graph.relative_to(path).as_posix(),
        providers=["CPUExecutionProvider"],
        code=None,
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


#: what ``mlflow.models.Model.log`` calls to write the model folder
_FLAVOR = SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_pyfunc_with_onnx_flavor)


def log_policy_model(export_dir: str | Path, *, name: str = MODEL_NAME) -> str:
    """Log an export folder as the two-flavor model (module docstring) in the active run; its URI."""
    from mlflow.models import Model

    folder = Path(export_dir)
    manifest = load_manifest(folder)
    obs = np.zeros((1, manifest.obs_dim), dtype=np.float32)
    quiet = logging.getLogger("mlflow.models.model")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it suggests `uv` for serving checks on every log
    try:
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=_FLAVOR,
            python_model=str(MODEL_CODE),
            flavor_name="pyfunc.ModelFromCode",
            artifacts={"policy": str(folder / ONNX_FILE), "manifest": str(folder / MANIFEST_FILE)},
            signature=signature(manifest),
            input_example=obs,
            pip_requirements=pip_requirements(),
            metadata={
                "policy_id": manifest.policy_id,
                "algo": manifest.algo,
                "assets": list(manifest.asset_names),
                "numeraire": manifest.numeraire,
                "action_kind": manifest.weights_block.transform,
            },
        )
    finally:
        quiet.setLevel(level)
    return info.model_uri


def _current(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register_policy(
    model_uri: str,
    registered_name: str,
    validation: Validation | None,
    *,
    alias: str | None = "candidate",
    description: str = "",
    tags: dict[str, str] | None = None,
) -> Registration:
    """Register ``model_uri``; move ``alias`` only if it validates better than the alias's version.

    The first version of a name always gets the alias. A later one gets it when its validation
    score is higher than the current holder's on the same metric, validation scenario count and
    simulation config; with a different setting (or no recorded score) the scores are not
    comparable and the alias stays where it is (``defialloc promote`` moves it by hand). The
    decision is recorded as the version tag ``candidate_decision``.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    version_info = mlflow.register_model(model_uri, registered_name)
    ver = str(version_info.version)
    for key, value in {**(tags or {}), **(validation.tags() if validation else {})}.items():
        client.set_model_version_tag(registered_name, ver, key, str(value))
    if description:
        client.update_model_version(registered_name, ver, description=description)
    if alias is None:
        return Registration(registered_name, ver, model_uri, None, False, "no alias asked for")
    holder = _current(client, registered_name, alias)
    moved, reason = _decide(holder, validation, alias)
    if moved:
        client.set_registered_model_alias(registered_name, alias, ver)
    client.set_model_version_tag(registered_name, ver, DECISION_TAG, reason)
    return Registration(registered_name, ver, model_uri, alias, moved, reason)


def _decide(holder: Any | None, new: Validation | None, alias: str) -> tuple[bool, str]:
    if holder is None:
        return True, f"first version with @{alias}"
    old = Validation.from_tags(dict(holder.tags))
    if new is None or old is None:
        return False, (
            f"@{alias} stays on v{holder.version}: no comparable validation score recorded "
            f"({'new' if new is None else 'current'} version has none)"
        )
    if not new.comparable(old):
        return False, (
            f"@{alias} stays on v{holder.version}: validated on another setting ({old.metric}, "
            f"{old.n_scenarios} scenarios, config {old.config_hash} vs {new.metric}, "
            f"{new.n_scenarios} scenarios, config {new.config_hash}); scores are not comparable"
        )
    if new.score > old.score:
        return (
            True,
            f"validates better than v{holder.version} ({new.score:+.6g} > {old.score:+.6g} {new.metric})",
        )
    return False, (
        f"@{alias} stays on v{holder.version}: {new.metric} {new.score:+.6g} is not above its "
        f"{old.score:+.6g}"
    )


def promote(
    registered_name: str,
    *,
    version: str | None = None,
    source_alias: str = "candidate",
    alias: str = "champion",
) -> Any:
    """Point ``alias`` at ``version`` (default: the version holding ``source_alias``); returns it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        if version is None:
            chosen = _current(client, registered_name, source_alias)
            if chosen is None:
                raise ValueError(
                    f"registered model {registered_name!r} has no @{source_alias} version; pass "
                    "--version"
                )
        else:
            chosen = client.get_model_version(registered_name, str(version))
        client.set_registered_model_alias(registered_name, alias, str(chosen.version))
    except MlflowException as exc:
        raise ValueError(f"registered model {registered_name!r}: {exc.message}") from None
    return chosen


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, None, alias); ``models:/name/3`` -> (name, "3", None)."""
    if not uri.startswith("models:/"):
        raise ValueError(
            f"{uri!r} is not a models:/ URI (models:/<name>@<alias> or models:/<name>/<version>)"
        )
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if name and alias:
            return name, None, alias
    elif "/" in rest:
        name, _, ver = rest.rpartition("/")
        if name and ver.isdigit():
            return name, ver, None
    raise ValueError(
        f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>, e.g. "
        "models:/defialloc-ppo@champion"
    )


def resolve_version(uri: str) -> Any:
    """The ModelVersion a ``models:/`` URI names (ValueError with the reason otherwise)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, ver, alias = parse_models_uri(uri)
    client = MlflowClient()
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, ver)
    except MlflowException as exc:
        raise ValueError(f"{uri}: {exc.message}") from None


def download_registered_export(model_version: Any, out_dir: str | Path) -> Path | None:
    """Copy the version's ``policy.onnx`` + ``manifest.json`` to ``out_dir``; None when the version
    is not an ONNX policy model (an older registration: export it from its run instead)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="defialloc-registry-") as tmp:
        uri = f"models:/{model_version.name}/{model_version.version}"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        onnx_file, manifest = local / "artifacts" / ONNX_FILE, local / "artifacts" / MANIFEST_FILE
        if not (onnx_file.is_file() and manifest.is_file()):
            return None
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=out))
        try:
            shutil.copy2(onnx_file, staged / ONNX_FILE)
            shutil.copy2(manifest, staged / MANIFEST_FILE)
            from defialloc.agents.onnx_policy import OnnxPolicy

            OnnxPolicy(staged)  # checks the manifest, the SHA-256 and the graph's signature
            (staged / ONNX_FILE).replace(out / ONNX_FILE)
            (staged / MANIFEST_FILE).replace(out / MANIFEST_FILE)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return out
