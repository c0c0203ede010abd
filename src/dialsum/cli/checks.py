"""Checks before any work, in seconds: configs, data, output folders, the storage (a probe object written and
deleted), a run to resume, and the runs' leases. They run before torch, transformers or Prefect are imported,
create nothing, and fail with one line naming the file, folder, option or process at fault.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from dialsum.cli.profiles import overrides_of
from dialsum.errors import ConfigError, FolderError


def models(names: list[str], overrides: Sequence[str] = ()) -> list:
    """Each profile loaded and validated with the command's overrides, each named once."""
    from dialsum.config import check_listed_once, load_model_config

    check_listed_once(names)
    return [load_model_config(name, overrides) for name in names]


def trainable(cfg) -> bool:
    """Whether a profile's family trains (`models.families`); an API profile only generates."""
    from dialsum.models import families

    return families.trainable(cfg)


def location(text: str) -> str | Path:
    """The type of `--data`: a storage URL (`s3://bucket/prefix`, `file:///path`) stays the URL as given (`Path`
    would make `s3:/bucket/prefix` of it); anything else is a folder path."""
    return text if "://" in text else Path(text)


def fetched(data: str | Path | None) -> Path | None:
    """The local folder of `--data`: the folder itself, or a storage URL's CSVs fetched into the cache."""
    from dialsum.data.source import resolve

    return resolve(data)


def data(folder, splits: tuple[str, ...] | None = None, optional: tuple[str, ...] = ("test",)) -> dict:
    """The data folder's CSVs read and validated, by split; a storage URL's are fetched first (a run that runs
    elsewhere fetches them again: one line now for a URL that cannot be read, not a traceback later)."""
    from dialsum.data.source import read_splits

    return read_splits(folder, splits, optional)


def destination(path: Path, what: str, empty: bool = False) -> None:
    """A folder that a command will write (the `what` folder): creatable and writable, and with `empty`, new or
    empty."""
    from dialsum.settings import check_writable

    if empty and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FolderError(f"the {what} folder {path} already exists and is not an empty folder")
    check_writable(path, what)


def training(args: argparse.Namespace) -> list[str]:
    """Everything `train` and `train-all` need before building a model; returns the models' names."""
    from dialsum import storage
    from dialsum.settings import get_settings

    args.overrides, args.overlays = overrides_of(args), []  # overlays read once, then passed on as overrides
    cfgs = models(args.models, args.overrides)
    data(args.data)
    hub(cfgs)
    get_settings().check_folders_writable()
    store = opened_storage(args)
    from dialsum.state import runs

    if args.resume:
        runs.require_resumable(storage.check_name(args.resume, "run id"), [cfg.name for cfg in cfgs], store)
    storage.probe(store)
    if not args.resume and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # a new run records what it was given
        from dialsum.cli.resume import record_of

        args.run_id = storage.check_name(args.run_id, "run id") if args.run_id else storage.new_run_id()
        runs.write_command(args.run_id, record_of(args, getattr(args, "mode", None) or "multi_model"), store)
    return [cfg.name for cfg in cfgs]


def opened_storage(args: argparse.Namespace):
    """The command's storage (`--storage`, default DIALSUM_STORAGE_URL): opened on first use, then shared by every
    step of the command."""
    from dialsum import storage

    if getattr(args, "opened_storage", None) is None:
        args.opened_storage = storage.open_storage(args.storage)
    return args.opened_storage


@contextmanager
def leases(args: argparse.Namespace, names: list[str]) -> Iterator[None]:
    """Hold the leases of a named run (--run-id or --resume) for the whole command, taken before torch loads:
    a second process with the same run id stops at once, naming the holder. Data-parallel ranks take none
    (the process that launched them holds it); a new run id cannot be contended."""
    from dialsum import storage
    from dialsum.settings import get_settings

    if args.run_id is None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return
    store = opened_storage(args)
    with ExitStack() as held:
        for name in names:
            held.enter_context(
                storage.hold(store, storage.check_name(args.run_id, "run id"), name, get_settings().lease_seconds)
            )
        yield


def hub(cfgs: list, tokenizer_only: bool = False) -> None:
    """Each hub checkpoint a profile names (not a tiny model, not a local folder) is in the local Hugging Face
    cache, or the hub answers: else one line now, not a minute of connection retries later. A name that is a
    path (`--set model=/path`) must be a folder. `tokenizer_only` (preflight) checks only where the tokenizer comes
    from."""
    from dialsum.models import families

    for cfg in cfgs:
        wanted = families.of(cfg).hub_checkpoints(cfg)
        if tokenizer_only and wanted:
            wanted = [(cfg.tokenizer or cfg.model, "tokenizer_config.json")]
        for repo, probe in wanted:
            if not Path(repo).exists():
                _hub_checkpoint(cfg, repo, probe)


def _looks_like_path(repo: str) -> bool:
    return repo.startswith(("/", ".", "~")) or "\\" in repo or repo.count("/") > 1


def _hub_checkpoint(cfg, repo: str, probe: str) -> None:
    """A hub id in the cache or on a reachable hub; a path that does not exist is one line naming it."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    key = "model" if repo == cfg.model else "tokenizer"
    if _looks_like_path(repo):
        raise ConfigError(
            f"{cfg.name}: {key} {repo}: no such folder (a local checkpoint is a folder with "
            f"{probe}; a hub id is ORG/NAME)"
        )
    try:
        if isinstance(try_to_load_from_cache(repo, probe, revision=cfg.revision), str):
            return
    except HFValidationError:
        raise ConfigError(
            f"{cfg.name}: {key} {repo!r} is neither a local folder nor a valid hub id (ORG/NAME)"
        ) from None
    where = f"{cfg.name}: {repo} is not a local folder and not in the Hugging Face cache {constants.HF_HUB_CACHE}"
    fix = "pass --set model=<local folder> (and --set tokenizer=<folder>) with a copy of the checkpoint"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{where}, and HF_HUB_OFFLINE is set; download it where the hub is reachable, or {fix}")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        raise ConfigError(f"{where}, and {host} cannot be reached ({exc.strerror or exc}); {fix}") from None
