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


def _ls(args: argparse.Namespace) -> int:
    storage = open_storage(args.url)
    runs = list_runs(storage)
    if not runs:
        print(f"no published runs in {storage.url}")
        return 0
    rows = []
    for run in runs:
        count, size = _summary(run.manifest)
        rows.append((run.run_id, run.model, f"{count} files", human_size(size), run.manifest.get("created_at", "?")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0


def _get(args: argparse.Namespace) -> int:
    from dialsum.cli import checks

    checks.destination(args.dest, "destination", empty=True)
    storage = open_storage(args.storage)
    dest = fetch(args.run_id, args.model, args.dest, storage)
    count, size = _summary(json.loads((dest / MANIFEST).read_text()))
    print(f"fetched {args.run_id}/{args.model} from {storage.url}: {count} files, {human_size(size)} -> {dest}")
    return 0
