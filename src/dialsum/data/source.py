"""Where training data comes from, and the fingerprints that say whether anything changed.

`data_dir` may be a folder or a storage URL (`s3://bucket/prefix`, `file:///path`). A URL's top-level CSV
files are downloaded into a staging folder, hashed, and moved to `<cache>/data/<data fingerprint>/`: a
night that sees the same bytes reuses the same folder, and the fingerprint is recorded with every run.

Fingerprints (hex sha256):
* data: every `*.csv` of the folder, by name and content (what a run trained and was scored on);
* dev: `dev.csv` alone (what a dev score means: two scores compare only on the same dev data);
* config: the resolved config YAML;
* code: every `.py` file of the installed `dialsum` package (works in images without git).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from dialsum.data import sample_dir
from dialsum.errors import DataError

DATA_FILES = ("train.csv", "dev.csv", "test.csv")


def is_url(data: str | Path | None) -> bool:
    return data is not None and urlparse(str(data)).scheme in ("s3", "file")


def data_fingerprint(data_dir: Path | None) -> str:
    """sha256 over the folder's CSV files (name and bytes), in name order; the bundled sample when None."""
    root = Path(data_dir) if data_dir else sample_dir()
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.csv")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def dev_fingerprint(data_dir: Path | None) -> str | None:
    """sha256 of dev.csv (None when the folder has none)."""
    path = (Path(data_dir) if data_dir else sample_dir()) / "dev.csv"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def config_fingerprint(cfg) -> str:
    from dialsum.config import dump_config

    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()


def run_identity(cfg, data_dir: Path | None, debug: bool) -> dict:
    """What makes two runs of a model the same run: its resolved config, its data and debug mode (the keys a
    published manifest's `extra` records)."""
    return {"config_sha256": config_fingerprint(cfg), "data_sha256": data_fingerprint(data_dir), "debug": debug}


def same_run(manifest: dict, cfg, data_dir: Path | None, debug: bool) -> bool:
    """True when a published manifest records this config, data and debug mode."""
    extra = manifest.get("extra", {})
    return all(extra.get(key) == value for key, value in run_identity(cfg, data_dir, debug).items())


def code_files() -> dict[str, Path]:
    """Every Python source of the installed `dialsum` package, by path relative to it, in path order."""
    import dialsum

    root = Path(dialsum.__file__).resolve().parent
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*.py"))}


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over the package's Python sources, by relative path and content."""
    digest = hashlib.sha256()
    for rel, path in code_files().items():
        digest.update(rel.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def resolve(data: str | Path | None) -> Path | None:
    """A local folder holding the data: `data` itself when it is a folder, else a verified cached copy."""
    if data is not None and "://" in str(data) and not is_url(data):
        raise DataError(f"unsupported data URL {str(data)!r}: use s3://bucket/prefix, file:///path or a folder")
    if data is None or not is_url(data):
        return Path(data) if data is not None else None
    from dialsum import storage

    store = storage.open_storage(str(data))
    keys = [k for k in store.list_keys("") if "/" not in k and k.endswith(".csv")]
    if "dev.csv" not in keys and "train.csv" not in keys:
        raise DataError(f"{store.url}: no train.csv or dev.csv found at this data location")
    cache = _cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        for key in sorted(keys):
            store.download(key, staging / key)
        fingerprint = data_fingerprint(staging)
        final = cache / fingerprint
        if not final.is_dir():
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def read_splits(
    data: str | Path | None, splits: tuple[str, ...] | None = None, optional: tuple[str, ...] = ("test",)
) -> dict:
    """The data's CSVs read and validated, by split (a storage URL's fetched first, its errors naming the URL); a
    data location with none of `splits` is one line naming it."""
    from dialsum.data import load_splits

    try:
        loaded = load_splits(resolve(data), optional=optional, **({"splits": splits} if splits else {}))
    except DataError as exc:
        if not is_url(data):
            raise
        raise DataError(f"{data}: {exc}") from None
    if not loaded:
        raise DataError(f"{data or sample_dir()}: no {' or '.join(f'{s}.csv' for s in splits or ())} found")
    return loaded


def _cache_root() -> Path:
    from dialsum.settings import get_settings

    return Path(get_settings().cache_dir) / "data"
