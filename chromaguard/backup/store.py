"""Where a backup repository's objects live: a local folder, S3 (or any S3-compatible store), GCS, Azure.

Why obstore: one well-kept client for all four, credentials taken the standard way (the
``AWS_*``/``GOOGLE_*``/``AZURE_*`` variables, ``AWS_ENDPOINT_URL`` for MinIO, R2 or Ceph), and
conditional writes, which the repository lock needs. Every failure leaves here as a
``StoreError`` with one line naming the object, the store and what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore import exceptions as obe

from ..config.parsing import without_credentials
from ..errors import ChromaguardError
from .location import check_url

# A store that stops answering fails a backup in about a minute, not after obstore's three.
_RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=60),
          "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=5)}}
_TIMEOUTS = {"connect_timeout": "10s", "timeout": "300s"}
_COALESCE = 64 << 10  # bytes between two ranges of one object below which one request fetches both


def _failure(exc: BaseException) -> bool:
    """A store failure to report as one: any error, and a panic in obstore's Rust code (pyo3's
    PanicException is a BaseException; one came from a range past an object's end). Never an
    interrupt or an exit."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


class StoreError(ChromaguardError):
    """An object store refused or failed; the message says which and how to fix it."""

    exit_code = 1


class MissingObject(StoreError):
    """The object asked for is not there."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # the store's clock: the same for every client of it


class Store:
    """Objects by key under the repository's URL; keys use ``/`` whatever the store."""

    def __init__(self, url: str, *, create: bool = False) -> None:
        self.url = url
        self._store = _open(url, create)

    def put(self, key: str, data: bytes, *, new: bool = False) -> bool:
        """Write ``data`` at ``key`` whole (never half); with ``new``, False if ``key`` exists already."""
        try:
            # One request per object: a multipart upload cut short would stay behind, unlisted but billed.
            obstore.put(self._store, key, data, mode="create" if new else "overwrite", use_multipart=False)
        except obe.AlreadyExistsError:
            if new:
                return False
            raise
        except BaseException as exc:  # noqa: BLE001 - every store failure is reported the same way
            if not _failure(exc):
                raise
            raise self._error("write", key, exc) from None
        return True

    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except BaseException as exc:  # noqa: BLE001
            if not _failure(exc):
                raise
            raise self._error("read", key, exc) from None

    def get_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Parts of one object, each ``(start, end)``: what a restore or a delta needs of a pack.
        Parts less than 64 KiB apart come in one request. (obstore's default, 1 MiB, fetched 3.5
        times the chunks a restore needed of packs they are spread over; 64 KiB 2.2 times, in 4.6
        times the requests: on a cloud store the bytes cost more.)"""
        try:
            found = obstore.get_ranges(self._store, key, starts=[start for start, _ in ranges],
                                       ends=[end for _, end in ranges], coalesce=_COALESCE)
        except BaseException as exc:  # noqa: BLE001
            if not _failure(exc):
                raise
            raise self._error("read", key, exc) from None
        return [bytes(part) for part in found]

    def size(self, key: str) -> int | None:
        """The object's size, None when it is not there."""
        try:
            return int(obstore.head(self._store, key)["size"])
        except FileNotFoundError:
            return None
        except BaseException as exc:  # noqa: BLE001
            if not _failure(exc):
                raise
            error = self._error("look up", key, exc)
            if isinstance(error, MissingObject):
                return None
            raise error from None

    def list(self, prefix: str) -> list[ObjectInfo]:
        try:
            found = obstore.list(self._store, prefix.rstrip("/") + "/").collect()
        except FileNotFoundError:
            return []
        except BaseException as exc:  # noqa: BLE001
            if not _failure(exc):
                raise
            raise self._error("list", prefix, exc) from None
        return [ObjectInfo(str(meta["path"]), int(meta["size"]), meta["last_modified"].timestamp()) for meta in found]

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except FileNotFoundError:
            return
        except BaseException as exc:  # noqa: BLE001
            if not _failure(exc):
                raise
            error = self._error("delete", key, exc)
            if not isinstance(error, MissingObject):
                raise error from None

    def _error(self, doing: str, key: str, exc: BaseException) -> StoreError:
        return store_error(self.url, doing, key, exc)


