"""The vocabulary manifest: per class of a vocabulary, the keys of the vectors it reads.

One small Parquet file per (model, vocabulary), ``<model folder>/vocabularies/<vocab hash>.parquet``,
with the columns ``names, query_hashes, description_hashes, description_mean`` and the vocabulary,
model key, dimension, template set hash, freecp version and write time in its schema metadata.
It is written last, once every row it names is stored, so a reader that finds it finds them all.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

import freecp
from freecp.stores.embedding_errors import EmbeddingStoreError, check_model
from freecp.stores.fs import StoreRoot, skip_unreadable
from freecp.stores.summaries import VocabularySummary
from freecp.stores.vector_keys import MANIFESTS_DIR
from freecp.templates import TEMPLATE_SET_HASH
from freecp.vocab import Vocabulary

MANIFEST_META_KEY = b"freecp.vocabulary"


@dataclass(frozen=True)
class ClassPlan:
    """What one class of a vocabulary needs from the store."""

    names: tuple[str, ...]
    query_hashes: tuple[str, ...]
    description_hashes: tuple[str, ...] = ()
    description_mean: str | None = None


@dataclass(frozen=True)
class Manifest:
    """One vocabulary's manifest for one model, as stored."""

    vocabulary: str
    content_hash: str
    has_background: bool
    model_key: str
    dim: int
    classes: tuple[ClassPlan, ...]
    written_at: str = ""

    def same_content(self, other: Manifest | None) -> bool:
        return other is not None and (self.classes, self.has_background, self.dim) == (
            other.classes, other.has_background, other.dim)

    def to_parquet(self) -> bytes:
        table = pa.table({
            "names": pa.array([list(c.names) for c in self.classes], pa.list_(pa.string())),
            "query_hashes": pa.array([list(c.query_hashes) for c in self.classes], pa.list_(pa.string())),
            "description_hashes": pa.array([list(c.description_hashes) for c in self.classes],
                                           pa.list_(pa.string())),
            "description_mean": pa.array([c.description_mean for c in self.classes], pa.string()),
        })
        meta = {"vocabulary": self.vocabulary, "content_hash": self.content_hash,
                "has_background": self.has_background, "model_key": self.model_key, "dim": self.dim,
                "template_set_hash": TEMPLATE_SET_HASH, "freecp_version": freecp.__version__,
                "written_at": self.written_at}
        table = table.replace_schema_metadata({MANIFEST_META_KEY: json.dumps(meta)})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_table(cls, table: pa.Table, origin: str) -> Manifest:
        raw = (table.schema.metadata or {}).get(MANIFEST_META_KEY)
        if raw is None:
            raise EmbeddingStoreError(f"{origin} is not a freecp vocabulary manifest")
        meta = json.loads(raw)
        columns = table.to_pydict()
        descriptions = columns.get("description_hashes", [[] for _ in columns["names"]])
        classes = tuple(
            ClassPlan(tuple(n), tuple(q), tuple(d or ()), m)
            for n, q, d, m in zip(columns["names"], columns["query_hashes"], descriptions,
                                  columns["description_mean"])
        )
        return cls(meta["vocabulary"], meta["content_hash"], bool(meta["has_background"]),
                   meta["model_key"], int(meta["dim"]), classes, meta.get("written_at", ""))


def manifest_path(folder: str, content_hash: str) -> str:
    """The manifest of the vocabulary with ``content_hash`` in a model folder."""
    if not re.fullmatch(r"[0-9a-f]+", content_hash):
        raise EmbeddingStoreError(f"invalid vocabulary hash {content_hash!r}")
    return posixpath.join(folder, MANIFESTS_DIR, f"{content_hash}.parquet")


def manifest_files(root: StoreRoot, folder: str) -> list[str]:
    """Every manifest in a model folder."""
    return root.list_files(posixpath.join(folder, MANIFESTS_DIR), ".parquet")


def read_manifest(root: StoreRoot, folder: str, vocab: Vocabulary, key: str, dim: int | None,
                  with_descriptions: bool = True) -> Manifest | None:
    """The vocabulary's manifest, or None. Loading skips the description hashes (the bulk)."""
    path = manifest_path(folder, vocab.content_hash)
    columns = None if with_descriptions else ["names", "query_hashes", "description_mean"]
    try:
        table = pq.read_table(root.path(path), filesystem=root.fs, columns=columns)
    except FileNotFoundError:
        return None
    except pa.ArrowInvalid as err:  # junk: as if absent, so `freecp encode` writes it anew
        skip_unreadable(f"{root.url}/{path}", err)
        return None
    except OSError as err:
        if not root.exists(path):
            return None
        raise EmbeddingStoreError(f"{root.url}: cannot read {path}: {err}") from None
    manifest = Manifest.from_table(table, f"{root.url}/{path}")
    check_model(f"{root.url}/{path}", manifest.model_key, manifest.dim, key, dim)
    if [c.names for c in manifest.classes] != [c.names for c in vocab.classes]:
        raise EmbeddingStoreError(f"{root.url}/{path} does not describe vocabulary {vocab.name!r} "
                                  f"(its classes differ); delete it and run `freecp encode` again")
    return manifest


def read_summary(root: StoreRoot, key: str, path: str) -> VocabularySummary | None:
    """The manifest at ``path`` as a summary, read without its hashes; None when it is not one."""
    try:
        table = pq.read_table(root.path(path), filesystem=root.fs, columns=["names", "description_mean"])
    except pa.ArrowInvalid as err:
        skip_unreadable(f"{root.url}/{path}", err)
        return None
    meta = json.loads((table.schema.metadata or {}).get(MANIFEST_META_KEY, b"{}"))
    if not meta:
        return None
    names = table.column("names").to_pylist()
    return VocabularySummary(
        key, meta["vocabulary"], meta["content_hash"], len(names), sum(map(len, names)),
        table.num_rows - table.column("description_mean").null_count, meta.get("written_at", ""))
