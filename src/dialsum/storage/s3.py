"""A storage root in an S3 bucket (AWS or S3-compatible such as MinIO): the only module that talks to boto3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dialsum.errors import StorageError
from dialsum.settings import Settings
from dialsum.storage.base import PART_SIZE, FileDigest, Storage

_PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict")
_TRANSFER = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4)
_S3_CONFIG = Config(
    s3={"addressing_style": "path"},
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
)


class S3Storage(Storage):
    """An S3 bucket and prefix (AWS or S3-compatible such as MinIO), accessed through boto3.

    Uploads carry a CRC32 checksum per request, which the server checks on receipt, and the file's
    sha256 as `x-amz-meta-sha256`. Afterwards head_object must report the size, sha256 and (when the
    server reports checksums) CRC32 read in the same pass that produced the manifest's sha256.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"invalid S3 URL {url!r}: expected s3://bucket/prefix")
        self._bucket = parsed.netloc
        self._prefix = parsed.path.strip("/")
        key_id, secret = settings.aws_access_key_id, settings.aws_secret_access_key
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.aws_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=_S3_CONFIG,
        )

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def location(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._key(key)}"

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn boto3/botocore failures into `StorageError` naming the object."""
        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise StorageError(f"cannot {action} {self.location(key)}: {exc}") from exc

    def upload(self, key: str, path: Path, digest: FileDigest) -> None:
        extra = {"Metadata": {"sha256": digest.sha256}, "ChecksumAlgorithm": "CRC32"}
        with self._errors("upload", key):
            self._client.upload_file(str(path), self._bucket, self._key(key), ExtraArgs=extra, Config=_TRANSFER)
            head = self._client.head_object(Bucket=self._bucket, Key=self._key(key), ChecksumMode="ENABLED")
        stored = head.get("ChecksumCRC32")
        if (
            head["ContentLength"] != digest.size
            or head.get("Metadata", {}).get("sha256") != digest.sha256
            or (stored is not None and stored.split("-")[0] != digest.s3_crc32)
        ):
            raise StorageError(
                f"upload of {self.location(key)} failed verification: stored size, sha256 or CRC32 differ"
            )

    def download(self, key: str, path: Path) -> None:
        with self._errors("download", key):
            self._client.download_file(self._bucket, self._key(key), str(path), Config=_TRANSFER)

    def read_bytes(self, key: str) -> bytes | None:
        with self._errors("read", key):
            try:
                return self._client.get_object(Bucket=self._bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    return None
                raise

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self._client.put_object(Bucket=self._bucket, Key=self._key(key), Body=data, ChecksumAlgorithm="SHA256")

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self._bucket, Key=self._key(key))

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """put_object with If-Match / If-None-Match; False when the server refuses the precondition."""
        with self._errors("write", key):
            try:
                self._client.put_object(
                    Bucket=self._bucket, Key=self._key(key), Body=data, ChecksumAlgorithm="SHA256", **condition
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in _PRECONDITION_CODES or status in (409, 412):
                    return False
                raise
        return True

    def create_bytes(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        with self._errors("read", key):
            try:
                response = self._client.get_object(Bucket=self._bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    return None
                raise
            return response["Body"].read(), response["ETag"]

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        return self._conditional_put(key, data, IfMatch=tag)

    def share_url(self, key: str, expires: int = 7 * 24 * 3600) -> str:
        with self._errors("presign", key):
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": self._key(key)}, ExpiresIn=expires
            )

    def list_keys(self, prefix: str) -> Iterator[str]:
        start = len(self._key(""))
        with self._errors("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][start:]
