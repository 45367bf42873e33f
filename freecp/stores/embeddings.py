"""The embedding store: CLIP text vectors in Parquet, one dataset per model, shared across teams.

Text encoding is the slow step on a CPU, so every (text, model) pair is encoded once, ever, and
segment runs only read vectors. The store persists texts and vectors (pyarrow, numpy) and says
what is missing; the model that fills the gaps is driven from above (``freecp.encoding``). Layout below the store root (a local directory or
``s3://bucket/prefix``, always through ``freecp.stores.fs``)::

    models/<model-dir>/class/<shard>.parquet             one row per class name (80 templates averaged)
    models/<model-dir>/description/<shard>.parquet       one row per description text (raw)
    models/<model-dir>/description_mean/<shard>.parquet  one row per list of descriptions (their average)
    models/<model-dir>/vocabularies/<vocab-hash>.parquet the vocabulary manifest

Every shard has the columns ``text_hash, text, kind, vector`` (``fixed_size_list<float32>[dim]``,
L2-normalised); its schema metadata records the model key, dimension, normalisation, template set
hash and freecp version, and a reader refuses data whose model key or dimension is not its own.

Concurrency: a write is a new shard with a unique name, written atomically, never a change to an
existing file, so concurrent writers cannot clobber each other; readers take the union of the
shards and drop duplicates by text hash (same text, same model, same vector). A killed writer
leaves at most a temporary file, which listing skips, and whatever shards it had finished, which
a re-run reuses. The manifest is written last, so a reader that finds it finds every row it names.

The ``description_mean`` kind exists for read speed: the segmenter needs one averaged description
vector per class, and storing it lets a vocabulary load read Q + K rows instead of every
description (20 to 60 per class).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import freecp
from freecp.templates import TEMPLATE_SET_HASH
from freecp.stores.fs import StoreError, StoreRoot, open_root, skip_unreadable
from freecp.stores.requests import decode_request, encode_request, request_path
from freecp.text_keys import float_order_of, model_key_of
from freecp.vocab import Vocabulary

log = logging.getLogger(__name__)

CLASS = "class"
DESCRIPTION = "description"
DESCRIPTION_MEAN = "description_mean"
KINDS = (CLASS, DESCRIPTION, DESCRIPTION_MEAN)

MODELS_DIR = "models"
MANIFESTS_DIR = "vocabularies"
NORMALISATION = "l2"
META_KEY = b"freecp.embeddings"
MANIFEST_META_KEY = b"freecp.vocabulary"
READ_THREADS = 8
READ_ATTEMPTS = 3


class EmbeddingStoreError(StoreError):
    """The store cannot serve the request; the message says what to do."""


class MissingEmbeddingsError(EmbeddingStoreError):
    """Texts a vocabulary needs are not in the store yet (run ``freecp encode``)."""


class ModelMismatchError(EmbeddingStoreError):
    """The stored vectors were written by another CLIP model than the one asking."""


# ---------------------------------------------------------------------------------- hashing
def text_hash(text: str, kind: str) -> str:
    """Key of one stored vector. Class rows depend on the prompt templates, so their hash does too."""
    salt = TEMPLATE_SET_HASH if kind == CLASS else ""
    payload = json.dumps([kind, salt, text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def mean_hash(description_hashes: Sequence[str]) -> str:
    """Key of the average of an ordered list of descriptions (order changes the float sum)."""
    return text_hash(",".join(description_hashes), DESCRIPTION_MEAN)


def model_dir(model_key: str) -> str:
    """A readable directory name for a model key that is safe as a path and collision-free."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key).strip("._-")[:60] or "model"
    return f"{readable}-{hashlib.sha256(model_key.encode('utf-8')).hexdigest()[:8]}"


# -------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class EncodeSummary:
    """What ``ensure`` did: per kind, how many distinct texts were encoded and how many reused."""

    store: str
    model_key: str
    vocabulary: str
    vocab_hash: str
    classes_encoded: int
    classes_reused: int
    descriptions_encoded: int
    descriptions_reused: int
    described_classes: int
    manifest_written: bool
    seconds: float
    model_loaded: bool = True  # False: the store held everything, so the model was never built

    @property
    def encoded(self) -> int:
        return self.classes_encoded + self.descriptions_encoded

    @property
    def reused(self) -> int:
        return self.classes_reused + self.descriptions_reused

    def line(self) -> str:
        return (f"{self.vocabulary} ({self.vocab_hash}) with {self.model_key} in {self.store}: "
                f"encoded {self.encoded} texts ({self.classes_encoded} class names, "
                f"{self.descriptions_encoded} descriptions), reused {self.reused} "
                f"({self.classes_reused} class names, {self.descriptions_reused} descriptions); "
                f"classes with descriptions: {self.described_classes}; {self.seconds:.1f} s"
                f"{'' if self.model_loaded else ' (up to date: model not loaded)'}")


