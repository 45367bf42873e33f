"""The description cache: every LLM answer ever received, content-addressed, in Parquet shards.

Layout under the store root (a local directory or ``s3://bucket/prefix``)::

    descriptions/shards/<utc time>-<random>.parquet

Each shard holds whole entries (one per request key: class names, rendered prompt and its hash,
LLM model id, sampling settings) with the raw answer, the cleaned descriptions, when and by which
server it was written. Writers only ever add new shards, each written atomically, so readers never
see half a file and two processes writing at once lose nothing; a repeated key keeps its newest
entry. ``compact`` merges all shards into one and removes the merged ones.

Descriptions imported from a hand-edited JSON file are entries too (``source == "import"``); the
newest import for a class name replaces that class's generated descriptions, which is how a
reviewed list takes effect.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from freecp.dedup import merge_descriptions
from freecp.files import atomic_write
from freecp.stores.fs import StoreError, StoreRoot, open_root, skip_unreadable
from freecp.vocab import Vocabulary

SHARD_DIR = "descriptions/shards"
SOURCE_SERVER = "server"
SOURCE_BATCH = "batch"
SOURCE_IMPORT = "import"

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("class_name", pa.string()),
    ("class_names", pa.list_(pa.string())),
    ("prompt_set", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt_hash", pa.string()),
    ("prompt", pa.string()),
    ("llm_model", pa.string()),
    ("sampling", pa.string()),
    ("raw_answer", pa.string()),
    ("finish_reason", pa.string()),
    ("descriptions", pa.list_(pa.string())),
    ("cleaning_version", pa.string()),
    ("source", pa.string()),
    ("server", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


class DescriptionCacheError(StoreError):
    """A cache file or an import file that cannot be used; nothing was written."""


@dataclass(frozen=True)
class CacheEntry:
    """One answer: what was asked (identified by ``key``) and what came back."""

    key: str
    class_name: str
    class_names: tuple[str, ...]
    prompt_set: str
    prompt_id: str
    prompt_hash: str
    prompt: str
    llm_model: str
    sampling: str
    raw_answer: str
    finish_reason: str
    descriptions: tuple[str, ...]
    cleaning_version: str
    source: str
    server: str
    created_at: datetime

    def _order(self) -> tuple[datetime, str]:
        return (self.created_at, self.key)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class DescriptionCache:
    """Read and append cache entries below a store root.

    Shards are immutable, so each is read once per instance; ``refresh`` picks up shards other
    processes wrote since.
    """

    def __init__(self, url: str | Path):
        self.root: StoreRoot = open_root(url)
        self._entries: dict[str, CacheEntry] = {}
        self._read_shards: set[str] = set()
        self._loaded = False

    @property
    def url(self) -> str:
        return self.root.url

    # reading

    def refresh(self) -> None:
        """Read shards that appeared since the last read (a shard removed by ``compact`` meanwhile
        is skipped: its entries are in the merged shard, which the listing also returns)."""
        for _ in range(3):
            pending = [s for s in self.root.list_files(SHARD_DIR, ".parquet") if s not in self._read_shards]
            missing = False
            for shard in pending:
                try:
                    self._merge(_read_shard(self.root, shard))
                except FileNotFoundError:
                    missing = True
                    continue
                except DescriptionCacheError as err:  # junk in a shared cache: skip it, say which
                    skip_unreadable(f"{self.root.url}/{shard}", err)
                self._read_shards.add(shard)
            if not missing:
                break
        self._loaded = True

    def entries(self) -> list[CacheEntry]:
        """All entries, oldest first."""
        self._ensure_loaded()
        return sorted(self._entries.values(), key=CacheEntry._order)

    def get(self, key: str) -> CacheEntry | None:
        self._ensure_loaded()
        return self._entries.get(key)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def reviewed_classes(self) -> set[str]:
        """Class display names with imported (reviewed, ``--import-json``) descriptions: those
        replace generated ones, so nothing is asked of an LLM for them."""
        return {entry.class_name for entry in self.entries() if entry.source == SOURCE_IMPORT and entry.descriptions}

    def descriptions_by_class(self, llm_model: str | None = None) -> dict[str, list[str]]:
        """Class display name -> its descriptions (generated ones merged in order, or the newest
        import); generated entries are limited to ``llm_model`` when given. Empty lists are left out."""
        generated: dict[str, list[list[str]]] = {}
        imported: dict[str, list[str]] = {}
        for entry in self.entries():
            if entry.source == SOURCE_IMPORT:
                imported[entry.class_name] = list(entry.descriptions)
            elif llm_model is None or entry.llm_model == llm_model:
                generated.setdefault(entry.class_name, []).append(list(entry.descriptions))
        result = {name: merge_descriptions(lists) for name, lists in generated.items()}
        result.update(imported)
        return {name: texts for name, texts in sorted(result.items()) if texts}

    def descriptions_for(self, vocab: Vocabulary, llm_model: str | None = None) -> dict[str, list[str]]:
        """Each described foreground class's name -> its descriptions (the background never has any)."""
        known = self.descriptions_by_class(llm_model)
        names = [vocab.classes[i].name for i in vocab.foreground_indices]
        return {name: known[name] for name in names if name in known}

    # writing

    def append(self, entries: Iterable[CacheEntry]) -> str | None:
        """Write entries as one new shard (atomic); return its path, or None if there was nothing."""
        batch = list(entries)
        if not batch:
            return None
        shard = posixpath.join(SHARD_DIR, _shard_name())
        self.root.write_bytes(shard, _to_parquet(batch))
        self._merge(batch)
        self._read_shards.add(shard)
        return shard

    def compact(self) -> tuple[int, int]:
        """Merge every shard into one; return (shards merged, entries kept).

        Only shards that were read are deleted, after the merged shard is in place, so entries a
        concurrent writer adds meanwhile stay in their own shard.
        """
        fresh = DescriptionCache(self.root.url)
        fresh.refresh()
        merged_from = sorted(fresh._read_shards)
        if len(merged_from) <= 1:
            return len(merged_from), len(fresh._entries)
        new_shard = fresh.append(fresh.entries())
        for shard in merged_from:
            try:
                self.root.delete(shard)
            except FileNotFoundError:
                pass  # a concurrent compaction removed it already
        self._read_shards -= set(merged_from)
        self._read_shards.add(new_shard)
        self._merge(fresh.entries())
        return len(merged_from), len(fresh._entries)

    # exchange

    def export_json(self, path: str | Path, vocab: Vocabulary | None = None, llm_model: str | None = None) -> int:
        """Write ``{class: [descriptions]}`` (all classes, or a vocabulary's) to a JSON file; return
        the number of classes written. The file is written to a temporary name and renamed."""
        data = self.descriptions_for(vocab, llm_model) if vocab else self.descriptions_by_class(llm_model)
        atomic_write(Path(path), (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
        return len(data)

    def import_json(self, path: str | Path) -> int:
        """Add the classes of a ``{class: [descriptions]}`` file as reviewed descriptions; return how
        many. Texts are kept as listed (whitespace collapsed, empty ones dropped, repeats kept).
        The whole file is checked first, so a bad file writes nothing."""
        source = Path(path)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise DescriptionCacheError(f"{source}: cannot read a JSON object from it: {err}") from None
        if not isinstance(data, dict):
            raise DescriptionCacheError(f"{source}: expected an object {{class: [descriptions]}}")
        created = now_utc()
        entries = []
        for name, texts in data.items():
            if not name.strip() or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise DescriptionCacheError(f"{source}: class {name!r} must map to a list of strings")
            # Repeats are kept: a class's AP target is the mean of its list, so a description
            # listed twice weighs twice (the reference's files repeat some, and it averages all).
            cleaned = tuple(" ".join(t.split()) for t in texts if t.strip())
            key = hashlib.sha256(json.dumps([SOURCE_IMPORT, name, cleaned]).encode("utf-8")).hexdigest()
            entries.append(CacheEntry(
                key=key, class_name=name.strip(), class_names=(name.strip(),), prompt_set="", prompt_id="",
                prompt_hash="", prompt="", llm_model="", sampling="", raw_answer="", finish_reason="",
                descriptions=cleaned, cleaning_version="", source=SOURCE_IMPORT,
                server=f"import:{source.name}", created_at=created,
            ))
        self.append(entries)
        return len(entries)

    # internals

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.refresh()

    def _merge(self, entries: Iterable[CacheEntry]) -> None:
        for entry in entries:
            old = self._entries.get(entry.key)
            if old is None or old._order() <= entry._order():
                self._entries[entry.key] = entry


def _shard_name() -> str:
    return f"{now_utc().strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:12]}.parquet"


def _to_parquet(entries: list[CacheEntry]) -> bytes:
    columns = {f.name: [getattr(e, f.name) for e in entries] for f in fields(CacheEntry)}
    columns["class_names"] = [list(v) for v in columns["class_names"]]
    columns["descriptions"] = [list(v) for v in columns["descriptions"]]
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _read_shard(root: StoreRoot, shard: str) -> list[CacheEntry]:
    try:
        data = root.read_bytes(shard)
    except OSError as err:
        if not root.exists(shard):
            raise FileNotFoundError(shard) from None
        raise StoreError(f"cannot read {root.url}/{shard}: {err}") from None
    try:
        rows = pq.read_table(io.BytesIO(data)).select(SCHEMA.names).to_pylist()
    except (pa.ArrowException, KeyError) as err:
        raise DescriptionCacheError(f"{root.url}/{shard} is not a description-cache shard: {err}") from None
    return [
        CacheEntry(**{**row, "class_names": tuple(row["class_names"]), "descriptions": tuple(row["descriptions"])})
        for row in rows
    ]
