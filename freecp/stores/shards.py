"""The embedding store's shards: immutable Parquet files of vectors, written whole and read as a union.

A shard has the columns ``text_hash, text, kind, vector`` (``fixed_size_list<float32>[dim]``,
L2-normalised); its schema metadata records the model key, dimension, normalisation, template set
hash and freecp version, and a reader refuses a shard whose model key or dimension is not its own.
Writers only ever add a shard under a new unique name; readers take the union of a kind's shards
and keep the first row of each text hash (see ``freecp.stores.embeddings`` for why that is safe).
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import freecp
from freecp.stores.embedding_errors import EmbeddingStoreError, check_model
from freecp.stores.fs import StoreRoot, skip_unreadable
from freecp.stores.manifest import ClassPlan
from freecp.stores.vector_keys import DESCRIPTION_MEAN, KINDS
from freecp.templates import TEMPLATE_SET_HASH

NORMALISATION = "l2"
META_KEY = b"freecp.embeddings"
READ_THREADS = 8
READ_ATTEMPTS = 3


class NotAShardError(EmbeddingStoreError):
    """A readable Parquet file without freecp's shard metadata (someone else's file)."""


def shard_files(root: StoreRoot, folder: str, kind: str) -> list[str]:
    """The shards of one kind in a model folder, as the store lists them now."""
    return root.list_files(posixpath.join(folder, kind), ".parquet")


def _shard_meta(schema: pa.Schema, origin: str) -> dict:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise NotAShardError(f"{origin} is not a freecp embedding shard "
                             f"(no {META_KEY.decode()} metadata)")
    return json.loads(raw)


def write_shard(root: StoreRoot, folder: str, kind: str, key: str, dim: int,
                hashes: list[str], texts: list[str], vectors: np.ndarray) -> None:
    """Write the rows as one new shard of ``kind`` in ``folder``, atomically, under a unique name."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    meta = {"model_key": key, "dim": dim, "normalisation": NORMALISATION,
            "template_set_hash": TEMPLATE_SET_HASH, "freecp_version": freecp.__version__}
    table = pa.table({
        "text_hash": pa.array(hashes, pa.string()),
        "text": pa.array(texts, pa.string()),
        "kind": pa.array([kind] * len(hashes), pa.string()).dictionary_encode(),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
    }).replace_schema_metadata({META_KEY: json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression={"text_hash": "zstd", "text": "zstd", "kind": "zstd",
                                             "vector": "none"})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}-{uuid.uuid4().hex[:12]}.parquet"
    root.write_bytes(posixpath.join(folder, kind, name), sink.getvalue().to_pybytes())


def read_rows(root: StoreRoot, folder: str, kind: str, key: str, dim: int | None,
              columns: list[str] | None = None, wanted: set[str] | None = None) -> pa.Table:
    """The union of a kind's shards, filtered to ``wanted`` hashes, duplicates dropped.

    A shard can vanish between listing and reading (``compact`` removed it after merging
    its rows into a new shard), so the read starts over from a fresh listing when that happens.
    """
    if wanted is not None and not wanted:
        return _empty_table(dim or 0)
    columns = columns or ["text_hash", "text", "vector"]
    value_set = pa.array(sorted(wanted), pa.string()) if wanted else None

    def read(path: str) -> pa.Table | None:
        # Reading whole columns and filtering after is faster than a dataset filter here.
        try:
            table = pq.read_table(root.path(path), filesystem=root.fs, columns=columns)
            meta = _shard_meta(table.schema, f"{root.url}/{path}")
        except (pa.ArrowInvalid, NotAShardError) as err:
            skip_unreadable(f"{root.url}/{path}", err)
            return None
        check_model(f"{root.url}/{path}", meta["model_key"], int(meta["dim"]), key, dim)
        if value_set is not None:
            table = table.filter(pc.is_in(table.column("text_hash"), value_set=value_set))
        return table.replace_schema_metadata(None)

    for attempt in range(READ_ATTEMPTS):
        paths = shard_files(root, folder, kind)
        try:
            with ThreadPoolExecutor(min(READ_THREADS, max(1, len(paths)))) as pool:
                tables = [t for t in pool.map(read, paths) if t is not None]
            break
        except OSError as err:
            if attempt == READ_ATTEMPTS - 1 or all(root.exists(p) for p in paths):
                raise EmbeddingStoreError(f"{root.url}: cannot read the embedding store: {err}") from None
    if not tables:
        return _empty_table(dim or 0).select(columns)
    return _dedupe(pa.concat_tables(tables, promote_options="default"))


def stored_hashes(root: StoreRoot, folder: str, kind: str, key: str, dim: int | None) -> set[str]:
    """Every text hash of ``kind`` the store holds for the model."""
    return set(read_rows(root, folder, kind, key, dim, columns=["text_hash"]).column("text_hash").to_pylist())


def _empty_table(dim: int) -> pa.Table:
    return pa.table({"text_hash": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                     "vector": pa.array([], pa.list_(pa.float32(), max(dim, 1)))})


def _dedupe(table: pa.Table) -> pa.Table:
    """Keep the first row of every text hash (duplicates come from concurrent writers)."""
    first: dict[str, int] = {}
    for row, value in enumerate(table.column("text_hash").to_pylist()):
        first.setdefault(value, row)
    return table if len(first) == table.num_rows else table.take(sorted(first.values()))


def indexed(table: pa.Table, dim: int) -> tuple[dict[str, int], np.ndarray]:
    """The vectors as one [n, dim] matrix and each text hash's row in it."""
    if table.num_rows == 0:
        return {}, np.zeros((0, dim), np.float32)
    matrix = table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return {h: row for row, h in enumerate(table.column("text_hash").to_pylist())}, matrix


@dataclass
class _Pending:
    """Rows of one kind encoded but not yet written."""

    hashes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, hashes: list[str], texts: list[str], vectors: np.ndarray) -> None:
        self.hashes += hashes
        self.texts += texts
        self.vectors.append(vectors)

    def take(self) -> tuple[list[str], list[str], np.ndarray]:
        out = (self.hashes, self.texts, np.concatenate(self.vectors))
        self.hashes, self.texts, self.vectors = [], [], []
        return out


class ShardWriter:
    """Collects encoded rows of one model and writes them as shards in ``folder`` of ``root``, at
    least every ``flush_seconds`` (a killed run loses at most that much work)."""

    def __init__(self, root: StoreRoot, folder: str, key: str, dim: int, *, flush_seconds: float) -> None:
        self.root, self.folder, self.key, self.dim = root, folder, key, dim
        self.flush_seconds = flush_seconds
        self.pending = {kind: _Pending() for kind in KINDS}
        self.last_flush = time.monotonic()

    def add(self, kind: str, hashes: list[str], texts: list[str], vectors: np.ndarray) -> None:
        self.pending[kind].add(hashes, texts, vectors)
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def add_means(self, plans: list[ClassPlan], means: list[np.ndarray]) -> None:
        """One averaged row per distinct description list (``unique_means``; its text is the first
        class's name)."""
        self.add(DESCRIPTION_MEAN, [p.description_mean for p in plans], [p.names[0] for p in plans],
                 np.stack(means))

    def flush(self) -> None:
        for kind, pending in self.pending.items():
            if pending.hashes:
                write_shard(self.root, self.folder, kind, self.key, self.dim, *pending.take())
        self.last_flush = time.monotonic()
