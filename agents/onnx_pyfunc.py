"""MLflow pyfunc of an exported ONNX policy ("models from code"): needs only mlflow, numpy, pandas
and onnxruntime.

This file is logged AS the model (``mlflow.pyfunc.log_model(python_model=<this file>, artifacts=
{"policy": policy.onnx, "manifest": manifest.json})``, see ``agents/registry.py``), so it must not
import anything from this repository: ``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` works in
an environment that has never seen it. Nothing is unpickled: the model is this source file, the ONNX
graph and a JSON manifest.

``predict(observations)``: raw env observations ``(B, obs_dim)`` float32 (the env's observation
dtype; the observation normalization of training is inside the graph; the feature order is the
manifest's ``observation_names``) -> a DataFrame with one row per observation:

- ``weight_<asset>`` ... ``weight_<numeraire>``: the target portfolio weights (cash last, summing to
  1), for policies of the ``target`` action kind. Policies of the ``anchored`` and ``delta`` kinds
  have no such columns: their target is a deviation from (or a step away from) the portfolio's
  CURRENT weights, which an observation row alone does not determine; the env's action map
  (``envs/action_kinds.py``) turns their action into weights given the portfolio.
- ``action_<label>``: the raw deterministic action in the env's Box ``[-1, 1]``, one column per
  entry of the manifest's action layout (assets and cash, then ``leverage_target`` and
  ``hedge_<asset>`` when the policy trades lending and perps; those two are clipped Box values:
  debt/equity = ``(a + 1) / 2 * env.lending.max_leverage``, hedge ratio = ``a``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

INPUT_NAME = "observation"
ACTION_OUTPUT = "action"
WEIGHTS_OUTPUT = "target_weights"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def output_columns(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(weight columns, action columns)`` of the prediction frame for a manifest (plain JSON)."""
    layout = manifest["action_layout"]
    weights_block = layout[0]
    weights = []
    if weights_block["transform"] == "clipped_linear_simplex":  # the target kind
        weights = [f"weight_{label}" for label in weights_block["labels"]]
    actions = [f"action_{label}" for block in layout for label in block["labels"]]
    return weights, actions


class OnnxPolicyModel(mlflow.pyfunc.PythonModel):
    """Serves ``policy.onnx`` with onnxruntime on the CPU (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import onnxruntime as ort

        manifest_path = context.artifacts["manifest"]
        onnx_path = context.artifacts["policy"]
        self.manifest = json.loads(Path(manifest_path).read_text())
        actual = _sha256(onnx_path)
        if actual != self.manifest["onnx_sha256"]:
            raise ValueError(
                f"{onnx_path}: SHA-256 {actual[:16]}... does not match the manifest's "
                f"{self.manifest['onnx_sha256'][:16]}...; the model's files are corrupt or mixed up"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.obs_dim = len(self.manifest["observation_names"])
        self.weight_columns, self.action_columns = output_columns(self.manifest)

    def _observations(self, model_input: Any) -> np.ndarray:
        if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
            if len(model_input) != 1:
                raise ValueError(f"expected one input ({INPUT_NAME!r}), got {sorted(model_input)}")
            (model_input,) = model_input.values()
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.to_numpy()
        values = np.asarray(model_input)
        if values.dtype.kind not in "fiu":
            raise ValueError(
                f"observations must be numbers (float32, shape (B, {self.obs_dim})); got dtype "
                f"{values.dtype}"
            )
        obs = values.astype(np.float32)
        if obs.ndim == 1:
            obs = obs[None, :]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"observations have shape {values.shape}; expected (B, {self.obs_dim}) in the order "
                "of the manifest's observation_names"
            )
        if not np.all(np.isfinite(obs)):
            raise ValueError("observations contain NaN or inf; the policy needs finite features")
        return np.ascontiguousarray(obs)

    # np.ndarray is a hint MLflow infers no schema from (the logged signature, a (-1, obs_dim)
    # float32 tensor, governs); DataFrames and {name: array} dicts are accepted too
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Raw observations ``(B, obs_dim)`` -> DataFrame of ``weight_*`` and ``action_*`` columns."""
        obs = self._observations(model_input)
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, {INPUT_NAME: obs}), strict=True))
        columns: dict[str, np.ndarray] = {}
        if self.weight_columns:
            weights = np.asarray(outputs[WEIGHTS_OUTPUT], dtype=np.float64)
            columns.update(zip(self.weight_columns, weights.T, strict=True))
        action = np.asarray(outputs[ACTION_OUTPUT], dtype=np.float32)
        columns.update(zip(self.action_columns, action.T, strict=True))
        return pd.DataFrame(columns)


mlflow.models.set_model(OnnxPolicyModel())
