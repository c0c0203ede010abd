"""Prefect flows (`train_all`: train-all and the ensemble task; `train_model`: train-model; `sweep`; `kfold`), what
train-all decides around its models (`reuse_and_promotion`), where each child runs (`placement`) and the workers that
serve them (`worker`, `docker_worker`). May import the pipeline and everything below it; only the
CLI and `flows/*.py` import this package.
"""