@dataclass(frozen=True)
class ModelSummary:
    model_key: str
    dim: int
    rows: dict[str, int]  # distinct texts per kind
    shards: int
    vocabularies: int


@dataclass(frozen=True)
class VocabularySummary:
    model_key: str
    name: str
    content_hash: str
    classes: int
    queries: int
    described: int
    written_at: str


@dataclass(frozen=True)
class ClassCoverage:
    index: int
    names: tuple[str, ...]
    queries_present: int
    descriptions: int          # descriptions the manifest lists for this class
    description_vector: bool   # their average is in the store


@dataclass(frozen=True)
class VocabularyCoverage:
    model_key: str
    vocabulary: str
    content_hash: str
    manifest: bool
    classes: list[ClassCoverage]

    @property
    def complete(self) -> bool:
        return self.manifest and all(c.queries_present == len(c.names) for c in self.classes)

    @property
    def described(self) -> int:
        return sum(c.description_vector for c in self.classes)


# ------------------------------------------------------------------------------ the manifest
@dataclass(frozen=True)
class ClassPlan:
    """What one class of a vocabulary needs from the store."""

    names: tuple[str, ...]
    query_hashes: tuple[str, ...]
    description_hashes: tuple[str, ...] = ()
    description_mean: str | None = None


@dataclass(frozen=True)
class Manifest:
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


@dataclass(frozen=True)
class StoredVectors:
    """A vocabulary's vectors as stored: one row per class name (vocabulary query order), and
    per class its description average (zero rows where ``described`` is False; None: no class
    has descriptions)."""

    queries: np.ndarray
    descriptions: np.ndarray | None
    described: np.ndarray


def unique_means(plans: list[ClassPlan]) -> list[ClassPlan]:
    """One plan per distinct description list (several classes may share one average)."""
    unique: dict[str, ClassPlan] = {}
    for plan in plans:
        unique.setdefault(plan.description_mean, plan)
    return list(unique.values())


