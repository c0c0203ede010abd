"""Pinned base checkpoints: the hub commit a profile's `model` and `revision` resolve to.

A real profile names its base as a hub id plus a `revision` (a commit, tag or branch). A run resolves that to
the snapshot's commit hash once, loads exactly that commit, records it (metrics.json, the manifest) and keeps it
for retries; predicting with the run later loads the same commit again. So the adapter is applied next month
to the base it was trained on, whatever the hub's `main` points at by then. Local folders have no commit.
"""

from __future__ import annotations

import re
from pathlib import Path

from dialsum.errors import ConfigError

COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def resolve_commit(source: str, revision: str | None, token: str | None = None) -> str | None:
    """The commit hash of the snapshot `source` (a hub id) at `revision` (default branch when None), from the
    hub or, offline, from the local hub cache; None when `source` is a local folder."""
    if Path(source).expanduser().exists():
        return None
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(source, "config.json", revision=revision, token=token))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"cannot resolve {source}@{revision or 'main'} on the hub or in its cache ({first})"
        ) from None
    commit = path.parent.name  # <cache>/models--org--name/snapshots/<commit>/config.json
    return commit if COMMIT_RE.fullmatch(commit) else None


def pinned(cfg, commit: str | None):
    """`cfg` with `revision` set to `commit` (what every load of a run uses), or `cfg` itself without one."""
    return cfg.model_copy(update={"revision": commit}) if commit else cfg
