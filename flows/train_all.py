"""Deployment entrypoint of the `train-all` flow (infra/prefect.yaml)."""

from dialsum.orchestration.train_all import train_all

__all__ = ["train_all"]
