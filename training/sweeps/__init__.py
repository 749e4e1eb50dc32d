"""Sweeps: hyperparameters x training seeds on Ray Tune (or in this process), tracked in MLflow.

A sweep file (``configs/sweeps/*.yaml``, :mod:`defialloc.training.sweeps.config`) names a base training config,
a search space, training seeds and a search method (grid, random or Optuna TPE, optionally with ASHA
or median early stopping on the validation score). One **trial** is one configuration trained on one
training seed: one training run (:func:`defialloc.training.train.train`), nested in MLflow under the sweep's
parent run, scored on validation scenarios only (no test scenario or held-out data is touched).

Modules, one job each:

- :mod:`~defialloc.training.sweeps.config`: the validated sweep file;
- :mod:`~defialloc.training.sweeps.trials`: trial specs, grid/random expansion, the Optuna ask/tell source;
- :mod:`~defialloc.training.sweeps.trial`: what one trial runs (train, report, checkpoint, restore);
- :mod:`~defialloc.training.sweeps.tracking`: the parent run, finished trials (driver resume), store checks;
- :mod:`~defialloc.training.sweeps.results`: the result table (IQM, CIs, deflated Sharpe) and the best config;
- :mod:`~defialloc.training.sweeps.ray_backend` / :mod:`~defialloc.training.sweeps.local_backend`: the executors;
- :mod:`~defialloc.training.sweeps.driver`: ties them together (``defialloc sweep``, ``defialloc experiment``).
"""
