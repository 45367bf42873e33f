"""Segmenting folders: per-image work with records, resumable runs and the run index.

Shared by ``freecp segment`` and the Prefect ``segment-images`` flow. For every image the
outputs are the mask (palette PNG), the overlay (JPEG) and a small JSON record written last;
an image is up to date when its record names the same image content hash and the same run key
(model, vocabulary, text embeddings, settings), so a re-run or a resumed run only does the rest.
``records.parquet`` is rebuilt from the JSON records at the end of a run.

A folder run keeps the model busy: the next images are read and prepared in a loader thread,
``batch_images`` prepared images go through the model together, and the outputs are written in
a writer thread (``freecp.prefetch``). Each step is the one ``segment_one`` takes, so the files
are the same bit for bit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from freecp.clip import embed_vocabulary, load_backbone
from freecp.io import IMAGE_SUFFIXES, ImageReadError, read_image, safe_output_path, write_mask, write_overlay
from freecp.prefetch import WriteBehind, read_ahead
from freecp.segmenter import PreparedImage, Segmentation, Segmenter
from freecp.settings import SegmentSettings
from freecp.stores.fs import atomic_write
from freecp.threads import ThreadPolicy, current_policy
from freecp.vocab import Vocabulary

RECORDS_DIR = ".records"
INDEX_NAME = "records.parquet"

INDEX_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("classes_present", pa.list_(pa.string())),
    ("rp_scores", pa.map_(pa.string(), pa.float64())),
    ("removed_classes", pa.list_(pa.string())),
    ("ambiguity_groups", pa.string()),
    ("ap_targets", pa.string()),
    ("ap_fallback_classes", pa.list_(pa.string())),
    ("seconds", pa.float64()),
    ("content_hash", pa.string()),
    ("run_key", pa.string()),
    ("mask", pa.string()),
    ("overlay", pa.string()),
])


@dataclass
class ImageRecord:
    """One image's outcome; ``status`` is done, skipped (already up to date) or failed."""

    path: str
    status: str
    width: int = 0
    height: int = 0
    error: str = ""
    classes_present: list[str] = field(default_factory=list)
    rp_scores: dict[str, float] = field(default_factory=dict)
    removed_classes: list[str] = field(default_factory=list)
    ambiguity_groups: list[dict] = field(default_factory=list)
    ap_targets: str = ""
    ap_fallback_classes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    content_hash: str = ""
    run_key: str = ""
    mask: str = ""
    overlay: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunSummary:
    """What one run over a folder did."""

    records: list[ImageRecord]
    index: Path | None
    seconds: float
    threads: ThreadPolicy | None = None  # the thread split in force, when one was applied

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status == "failed"]

    def top_classes(self, n: int = 10) -> list[tuple[str, int]]:
        return Counter(c for r in self.records for c in r.classes_present).most_common(n)

    def top_removed(self, n: int = 10) -> list[tuple[str, int]]:
        return Counter(c for r in self.records for c in r.removed_classes).most_common(n)


