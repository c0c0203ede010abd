"""Deployment entrypoint of the `sweep` flow (infra/prefect.yaml)."""

from dialsum.orchestration.sweep import sweep

__all__ = ["sweep"]
