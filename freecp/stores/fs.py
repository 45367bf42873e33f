"""One filesystem layer for every store: a local directory or an ``s3://`` bucket.

Both the description cache and the embedding store go through ``StoreRoot`` so that reading,
writing and listing behave the same everywhere. S3 credentials and endpoint come from the
standard AWS environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``); they are never written to a store or a log.

Atomicity: a local write goes to a hidden temporary name in the same directory and is renamed
into place; an S3 PUT is atomic per object, so readers see either nothing or the whole file.
Temporary names are short and fixed-length (``.tmp-<12 hex>``), never the final name plus a
prefix, so any name the filesystem accepts as final can also be written.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from freecp.files import TEMP_PREFIX, temp_name

log = logging.getLogger("freecp.stores")


class StoreError(RuntimeError):
    """A store that cannot be reached or read; the message says which and why."""


class StoreUnusableError(StoreError):
    """The store cannot be used at all (no such bucket or root, credentials refused, unreachable,
    not writable, an unsupported URL), as opposed to what it holds not serving a request."""


@dataclass(frozen=True)
class StoreRoot:
    """A filesystem and a base path inside it; every store path is relative to the base."""

    fs: pafs.FileSystem
    base: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        for part in parts:
            if part.startswith("/") or ".." in part.split("/"):
                raise StoreError(f"refusing store path {part!r}: it would leave the store root")
        return posixpath.join(self.base, *parts)

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a whole file atomically (see module docstring)."""
        target = self.path(relative)
        parent = posixpath.dirname(target)
        self.fs.create_dir(parent, recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(target) as out:
                out.write(data)
            return
        temp = posixpath.join(parent, temp_name())
        with self.fs.open_output_stream(temp) as out:
            out.write(data)
        self.fs.move(temp, target)

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.File

    def list_files(self, relative: str = "", suffix: str = "") -> list[str]:
        """Finished files below ``relative`` (temporary files of running writers are skipped),
        as paths relative to the root, sorted."""
        selector = pafs.FileSelector(self.path(relative) if relative else self.base,
                                     recursive=True, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.File or name.startswith(TEMP_PREFIX) or not name.endswith(suffix):
                continue
            found.append(posixpath.relpath(info.path, self.base))
        return sorted(found)

    def delete(self, relative: str) -> None:
        self.fs.delete_file(self.path(relative))

    def check_writable(self) -> None:
        """Write and remove a small probe file, so a store that refuses writes (credentials,
        permissions, a full disk) fails before any heavy work, with ``StoreUnusableError``."""
        probe = temp_name()
        try:
            self.write_bytes(probe, b"freecp write check")
            self.delete(probe)
        except OSError as err:
            raise StoreUnusableError(f"cannot write to {self.url}: {first_line(err)}") from None


QUARANTINE_DIR = "quarantine"  # `freecp store check --quarantine` moves unreadable files here
_reported: set[str] = set()


def skip_unreadable(location: str, reason: BaseException) -> None:
    """Log (once per process) that an unreadable store file is left out, and what to do about it."""
    if location not in _reported:
        _reported.add(location)
        log.warning("skipping unreadable store file %s (%s); `freecp store check --quarantine` moves it aside",
                    location, first_line(reason))


def open_root(url: str | Path, *, create: bool = True) -> StoreRoot:
    """Open a store root from a local path or an ``s3://bucket/prefix`` URL.

    The bucket must exist and answer these credentials; a local root is made when ``create``,
    else (for readers such as ``store ls`` and ``store check``) a root that does not exist is
    refused rather than reported empty."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreUnusableError(f"{text!r}: an s3 URL needs a bucket, as in s3://bucket/prefix")
        fs = pafs.S3FileSystem(
            endpoint_override=os.environ.get("AWS_ENDPOINT_URL") or None,
            region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            allow_delayed_open=True,  # small files go up as one PUT, not a multipart upload
        )
        base = posixpath.join(parsed.netloc, parsed.path.strip("/")).rstrip("/")
        try:
            bucket = fs.get_file_info(parsed.netloc)
            missing = not create and base != parsed.netloc and fs.get_file_info(base).type == pafs.FileType.NotFound
        except OSError as err:
            raise StoreUnusableError(f"cannot use {text}: {first_line(err)}") from None
        if bucket.type == pafs.FileType.NotFound:
            raise StoreUnusableError(f"{text}: the bucket {parsed.netloc!r} does not exist")
        if missing:
            raise StoreUnusableError(f"{text}: no store there (nothing under that prefix)")
        return StoreRoot(fs=fs, base=base, url=text)
    if parsed.scheme not in ("", "file"):
        raise StoreUnusableError(f"{text!r}: unsupported store URL; use a local path or s3://bucket/prefix")
    local = Path(parsed.path if parsed.scheme == "file" else text).expanduser().resolve()
    if not create and not local.is_dir():
        raise StoreUnusableError(f"{text}: no store there (the folder does not exist)")
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreUnusableError(f"cannot make the store folder {local}: {first_line(err)}") from None
    return StoreRoot(fs=pafs.LocalFileSystem(), base=local.as_posix(), url=str(local))


def first_line(err: BaseException) -> str:
    """An error's first line (pyarrow's S3 errors run to several), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
