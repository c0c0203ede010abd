"""Runtime settings from the environment (or `.env`), kept apart from experiment configs.

Build them through `get_settings()`; nothing is read at import time.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dialsum.errors import FolderError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIALSUM_", env_file=".env", extra="ignore")

    config_dir: Path | None = Field(
        None,
        description="Folder with base/ and models/ YAML that add to or override ./configs and the shipped profiles.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "dialsum", description="Where locally built tiny models are cached."
    )
    output_dir: Path = Field(Path("outputs"), description="Local run folders (one per model run).")
    storage_url: str = Field(
        "./artifacts", description="Where runs are published: a local folder or s3://bucket/prefix."
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000 for MinIO.")
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias="AWS_ACCESS_KEY_ID", description="S3 access key."
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias="AWS_SECRET_ACCESS_KEY", description="S3 secret key."
    )
    aws_region: str = Field("us-east-1", validation_alias="AWS_DEFAULT_REGION", description="S3 region name.")
    hf_token: SecretStr | None = Field(
        None, validation_alias="HF_TOKEN", description="Hugging Face hub token for gated models."
    )
    wandb_api_key: SecretStr | None = Field(
        None, validation_alias="WANDB_API_KEY", description="W&B key; without it runs log offline."
    )
    wandb_project: str = Field("dialsum", validation_alias="WANDB_PROJECT", description="W&B project name.")
    wandb_mode: str | None = Field(
        None,
        validation_alias="WANDB_MODE",
        description="online, offline or disabled; default: online with a key, else offline.",
    )
    stop_grace_seconds: float = Field(
        100, gt=0, description="After SIGTERM: time to finish the step and publish a checkpoint before a hard exit."
    )
    keep_freed_host_memory: bool = Field(
        True,
        description="CPU runs on glibc: keep freed memory for the next step instead of mapping it anew "
        "(faster; resident memory stays near its peak).",
    )
    lease_seconds: float = Field(
        60,
        gt=0,
        description="How long a run's lease (one writer per run and model) lasts without renewal; the "
        "holder renews it every quarter of that, and a lease left by a killed process expires after it.",
    )
    split_seed: int = Field(
        0,
        description="Seed of the dev split by fname into a selection part (every choice) and a held-out part "
        "(every held-out figure); recorded with each figure.",
    )
    held_out_fraction: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="Share of dev rows held out from every choice (the rest choose best steps, "
        "strategies, sweep trials and decoding).",
    )
    choice_audit_file: Path | None = Field(
        None,
        description="Tests: append each dev row read by a choice (JSON lines) to this file.",
    )
    prefect_api_url: str | None = Field(
        None, validation_alias="PREFECT_API_URL", description="Prefect API; unset runs flows embedded."
    )
    git_commit: str | None = Field(
        None, description="Commit recorded in manifests where `git` is unavailable (images bake it in)."
    )

    @field_validator("config_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value):
        """An empty DIALSUM_CONFIG_DIR (docker compose passes an `.env` entry left empty) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    def hub_token(self) -> str | None:
        """The plain hub token for from_pretrained calls (None when unset)."""
        return self.hf_token.get_secret_value() if self.hf_token else None

    @staticmethod
    def env_secret(name: str) -> SecretStr | None:
        """A secret from the environment variable a profile names (an API key), or None when unset or blank."""
        value = os.environ.get(name, "").strip()
        return SecretStr(value) if value else None

    def check_folders_writable(self) -> None:
        """`check_folders` without creating anything: for checks that must leave nothing behind when they fail."""
        check_writable(self.output_dir, "output")
        check_writable(self.cache_dir, "cache")

    def check_folders(self) -> None:
        """Create the output and cache folders if needed; a `FolderError` when this user cannot write them."""
        writable_dir(self.output_dir, "output")
        writable_dir(self.cache_dir, "cache")

    def resolved_wandb_mode(self) -> str:
        if self.wandb_mode:
            return self.wandb_mode
        return "online" if self.wandb_api_key else "offline"


def check_writable(path: Path, what: str) -> Path:
    """Check, creating nothing, that this process could create or write the folder `path`: the nearest existing
    folder on its way must be writable (and every existing part a folder). A `FolderError` naming it if not."""
    existing = Path(path).absolute()
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise FolderError(f"cannot write to the {what} folder {path}: {existing} is a file, not a folder")
    if _read_only(existing):
        raise FolderError(f"cannot write to the {what} folder {path}: {existing} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        uid, gid = os.getuid(), os.getgid()
        raise FolderError(
            f"cannot write to the {what} folder {path} (permission denied at {existing}): it must be writable by uid "
            f"{uid} (gid {gid}); for a bind mount, give that uid the host folder, "
            f"e.g. `chown -R {uid}:{gid} <host folder>`"
        )
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def writable_dir(path: Path, what: str) -> Path:
    """Create `path` and check that this process can write in it; else one error naming it and the uid needed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        uid, gid = os.getuid(), os.getgid()
        raise FolderError(
            f"cannot write to the {what} folder {path} ({exc.strerror or exc}): it must be writable by uid {uid} "
            f"(gid {gid}); for a bind mount, give that uid the host folder, e.g. `chown -R {uid}:{gid} <host folder>`"
        ) from None
    return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
