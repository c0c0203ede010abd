"""Hyperparameter search and cross-validation logic that needs no Prefect: the typed search space (`space`), the
Optuna study in a journal file snapshotted to storage (`study`), the parent's ask → launch → watch → prune → tell
loop behind a small executor interface (`loop`), the sweep's outputs (`outputs`) and K-fold assignment (`folds`).

The flows in `orchestration/` (sweep, kfold, tune-decoding) drive these. May import data, storage and the
foundations; never torch, the engine, the models or Prefect.
"""
