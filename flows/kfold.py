"""Deployment entrypoint of the `kfold` flow (infra/prefect.yaml)."""

from dialsum.orchestration.kfold import kfold

__all__ = ["kfold"]
