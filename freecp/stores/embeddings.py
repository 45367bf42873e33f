"""The embedding store: CLIP text vectors in Parquet, one dataset per model, shared across teams.

Text encoding is the slow step on a CPU, so every (text, model) pair is encoded once, ever, and
segment runs only read vectors. The store persists texts and vectors (pyarrow, numpy) and says
what is missing; the model that fills the gaps is driven from above (``freecp.encoding``).
Layout below the store root (a local directory or ``s3://bucket/prefix``, always through
``freecp.stores.fs``)::

    models/<model-dir>/class/<shard>.parquet             one row per class name (80 templates averaged)
    models/<model-dir>/description/<shard>.parquet       one row per description text (raw)
    models/<model-dir>/description_mean/<shard>.parquet  one row per list of descriptions (their average)
    models/<model-dir>/vocabularies/<vocab-hash>.parquet the vocabulary manifest

Each job has its own module: where a vector lives and its key (``vector_keys``), the manifest
(``manifest``), the shards and their writer (``shards``), what an encode needs (``planning``),
what the store reports (``summaries``) and the errors (``embedding_errors``); this module is the
front that ties them to one store root.

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

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from freecp.stores.embedding_errors import EmbeddingStoreError, MissingEmbeddingsError, ModelMismatchError
from freecp.stores.fs import StoreRoot, open_root, skip_unreadable
from freecp.stores.manifest import MANIFEST_META_KEY, manifest_files, manifest_path, read_manifest, read_summary
from freecp.stores.planning import EncodePlan, plan_encode, unique_means
from freecp.stores.requests import decode_request, encode_request, request_path
from freecp.stores.shards import META_KEY, ShardWriter, indexed, read_rows, shard_files, stored_hashes, write_shard
from freecp.stores.summaries import ClassCoverage, EncodeSummary, ModelSummary, VocabularyCoverage, VocabularySummary
from freecp.stores.vector_keys import CLASS, DESCRIPTION, DESCRIPTION_MEAN, KINDS, MODELS_DIR, model_folder, text_hash
from freecp.text_keys import float_order_of, model_key_of
from freecp.vocab import Vocabulary

# What callers use with the store, importable from here (the encoder, the CLI, the flows).
__all__ = ["CLASS", "DESCRIPTION", "DESCRIPTION_MEAN", "EmbeddingStore", "EmbeddingStoreError", "EncodePlan",
           "EncodeSummary", "MissingEmbeddingsError", "ModelMismatchError", "StoredVectors", "unique_means"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredVectors:
    """A vocabulary's vectors as stored: one row per class name (vocabulary query order), and
    per class its description average (zero rows where ``described`` is False; None: no class
    has descriptions)."""

    queries: np.ndarray
    descriptions: np.ndarray | None
    described: np.ndarray


class EmbeddingStore:
    """Read and extend the embedding store at ``url`` (see the module docstring for the layout).

    ``flush_seconds``: while encoding, finished rows are written as a shard at least this often,
    so a killed run loses at most that much work. ``create=False`` (readers: ``store ls``,
    ``store inspect``) refuses a root that does not exist instead of making it.
    """

    def __init__(self, url: str, *, flush_seconds: float = 60.0, create: bool = True) -> None:
        self.root: StoreRoot = open_root(url, create=create)
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
        return plan_encode(self.root, vocab, key, dim, descriptions)

    def writer(self, plan: EncodePlan, dim: int) -> ShardWriter:
        """Where the encoder puts the vectors of ``plan``'s missing texts (shards, flushed as it goes)."""
        return ShardWriter(self.root, plan.folder, plan.key, dim, flush_seconds=self.flush_seconds)

    def stored_descriptions(self, plan: EncodePlan, dim: int, fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vectors of every description ``plan``'s new averages need: ``fresh`` ones, then the store's."""
        wanted = {h for p in plan.new_means for h in p.description_hashes} - fresh.keys()
        rows, matrix = indexed(read_rows(self.root, plan.folder, DESCRIPTION, plan.key, dim, wanted=wanted), dim)
        vectors = {**{h: matrix[i] for h, i in rows.items()}, **fresh}
        lost = wanted - vectors.keys()
        if lost:
            raise MissingEmbeddingsError(
                f"{self.url}: {len(lost)} descriptions recorded for this vocabulary are no longer in "
                f"the store; pass the descriptions again (--descriptions) to re-encode them")
        return vectors

    def finish(self, plan: EncodePlan, dim: int, started: float) -> EncodeSummary:
        """Write the vocabulary manifest (last, once every row it names is written) when it changed."""
        manifest = plan.manifest(dim)
        write_manifest = not manifest.same_content(plan.recorded)
        if write_manifest:
            self.root.write_bytes(manifest_path(plan.folder, plan.vocab.content_hash), manifest.to_parquet())
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
        work = plan_encode(self.root, vocab, model_key, None, descriptions)
        if work.recorded is None or work.new_classes or work.new_descriptions or work.new_means \
                or not work.manifest(work.recorded.dim).same_content(work.recorded):
            return None
        summary = work.summary(self.url, False, time.monotonic() - started, model_loaded=False)
        log.info("%s", summary.line())
        return summary

    # ------------------------------------------------------------------------- reading
    def load_vectors(self, vocab: Vocabulary, key: str, dim: int | None = None) -> StoredVectors:
        """The vocabulary's query vectors and per-class description averages (no encoding)."""
        folder = model_folder(key)
        manifest = read_manifest(self.root, folder, vocab, key, dim, with_descriptions=False)
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
        query_rows, query_matrix = indexed(read_rows(self.root, folder, CLASS, key, dim, columns), dim)
        mean_rows, mean_matrix = indexed(read_rows(self.root, folder, DESCRIPTION_MEAN, key, dim, columns), dim)
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
        if bare != key and self.root.list_files(model_folder(bare), ".parquet"):
            return bare
        return None

    def unrecorded_keys(self) -> list[str]:
        """The store's model keys written before float orders were recorded (no run reads them)."""
        return [key for key in self._model_keys() if float_order_of(key) is None]

    def description_counts(self, vocab: Vocabulary, key: str) -> list[int]:
        """Per class, how many descriptions its stored average was made from (0: none)."""
        manifest = read_manifest(self.root, model_folder(key), vocab, key, None)
        if manifest is None:
            raise MissingEmbeddingsError(f"vocabulary {vocab.name!r} is not encoded in {self.url} for {key}")
        return [len(plan.description_hashes) for plan in manifest.classes]

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
            folder = model_folder(key)
            rows = {kind: len(stored_hashes(self.root, folder, kind, key, dim)) for kind in KINDS}
            shards = sum(len(shard_files(self.root, folder, kind)) for kind in KINDS)
            vocabularies = len(manifest_files(self.root, folder))
            summaries.append(ModelSummary(key, dim, rows, shards, vocabularies))
        return summaries

    def list_vocabularies(self, model_key: str | None = None) -> list[VocabularySummary]:
        """Every vocabulary manifest (of one model, or of all), as a summary."""
        keys = [model_key] if model_key else self._model_keys()
        found = []
        for key in keys:
            for path in manifest_files(self.root, model_folder(key)):
                summary = read_summary(self.root, key, path)
                if summary is not None:
                    found.append(summary)
        return found

    def inspect(self, vocab: Vocabulary, model_key: str) -> VocabularyCoverage:
        """Per class of ``vocab``: how many of its names are encoded and whether it has descriptions."""
        folder = model_folder(model_key)
        manifest = read_manifest(self.root, folder, vocab, model_key, None)
        dim = manifest.dim if manifest else None
        present = stored_hashes(self.root, folder, CLASS, model_key, dim)
        means = stored_hashes(self.root, folder, DESCRIPTION_MEAN, model_key, dim)
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
            folder = model_folder(key)
            for kind in KINDS:
                paths = shard_files(self.root, folder, kind)
                if len(paths) < 2:
                    continue
                table = read_rows(self.root, folder, kind, key, dim).sort_by("text_hash")
                vectors = table.column("vector").combine_chunks().values.to_numpy().reshape(-1, dim)
                write_shard(self.root, folder, kind, key, dim, table.column("text_hash").to_pylist(),
                            table.column("text").to_pylist(), vectors)
                for path in paths:
                    try:
                        self.root.delete(path)
                    except FileNotFoundError:
                        pass  # a concurrent compaction removed it first
                result[f"{key} {kind}"] = (len(paths), table.num_rows)
        return result