def store_error(url: str, doing: str, key: str, exc: BaseException) -> StoreError:
    """One line for a store's failure, with what to do about it."""
    text = str(exc)
    where = f"{url} ({key})" if key else url
    if "NoSuchBucket" in text or "ContainerNotFound" in text or "bucket does not exist" in text.lower():
        return StoreError(f"{url}: the bucket does not exist; create it, or fix the bucket name in the URL")
    if isinstance(exc, (obe.UnauthenticatedError,)) or "InvalidAccessKeyId" in text or \
            "SignatureDoesNotMatch" in text or "ExpiredToken" in text:
        return StoreError(f"{where}: the store refused the credentials ({_reason(text)}); check AWS_ACCESS_KEY_ID/"
                          "AWS_SECRET_ACCESS_KEY (or the GOOGLE_/AZURE_ ones) or the profile")
    if isinstance(exc, obe.PermissionDeniedError) or "AccessDenied" in text or " 403 " in text:
        return StoreError(f"{where}: access denied when trying to {doing} ({_reason(text)}); the credentials "
                          "need read, write, list and delete on this bucket and prefix")
    if isinstance(exc, (FileNotFoundError, obe.NotFoundError)):
        return MissingObject(f"{where}: not found")
    if isinstance(exc, OSError) and not isinstance(exc, obe.BaseError):
        return StoreError(f"{where}: could not {doing}: {exc.strerror or exc}")
    return StoreError(f"{where}: could not {doing}: {_reason(text)}; is the store reachable (endpoint, network)?")


def _reason(text: str) -> str:
    """What the store said, short: its status and error code, else the first line of the error."""
    code = re.search(r"<Code>([^<]+)</Code>", text)
    status = re.search(r"status code: (\d{3})", text)
    if code or status:
        return " ".join(part for part in (f"HTTP {status.group(1)}" if status else "", code.group(1) if code else "")
                        if part)
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return re.sub(r"\s*<\?xml.*$", "", line)[:200]


def _open(url: str, create: bool) -> Any:
    try:
        parts = check_url(url)
    except ValueError as exc:
        raise StoreError(f"{without_credentials(url)}: {exc}") from None
    if parts is None:
        path = Path(urlsplit(url).path if url.lower().startswith("file:") else url).expanduser()
        if path.exists() and not path.is_dir():
            raise StoreError(f"{url}: not a folder; give a folder for the backup repository")
        if not path.exists() and not create:
            raise StoreError(f"{url}: no backup repository there (the folder does not exist)")
        try:
            return obstore.store.LocalStore(path.resolve(), mkdir=True)
        except BaseException as exc:  # noqa: BLE001
            if not _failure(exc):
                raise
            raise store_error(url, "open", "", exc) from None
    scheme = parts.scheme.lower()
    options: dict[str, Any] = {"timeout": _TIMEOUTS["timeout"], "connect_timeout": _TIMEOUTS["connect_timeout"]}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") \
        or os.environ.get("AWS_ENDPOINT") or ""
    if scheme != "s3" or endpoint.startswith("http://"):
        options["allow_http"] = endpoint.startswith("http://")
    config: dict[str, Any] = {}
    if scheme == "s3":
        if endpoint:
            config["endpoint"] = endpoint
        style = os.environ.get("CHROMAGUARD_S3_ADDRESSING", "").lower()
        if style in ("path", "virtual"):
            config["virtual_hosted_style_request"] = style == "virtual"
        elif endpoint:  # MinIO, Ceph and most S3-compatible servers want the bucket in the path
            config["virtual_hosted_style_request"] = False
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            config["region"] = region
    try:
        opened: Any = obstore.store.from_url  # its overloads are per scheme; this one call serves three
        return opened(url, config=config or None, client_options=options, retry_config=_RETRY)
    except BaseException as exc:  # noqa: BLE001
        if not _failure(exc):
            raise
        raise store_error(url, "open", "", exc) from None
