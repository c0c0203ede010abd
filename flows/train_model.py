"""Deployment entrypoint of the `train-model` flow (infra/prefect.yaml)."""

from dialsum.orchestration.train_model import train_model

__all__ = ["train_model"]
