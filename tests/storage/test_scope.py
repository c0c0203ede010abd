"""Which storage this is (`storage.scope`): the same for every opening of one storage, different for any other."""

from __future__ import annotations

import shutil
from pathlib import Path

from dialsum.storage import open_storage, storage_scope
from dialsum.storage.scope import ID_KEY


def test_one_storage_has_one_scope_and_another_storage_another(tmp_path: Path) -> None:
    scope = storage_scope(open_storage(str(tmp_path / "a")))
    assert len(scope) == 12 and int(scope, 16) >= 0
    assert storage_scope(open_storage(f"file://{tmp_path}/a")) == scope  # opened again, by another URL form
    held = (tmp_path / "a" / ID_KEY).read_bytes()
    assert storage_scope(open_storage(str(tmp_path / "a"))) == scope and (tmp_path / "a" / ID_KEY).read_bytes() == held
    assert storage_scope(open_storage(str(tmp_path / "b"))) != scope


def test_the_same_url_reaching_another_storage_has_another_scope(tmp_path: Path) -> None:
    """The same folder path on another host (or a bucket of the same name on another endpoint) holds another id."""
    scope = storage_scope(open_storage(str(tmp_path / "a")))
    shutil.rmtree(tmp_path / "a")
    assert storage_scope(open_storage(str(tmp_path / "a"))) != scope


def test_a_copied_storage_has_another_scope(tmp_path: Path) -> None:
    scope = storage_scope(open_storage(str(tmp_path / "a")))
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    assert storage_scope(open_storage(str(tmp_path / "copy"))) != scope


def test_the_scope_on_s3(s3_bucket: str) -> None:
    scope = storage_scope(open_storage(f"s3://{s3_bucket}/team"))
    assert storage_scope(open_storage(f"s3://{s3_bucket}/team")) == scope
    assert storage_scope(open_storage(f"s3://{s3_bucket}/other")) != scope
