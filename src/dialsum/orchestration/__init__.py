"""Prefect flows (`flows`: train-all, train-model, the ensemble task), where each child runs (`placement`) and the
workers that serve them (`worker`, `docker_worker`). May import the pipeline and everything below it; only the
CLI and `flows/*.py` import this package.
"""
