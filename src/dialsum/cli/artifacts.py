"""`artifacts` sub-commands: list published runs and fetch one, verified."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dialsum.storage import MANIFEST, fetch, list_runs, open_storage


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `artifacts ls [URL]` and `artifacts get RUN MODEL DEST [--storage URL]` to an argparse CLI."""
    parser = subparsers.add_parser("artifacts", help="list and fetch published runs")
    commands = parser.add_subparsers(dest="artifacts_command", required=True)

    ls = commands.add_parser("ls", help="list complete published runs")
    ls.add_argument("url", nargs="?", help="storage URL or folder (default: DIALSUM_STORAGE_URL)")
    ls.set_defaults(func=_ls)

    get = commands.add_parser("get", help="download a published run and verify every file")
    get.add_argument("run_id", metavar="RUN")
    get.add_argument("model", metavar="MODEL")
    get.add_argument("dest", metavar="DEST", type=Path, help="new or empty folder to fetch into")
    get.add_argument("--storage", metavar="URL", help="storage URL or folder (default: DIALSUM_STORAGE_URL)")
    get.set_defaults(func=_get)


def human_size(size: int) -> str:
    """Bytes as a short human-readable string, e.g. 1.5 MB."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _summary(manifest: dict[str, Any]) -> tuple[int, int]:
    files = manifest["files"]
    return len(files), sum(entry["size"] for entry in files)


def checkpoint_sizes(run_id: str, model: str, storage) -> tuple[int, int]:
    """How many training checkpoints a published model run keeps in storage, and their bytes."""
    from dialsum.storage.checkpoints import checkpoint_manifest, list_checkpoints

    names = list_checkpoints(run_id, model, storage)
    manifests = [checkpoint_manifest(run_id, model, name, storage) or {"files": []} for name in names]
    return len(names), sum(_summary(m)[1] for m in manifests)


def _ls(args: argparse.Namespace) -> int:
    storage = open_storage(args.url)
    runs = list_runs(storage)
    if not runs:
        print(f"no published runs in {storage.url}")
        return 0
    rows = [("run", "model", "files", "size", "checkpoints", "total", "created")]
    for run in runs:
        count, size = _summary(run.manifest)
        kept, kept_size = checkpoint_sizes(run.run_id, run.model, storage)
        rows.append(
            (
                run.run_id,
                run.model,
                str(count),
                human_size(size),
                f"{kept} ({human_size(kept_size)})" if kept else "-",
                human_size(size + kept_size),
                run.manifest.get("created_at", "?"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _get(args: argparse.Namespace) -> int:
    from dialsum.cli import checks

    checks.destination(args.dest, "destination", empty=True)
    storage = open_storage(args.storage)
    dest = fetch(args.run_id, args.model, args.dest, storage)
    count, size = _summary(json.loads((dest / MANIFEST).read_text()))
    print(f"fetched {args.run_id}/{args.model} from {storage.url}: {count} files, {human_size(size)} -> {dest}")
    return 0