def run_key(segmenter: Segmenter) -> str:
    """Hash of everything besides the image that decides the outputs."""
    parts = [segmenter.backbone.model_key, segmenter.vocab.content_hash, segmenter.settings.content_hash,
             segmenter.ap_targets, ",".join(segmenter.fallback_classes)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def find_images(root: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under ``root`` (or ``root`` itself), sorted; ``exclude`` (an output folder) is skipped."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is neither an image file nor a folder")
    skip = exclude.resolve() if exclude is not None else None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip is None or (here / d).resolve() != skip))
        found += [here / f for f in sorted(filenames) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def build_segmenter(vocab: Vocabulary, *, model: str = "ViT-B-16", pretrained: str | None = "openai",
                    clip_checkpoint: str | None = None, store: str | None = None, device: str = "cpu",
                    settings: SegmentSettings | None = None, encode_missing: bool = True) -> Segmenter:
    """Load the backbone and the vocabulary's text embeddings (from a store when given)."""
    settings = settings or SegmentSettings()
    backbone = load_backbone(model, pretrained=pretrained, checkpoint=clip_checkpoint, device=device,
                             variant=settings.variant, protocol=settings.protocol)
    if store is None:
        embeddings = embed_vocabulary(backbone, vocab)
    else:
        from freecp.stores.embeddings import EmbeddingStore

        embedding_store = EmbeddingStore(store)
        if encode_missing:
            embedding_store.ensure(vocab, backbone, progress=False)
        embeddings = embedding_store.load(vocab, backbone)
    return Segmenter(backbone, vocab, embeddings, settings)


@dataclass
class _Job:
    """One image on its way through a run: its record so far and, once read, its pixels."""

    record: ImageRecord
    source: Path
    record_path: Path | None = None     # None: settled without segmenting (bad path, up to date)
    image: np.ndarray | None = None
    prepared: PreparedImage | None = None
    seconds: float = 0.0                # work done for this image so far


def _open_job(segmenter: Segmenter, image_path: Path, images_root: Path, out_dir: Path, key: str) -> _Job:
    """Output paths and the up-to-date check; the job comes back settled when nothing is to do."""
    start = time.perf_counter()
    image_path, out_dir = Path(image_path), Path(out_dir)
    relative = image_path.name if Path(images_root).is_file() else image_path.relative_to(images_root)
    job = _Job(ImageRecord(path=Path(relative).as_posix(), status="failed", run_key=key), image_path)
    record = job.record
    try:
        record_path = safe_output_path(out_dir / RECORDS_DIR, relative, Path(relative).suffix + ".json")
        record.mask = safe_output_path(out_dir / "masks", relative, ".png").relative_to(out_dir).as_posix()
        record.overlay = safe_output_path(out_dir / "overlays", relative, ".jpg").relative_to(out_dir).as_posix()
        record.content_hash = hashlib.sha256(image_path.read_bytes()).hexdigest()[:16]
    except (OSError, ValueError) as err:
        record.error = f"cannot use this path: {err}"
        return job
    previous = _read_record(record_path)
    if previous and previous.status == "done" and previous.content_hash == record.content_hash \
            and previous.run_key == record.run_key and (out_dir / previous.mask).is_file():
        previous.status = "skipped"
        job.record = previous
        return job
    job.record_path = record_path
    job.seconds = time.perf_counter() - start
    return job


def _load(segmenter: Segmenter, job: _Job) -> _Job:
    """Decode the image and prepare its windows (the loader thread's part of a run)."""
    if job.record_path is None:
        return job
    start = time.perf_counter()
    try:
        job.image = read_image(job.source, segmenter.settings.max_pixels)
        job.prepared = segmenter.prepare(job.image)
    except ImageReadError as err:
        job.record.error = str(err)
    job.seconds += time.perf_counter() - start
    return job


def _finish(segmenter: Segmenter, out_dir: Path, job: _Job, result: Segmentation | None) -> ImageRecord:
    """Write the mask, the overlay and, last, the record (the writer thread's part of a run)."""
    record = job.record
    if job.record_path is None:
        return record
    start = time.perf_counter()
    if result is not None:
        write_mask(out_dir / record.mask, result.labels, len(segmenter.vocab))
        write_overlay(out_dir / record.overlay, job.image, result.labels, len(segmenter.vocab))
        record.status = "done"
        record.height, record.width = job.image.shape[:2]
        record.classes_present = result.classes_present(segmenter.vocab)
        if result.report is not None:
            record.rp_scores = result.report.rp_scores
            record.removed_classes = result.report.removed
            record.ambiguity_groups = result.report.groups
            record.ap_targets = result.report.ap_targets
            record.ap_fallback_classes = result.report.fallback_classes
    record.seconds = round(job.seconds + time.perf_counter() - start, 4)
    atomic_write(job.record_path, json.dumps(record.to_dict()).encode())
    return record


def segment_one(segmenter: Segmenter, image_path: Path, images_root: Path, out_dir: Path,
                key: str | None = None) -> ImageRecord:
    """Segment one image file unless its outputs are up to date; never raises for a bad image."""
    job = _load(segmenter, _open_job(segmenter, image_path, images_root, out_dir, key or run_key(segmenter)))
    result = None
    if job.prepared is not None:
        start = time.perf_counter()
        result = segmenter.segment(job.prepared)
        job.seconds += time.perf_counter() - start
    return _finish(segmenter, Path(out_dir), job, result)


def segment_folder(segmenter: Segmenter, images_root: Path, out_dir: Path, progress: bool = True,
                   files: Sequence[Path] | None = None) -> RunSummary:
    """Segment every image under ``images_root`` (or only ``files``, paths below it, such as a
    benchmark's split) into ``out_dir``, skipping up-to-date ones.

    The settings' ``prefetch`` batches are read ahead and ``batch_images`` images share model
    calls; the summary reports the thread policy in force (``freecp.threads``).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    files = find_images(images_root, exclude=out_dir) if files is None else list(files)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {images_root}")
    key = run_key(segmenter)
    settings = segmenter.settings
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    futures = []
    with Progress(*columns, disable=not progress) as bar, WriteBehind(2 * settings.batch_images) as writer:
        task = bar.add_task("segmenting", total=len(files), rate="")
        finished = itertools.count(1)

        def advance(_: Future) -> None:
            rate = next(finished) / (time.perf_counter() - start)
            bar.update(task, advance=1, rate=f"{rate:.2f} img/s")

        jobs = read_ahead(files, lambda path: _load(segmenter, _open_job(segmenter, path, images_root, out_dir, key)),
                          settings.prefetch * settings.batch_images)
        for batch in _batches(jobs, settings.batch_images):
            todo = [job for job in batch if job.prepared is not None]
            begin = time.perf_counter()
            results = dict(zip(map(id, todo), segmenter.segment_batch([job.prepared for job in todo])))
            for job in todo:
                job.seconds += (time.perf_counter() - begin) / len(todo)
            for job in batch:
                futures.append(writer.submit(_finish, segmenter, out_dir, job, results.get(id(job))))
                futures[-1].add_done_callback(advance)
    records = [future.result() for future in futures]
    return RunSummary(records=records, index=write_index(out_dir), seconds=time.perf_counter() - start,
                      threads=current_policy())


def _batches(jobs: Iterable[_Job], size: int) -> Iterator[list[_Job]]:
    """Groups of jobs holding ``size`` images to segment (settled jobs ride along)."""
    batch, images = [], 0
    for job in jobs:
        batch.append(job)
        images += job.prepared is not None
        if images == size:
            yield batch
            batch, images = [], 0
    if batch:
        yield batch


def write_index(out_dir: Path) -> Path:
    """Rebuild ``records.parquet`` from every per-image record in ``out_dir`` (atomic)."""
    out_dir = Path(out_dir)
    rows = []
    for path in sorted((out_dir / RECORDS_DIR).rglob("*.json")):
        record = _read_record(path)
        if record is not None:
            row = record.to_dict()
            row["ambiguity_groups"] = json.dumps(row["ambiguity_groups"])
            row["rp_scores"] = list(row["rp_scores"].items())
            rows.append(row)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), sink)
    target = out_dir / INDEX_NAME
    atomic_write(target, sink.getvalue().to_pybytes())
    return target


def _read_record(path: Path) -> ImageRecord | None:
    try:
        return ImageRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing, or left half-written by a killed run: redo the image
