"""Checking a shared store file by file: which files cannot be read, and moving them aside.

Readers already skip an unreadable shard with a warning (one bad file must not stop everyone);
this is the maintenance side, behind ``freecp store check``. Every ``.parquet`` file of the
embedding store (``models/``) or the description cache (``descriptions/shards``) is read whole
and checked for freecp's metadata, and every weights-request record (``requests/*.json``, which
lets an up-to-date ``freecp encode`` answer without building the model) must parse and sit under
its request's name; with ``quarantine`` each bad one is moved to
``quarantine/<its path>`` in the same store, where no reader looks and a person can inspect it.
Readable vectors from a text tower nobody recorded (stored before float orders were,
``freecp.text_keys``) are not bad, but no run reads them: the report names their model keys.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from freecp.stores.descriptions import SCHEMA, SHARD_DIR
from freecp.stores.embeddings import EmbeddingStore
from freecp.stores.manifest import MANIFEST_META_KEY
from freecp.stores.shards import META_KEY
from freecp.stores.fs import QUARANTINE_DIR, StoreRoot, first_line, open_root
from freecp.stores.requests import REQUESTS_DIR, decode_request, request_path
from freecp.stores.vector_keys import MODELS_DIR


@dataclass(frozen=True)
class BadFile:
    """One file a reader would skip, and why."""

    path: str
    reason: str
    quarantined_to: str = ""


@dataclass
class CheckReport:
    url: str
    checked: int
    bad: list[BadFile]
    unrecorded: list[str] = field(default_factory=list)  # model keys whose text path nobody recorded


def check_store(url: str, quarantine: bool = False) -> CheckReport:
    """Read every embedding-store, description-cache and request file under ``url``; list (and
    move aside) the bad ones."""
    root = open_root(url, create=False)
    files = (root.list_files(MODELS_DIR, ".parquet") + root.list_files(SHARD_DIR, ".parquet")
             + root.list_files(REQUESTS_DIR, ".json"))
    bad = []
    for path in files:
        reason = _problem(root, path)
        if reason is None:
            continue
        target = ""
        if quarantine:
            target = f"{QUARANTINE_DIR}/{path}"
            root.fs.create_dir(root.path(target.rsplit("/", 1)[0]), recursive=True)
            root.fs.move(root.path(path), root.path(target))
        bad.append(BadFile(path, reason, target))
    return CheckReport(root.url, len(files), bad, EmbeddingStore(url).unrecorded_keys())


def _problem(root: StoreRoot, path: str) -> str | None:
    """Why ``path`` cannot serve as a store file, or None when it can."""
    if path.startswith(REQUESTS_DIR + "/"):
        return _request_problem(root, path)
    try:
        table = pq.read_table(io.BytesIO(root.read_bytes(path)))
    except FileNotFoundError:
        return None  # removed meanwhile (compaction): nothing to check
    except (pa.ArrowException, OSError) as err:
        return f"not a readable Parquet file: {first_line(err)}"
    if path.startswith(MODELS_DIR + "/"):
        if not any(key in (table.schema.metadata or {}) for key in (META_KEY, MANIFEST_META_KEY)):
            return "a Parquet file without freecp's embedding metadata"
    else:
        missing = [name for name in SCHEMA.names if name not in table.column_names]
        if missing:
            return f"a Parquet file without the description-cache columns {', '.join(missing)}"
    return None


def _request_problem(root: StoreRoot, path: str) -> str | None:
    """A request record that does not parse is skipped by readers (the model is built instead);
    one filed under another request's name is never found."""
    try:
        request, _ = decode_request(root.read_bytes(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"not a weights-request record: {first_line(err)}"
    if request_path(request) != path:
        return f"a weights-request record filed under the wrong name (it belongs at {request_path(request)})"
    return None