# ------------------------------------------------------------------------------- the store
@dataclass
class EncodePlan:
    """What encoding a vocabulary needs: the store's manifest, the plans and the missing texts
    (``freecp.encoding`` encodes them; the store only compares and writes)."""

    vocab: Vocabulary
    key: str
    folder: str
    recorded: Manifest | None
    plans: list[ClassPlan]
    class_texts: dict[str, str]
    new_classes: dict[str, str]
    new_descriptions: dict[str, str]
    all_descriptions: set[str]
    new_means: list[ClassPlan]

    def manifest(self, dim: int) -> Manifest:
        vocab = self.vocab
        return Manifest(vocab.name, vocab.content_hash, vocab.has_background, self.key, dim, tuple(self.plans),
                        datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def summary(self, store: str, manifest_written: bool, seconds: float,
                model_loaded: bool = True) -> EncodeSummary:
        return EncodeSummary(
            store=store, model_key=self.key, vocabulary=self.vocab.name, vocab_hash=self.vocab.content_hash,
            classes_encoded=len(self.new_classes), classes_reused=len(self.class_texts) - len(self.new_classes),
            descriptions_encoded=len(self.new_descriptions),
            descriptions_reused=len(self.all_descriptions) - len(self.new_descriptions),
            described_classes=sum(p.description_mean is not None for p in self.plans),
            manifest_written=manifest_written, seconds=seconds, model_loaded=model_loaded,
        )


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


class EmbeddingStore:
    """Read and extend the embedding store at ``url`` (see the module docstring for the layout).

    ``flush_seconds``: while encoding, finished rows are written as a shard at least this often,
    so a killed run loses at most that much work.
    """

    def __init__(self, url: str, *, flush_seconds: float = 60.0) -> None:
        self.root: StoreRoot = open_root(url)
        self.url = self.root.url
        self.flush_seconds = flush_seconds

    # ------------------------------------------------------------------------ writing
    def plan(self, vocab: Vocabulary, key: str, dim: int,
             descriptions: dict[str, list[str]] | None = None) -> EncodePlan:
        """What ``vocab`` needs for model ``key`` that the store lacks.

        ``descriptions`` maps a class name to its description texts (only foreground classes
        use them). A class it does not name keeps the descriptions the store already records
        for this vocabulary, so a run without descriptions never erases earlier ones.
        """
        return self._work(vocab, key, dim, descriptions)

    def writer(self, plan: EncodePlan, dim: int) -> ShardWriter:
        """Where the encoder puts the vectors of ``plan``'s missing texts (shards, flushed as it goes)."""
        return ShardWriter(self, plan.folder, plan.key, dim)

    def stored_descriptions(self, plan: EncodePlan, dim: int, fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vectors of every description ``plan``'s new averages need: ``fresh`` ones, then the store's."""
        return self._description_vectors(plan.folder, plan.key, dim, plan.new_means, fresh)

    def finish(self, plan: EncodePlan, dim: int, started: float) -> EncodeSummary:
        """Write the vocabulary manifest (last, once every row it names is written) when it changed."""
        manifest = plan.manifest(dim)
        write_manifest = not manifest.same_content(plan.recorded)
        if write_manifest:
            self.root.write_bytes(_manifest_path(plan.folder, plan.vocab.content_hash), manifest.to_parquet())
        summary = plan.summary(self.url, write_manifest, time.monotonic() - started)
        log.info("%s", summary.line())
        return summary

    def remember_key(self, request: str, model_key: str) -> None:
        """Record that ``request`` (``freecp.clip.keys.weights_request``) built ``model_key``."""
        self.root.write_bytes(request_path(request), encode_request(request, model_key))

    def key_for(self, request: str) -> str | None:
        """The model key ``request`` was built as before, or None (never built, or unreadable)."""
        try:
            recorded, model_key = decode_request(self.root.read_bytes(request_path(request)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            skip_unreadable(f"{self.url}/{request_path(request)}", err)
            return None
        return model_key if recorded == request else None

    def up_to_date(self, vocab: Vocabulary, model_key: str,
                   descriptions: dict[str, list[str]] | None = None) -> EncodeSummary | None:
        """What ``ensure`` would report when it has nothing to do, or None when it has work.

        Decided from the manifest and the stored hashes alone, given the model key, so a re-run
        of ``freecp encode`` on an encoded vocabulary never builds the model (nor imports torch).
        """
        started = time.monotonic()
        work = self._work(vocab, model_key, None, descriptions)
        if work.recorded is None or work.new_classes or work.new_descriptions or work.new_means \
                or not work.manifest(work.recorded.dim).same_content(work.recorded):
            return None
        summary = work.summary(self.url, False, time.monotonic() - started, model_loaded=False)
        log.info("%s", summary.line())
        return summary

    def _work(self, vocab: Vocabulary, key: str, dim: int | None,
              descriptions: dict[str, list[str]] | None) -> EncodePlan:
        """Compare what ``vocab`` (with ``descriptions``) needs with what the store holds."""
        folder = posixpath.join(MODELS_DIR, model_dir(key))
        recorded = self._read_manifest(folder, vocab, key, dim)
        present = {kind: set(self._read_rows(folder, kind, key, dim, columns=["text_hash"])
                             .column("text_hash").to_pylist()) for kind in KINDS}
        plans, description_texts = _plan(vocab, descriptions, recorded)
        class_texts = _unique_texts(vocab.queries, CLASS)
        return EncodePlan(
            vocab=vocab, key=key, folder=folder, recorded=recorded, plans=plans, class_texts=class_texts,
            new_classes={h: t for h, t in class_texts.items() if h not in present[CLASS]},
            new_descriptions={h: t for h, t in description_texts.items() if h not in present[DESCRIPTION]},
            all_descriptions={h for p in plans for h in p.description_hashes},
            new_means=[p for p in plans
                       if p.description_mean and p.description_mean not in present[DESCRIPTION_MEAN]],
        )

    def _description_vectors(self, folder: str, key: str, dim: int, plans: list[ClassPlan],
                             fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vectors of every description the new averages need: fresh ones, then the store's."""
        wanted = {h for p in plans for h in p.description_hashes} - fresh.keys()
        rows, matrix = _indexed(self._read_rows(folder, DESCRIPTION, key, dim, wanted=wanted), dim)
        vectors = {**{h: matrix[i] for h, i in rows.items()}, **fresh}
        lost = wanted - vectors.keys()
        if lost:
            raise MissingEmbeddingsError(
                f"{self.url}: {len(lost)} descriptions recorded for this vocabulary are no longer in "
                f"the store; pass the descriptions again (--descriptions) to re-encode them")
        return vectors

    # ------------------------------------------------------------------------- reading
    def load_vectors(self, vocab: Vocabulary, key: str, dim: int | None = None) -> StoredVectors:
        """The vocabulary's query vectors and per-class description averages (no encoding)."""
        folder = posixpath.join(MODELS_DIR, model_dir(key))
        manifest = self._read_manifest(folder, vocab, key, dim, with_descriptions=False)
        if manifest is None:
            if self.unrecorded_twin(key) and not self.root.list_files(folder, ".parquet"):
                raise MissingEmbeddingsError(
                    f"{self.url} holds vectors of {model_key_of(key)} only from a text tower nobody recorded "
                    f"(written before float orders were), which are not reused as {float_order_of(key)!r}: "
                    f"run `{self._encode_command(vocab, key)}` with the same model options to encode them once")
            others = [m for m in self._model_keys() if m != key]
            if others and not self.root.list_files(folder, ".parquet"):
                raise ModelMismatchError(
                    f"{self.url} holds embeddings of {', '.join(others)}, not of {key}: vectors of "
                    f"different CLIP models cannot be mixed. Use the store's model, or encode this one "
                    f"with `{self._encode_command(vocab, key)}` and the same model options")
            raise MissingEmbeddingsError(
                f"vocabulary {vocab.name!r} ({vocab.content_hash}) is not encoded in {self.url} for "
                f"{key}: run `{self._encode_command(vocab, key)}` with the same model options")
        dim = manifest.dim
        query_hashes = [h for plan in manifest.classes for h in plan.query_hashes]
        described = [k for k, p in enumerate(manifest.classes) if p.description_mean]
        mean_hashes = [manifest.classes[k].description_mean for k in described]
        # Whole small partitions, picked by hash: faster than a row filter while they hold a few
        # vocabularies (tens of thousands of rows); the descriptions themselves are never read.
        columns = ["text_hash", "vector"]
        query_rows, query_matrix = _indexed(self._read_rows(folder, CLASS, key, dim, columns), dim)
        mean_rows, mean_matrix = _indexed(self._read_rows(folder, DESCRIPTION_MEAN, key, dim, columns), dim)
        lost = (set(query_hashes) - query_rows.keys()) | (set(mean_hashes) - mean_rows.keys())
        if lost:
            raise MissingEmbeddingsError(
                f"{self.url}: {len(lost)} vectors of vocabulary {vocab.name!r} for {key} are missing "
                f"(shards deleted?); run `{self._encode_command(vocab, key)}` to restore them")
        mask = np.zeros(len(manifest.classes), dtype=bool)
        mask[described] = True
        descriptions = None
        if described:
            descriptions = np.zeros((len(manifest.classes), dim), np.float32)  # zero rows: no descriptions
            descriptions[described] = mean_matrix[[mean_rows[h] for h in mean_hashes]]
        return StoredVectors(queries=query_matrix[[query_rows[h] for h in query_hashes]],
                             descriptions=descriptions, described=mask)

    def _encode_command(self, vocab: Vocabulary, key: str) -> str:
        """The ``freecp encode`` command that fills this store for ``key``'s float order."""
        order = float_order_of(key)
        return f"freecp encode {vocab.name} --store {self.url}" + (f" --float-order {order}" if order else "")

    def unrecorded_twin(self, key: str) -> str | None:
        """The bare model key of text key ``key`` when the store holds vectors under it: vectors of
        the same model from a text tower nobody recorded (``freecp.text_keys``), which no float
        order reads; None when there are none."""
        bare = model_key_of(key)
        if bare != key and self.root.list_files(posixpath.join(MODELS_DIR, model_dir(bare)), ".parquet"):
            return bare
        return None

    def unrecorded_keys(self) -> list[str]:
        """The store's model keys written before float orders were recorded (no run reads them)."""
        return [key for key in self._model_keys() if float_order_of(key) is None]

    def _read_manifest(self, folder: str, vocab: Vocabulary, key: str, dim: int | None,
                       with_descriptions: bool = True) -> Manifest | None:
        """The vocabulary's manifest, or None. Loading skips the description hashes (the bulk)."""
        path = _manifest_path(folder, vocab.content_hash)
        columns = None if with_descriptions else ["names", "query_hashes", "description_mean"]
        try:
            table = pq.read_table(self.root.path(path), filesystem=self.root.fs, columns=columns)
        except FileNotFoundError:
            return None
        except pa.ArrowInvalid as err:  # junk: as if absent, so `freecp encode` writes it anew
            skip_unreadable(f"{self.url}/{path}", err)
            return None
        except OSError as err:
            if not self.root.exists(path):
                return None
            raise EmbeddingStoreError(f"{self.url}: cannot read {path}: {err}") from None
        manifest = Manifest.from_table(table, f"{self.url}/{path}")
        _check_model(f"{self.url}/{path}", manifest.model_key, manifest.dim, key, dim)
        if [c.names for c in manifest.classes] != [c.names for c in vocab.classes]:
            raise EmbeddingStoreError(f"{self.url}/{path} does not describe vocabulary {vocab.name!r} "
                                      f"(its classes differ); delete it and run `freecp encode` again")
        return manifest

    def _read_rows(self, folder: str, kind: str, key: str, dim: int | None,
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
                table = pq.read_table(self.root.path(path), filesystem=self.root.fs, columns=columns)
                meta = _shard_meta(table.schema, f"{self.url}/{path}")
            except (pa.ArrowInvalid, NotAShardError) as err:
                skip_unreadable(f"{self.url}/{path}", err)
                return None
            _check_model(f"{self.url}/{path}", meta["model_key"], int(meta["dim"]), key, dim)
            if value_set is not None:
                table = table.filter(pc.is_in(table.column("text_hash"), value_set=value_set))
            return table.replace_schema_metadata(None)

        for attempt in range(READ_ATTEMPTS):
            paths = self.root.list_files(posixpath.join(folder, kind), ".parquet")
            try:
                with ThreadPoolExecutor(min(READ_THREADS, max(1, len(paths)))) as pool:
                    tables = [t for t in pool.map(read, paths) if t is not None]
                break
            except OSError as err:
                if attempt == READ_ATTEMPTS - 1 or all(self.root.exists(p) for p in paths):
                    raise EmbeddingStoreError(f"{self.url}: cannot read the embedding store: {err}") from None
        if not tables:
            return _empty_table(dim or 0).select(columns)
        return _dedupe(pa.concat_tables(tables, promote_options="default"))

    # ------------------------------------------------------------------------ listings
    def _model_folders(self) -> dict[str, list[str]]:
        folders: dict[str, list[str]] = {}
        for path in self.root.list_files(MODELS_DIR, ".parquet"):
            parts = path.split("/")
            if len(parts) == 4:
                folders.setdefault(parts[1], []).append(path)
        return folders

    def _model_keys(self) -> list[str]:
        return [key for key, _ in self._models()]

    def _models(self) -> list[tuple[str, int]]:
        """(model key, dim) of every model folder, from one of its files' metadata."""
        found = []
        for files in self._model_folders().values():
            for path in files:  # the first file that still exists (compaction may remove some)
                try:
                    meta = pq.read_schema(self.root.path(path), filesystem=self.root.fs).metadata or {}
                except pa.ArrowInvalid as err:
                    skip_unreadable(f"{self.url}/{path}", err)
                    continue
                except OSError:
                    continue
                info = json.loads(meta.get(MANIFEST_META_KEY) or meta.get(META_KEY) or b"null")
                if info:
                    found.append((info["model_key"], int(info["dim"])))
                    break
        return sorted(found)

    def list_models(self) -> list[ModelSummary]:
        """Every model in the store with its distinct texts per kind, shard and vocabulary counts."""
        summaries = []
        for key, dim in self._models():
            folder = posixpath.join(MODELS_DIR, model_dir(key))
            rows = {kind: self._read_rows(folder, kind, key, dim, columns=["text_hash"]).num_rows
                    for kind in KINDS}
            shards = sum(len(self.root.list_files(posixpath.join(folder, kind), ".parquet"))
                         for kind in KINDS)
            vocabularies = len(self.root.list_files(posixpath.join(folder, MANIFESTS_DIR), ".parquet"))
            summaries.append(ModelSummary(key, dim, rows, shards, vocabularies))
        return summaries

    def list_vocabularies(self, model_key: str | None = None) -> list[VocabularySummary]:
        """Every vocabulary manifest (of one model, or of all), as a summary."""
        keys = [model_key] if model_key else self._model_keys()
        found = []
        for key in keys:
            folder = posixpath.join(MODELS_DIR, model_dir(key), MANIFESTS_DIR)
            for path in self.root.list_files(folder, ".parquet"):
                try:
                    table = pq.read_table(self.root.path(path), filesystem=self.root.fs,
                                          columns=["names", "description_mean"])
                except pa.ArrowInvalid as err:
                    skip_unreadable(f"{self.url}/{path}", err)
                    continue
                meta = json.loads((table.schema.metadata or {}).get(MANIFEST_META_KEY, b"{}"))
                if not meta:
                    continue
                names = table.column("names").to_pylist()
                found.append(VocabularySummary(
                    key, meta["vocabulary"], meta["content_hash"], len(names), sum(map(len, names)),
                    table.num_rows - table.column("description_mean").null_count, meta.get("written_at", "")))
        return found

    def inspect(self, vocab: Vocabulary, model_key: str) -> VocabularyCoverage:
        """Per class of ``vocab``: how many of its names are encoded and whether it has descriptions."""
        folder = posixpath.join(MODELS_DIR, model_dir(model_key))
        manifest = self._read_manifest(folder, vocab, model_key, None)
        dim = manifest.dim if manifest else None
        present = set(self._read_rows(folder, CLASS, model_key, dim, columns=["text_hash"])
                      .column("text_hash").to_pylist())
        means = set(self._read_rows(folder, DESCRIPTION_MEAN, model_key, dim, columns=["text_hash"])
                    .column("text_hash").to_pylist())
        plans = manifest.classes if manifest else [None] * len(vocab)
        classes = [
            ClassCoverage(
                index=k, names=entry.names,
                queries_present=sum(text_hash(n, CLASS) in present for n in entry.names),
                descriptions=len(plan.description_hashes) if plan else 0,
                description_vector=bool(plan and plan.description_mean in means),
            )
            for k, (entry, plan) in enumerate(zip(vocab.classes, plans))
        ]
        return VocabularyCoverage(model_key, vocab.name, vocab.content_hash, manifest is not None, classes)

    # ---------------------------------------------------------------------- compaction
    def compact(self, model_key: str | None = None) -> dict[str, tuple[int, int]]:
        """Merge each kind's shards into one sorted, deduplicated shard; old shards are removed.

        Safe next to writers (only the shards read are deleted) and readers (they retry when a
        listed shard disappears). Returns, per model key and kind, (shards before, rows after).
        """
        result = {}
        for key, dim in self._models():
            if model_key and key != model_key:
                continue
            folder = posixpath.join(MODELS_DIR, model_dir(key))
            for kind in KINDS:
                paths = self.root.list_files(posixpath.join(folder, kind), ".parquet")
                if len(paths) < 2:
                    continue
                table = self._read_rows(folder, kind, key, dim).sort_by("text_hash")
                vectors = table.column("vector").combine_chunks().values.to_numpy().reshape(-1, dim)
                ShardWriter(self, folder, key, dim).write(
                    kind, table.column("text_hash").to_pylist(), table.column("text").to_pylist(), vectors)
                for path in paths:
                    try:
                        self.root.delete(path)
                    except FileNotFoundError:
                        pass  # a concurrent compaction removed it first
                result[f"{key} {kind}"] = (len(paths), table.num_rows)
        return result


# ----------------------------------------------------------------------------- the writer
class ShardWriter:
    """Collects encoded rows and writes them as immutable shards, at least every flush_seconds."""

    def __init__(self, store: EmbeddingStore, folder: str, key: str, dim: int) -> None:
        self.store, self.folder, self.key, self.dim = store, folder, key, dim
        self.pending = {kind: _Pending() for kind in KINDS}
        self.last_flush = time.monotonic()

    def add(self, kind: str, hashes: list[str], texts: list[str], vectors: np.ndarray) -> None:
        self.pending[kind].add(hashes, texts, vectors)
        if time.monotonic() - self.last_flush >= self.store.flush_seconds:
            self.flush()

    def add_means(self, plans: list[ClassPlan], means: list[np.ndarray]) -> None:
        """One averaged row per distinct description list (``unique_means``; its text is the first
        class's name)."""
        self.add(DESCRIPTION_MEAN, [p.description_mean for p in plans], [p.names[0] for p in plans],
                 np.stack(means))

    def flush(self) -> None:
        for kind, pending in self.pending.items():
            if pending.hashes:
                self.write(kind, *pending.take())
        self.last_flush = time.monotonic()

    def write(self, kind: str, hashes: list[str], texts: list[str], vectors: np.ndarray) -> None:
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        meta = {"model_key": self.key, "dim": self.dim, "normalisation": NORMALISATION,
                "template_set_hash": TEMPLATE_SET_HASH, "freecp_version": freecp.__version__}
        table = pa.table({
            "text_hash": pa.array(hashes, pa.string()),
            "text": pa.array(texts, pa.string()),
            "kind": pa.array([kind] * len(hashes), pa.string()).dictionary_encode(),
            "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
        }).replace_schema_metadata({META_KEY: json.dumps(meta)})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression={"text_hash": "zstd", "text": "zstd", "kind": "zstd",
                                                 "vector": "none"})
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        self.store.root.write_bytes(posixpath.join(self.folder, kind, name), sink.getvalue().to_pybytes())


# ---------------------------------------------------------------------------------- helpers
def _plan(vocab: Vocabulary, descriptions: dict[str, list[str]] | None,
          recorded: Manifest | None) -> tuple[list[ClassPlan], dict[str, str]]:
    """Per class, the hashes it needs; plus every description text the plan uses, by hash."""
    descriptions = descriptions or {}
    foreground = set(vocab.foreground_indices)
    texts: dict[str, str] = {}
    plans = []
    for k, entry in enumerate(vocab.classes):
        queries = tuple(text_hash(n, CLASS) for n in entry.names)
        given = [t for t in descriptions.get(entry.name, []) if t.strip()] if k in foreground else []
        if given:
            hashes = tuple(text_hash(t, DESCRIPTION) for t in given)
            texts.update(zip(hashes, given))
            plans.append(ClassPlan(entry.names, queries, hashes, mean_hash(hashes)))
        elif recorded is not None and recorded.classes[k].description_mean:
            kept = recorded.classes[k]
            plans.append(ClassPlan(entry.names, queries, kept.description_hashes, kept.description_mean))
        else:
            plans.append(ClassPlan(entry.names, queries))
    return plans, texts


def _unique_texts(texts: list[str], kind: str) -> dict[str, str]:
    return {text_hash(t, kind): t for t in texts}


def _manifest_path(folder: str, content_hash: str) -> str:
    if not re.fullmatch(r"[0-9a-f]+", content_hash):
        raise EmbeddingStoreError(f"invalid vocabulary hash {content_hash!r}")
    return posixpath.join(folder, MANIFESTS_DIR, f"{content_hash}.parquet")


class NotAShardError(EmbeddingStoreError):
    """A readable Parquet file without freecp's shard metadata (someone else's file)."""


def _shard_meta(schema: pa.Schema, origin: str) -> dict:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise NotAShardError(f"{origin} is not a freecp embedding shard "
                                  f"(no {META_KEY.decode()} metadata)")
    return json.loads(raw)


def _check_model(origin: str, found_key: str, found_dim: int, key: str, dim: int | None) -> None:
    if found_key != key or (dim is not None and found_dim != dim):
        raise ModelMismatchError(
            f"{origin} holds vectors of {found_key} (dim {found_dim}), but the running model is {key}"
            f"{f' (dim {dim})' if dim is not None else ''}: vectors of different models cannot be mixed")


def _empty_table(dim: int) -> pa.Table:
    return pa.table({"text_hash": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                     "vector": pa.array([], pa.list_(pa.float32(), max(dim, 1)))})


def _dedupe(table: pa.Table) -> pa.Table:
    """Keep the first row of every text hash (duplicates come from concurrent writers)."""
    first: dict[str, int] = {}
    for row, value in enumerate(table.column("text_hash").to_pylist()):
        first.setdefault(value, row)
    return table if len(first) == table.num_rows else table.take(sorted(first.values()))


def _indexed(table: pa.Table, dim: int) -> tuple[dict[str, int], np.ndarray]:
    """The vectors as one [n, dim] matrix and each text hash's row in it."""
    if table.num_rows == 0:
        return {}, np.zeros((0, dim), np.float32)
    matrix = table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return {h: row for row, h in enumerate(table.column("text_hash").to_pylist())}, matrix
