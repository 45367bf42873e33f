"""Segmenting folders: per-image work with records, resumable runs and the run index.

Shared by ``freecp segment`` and the Prefect ``segment-images`` flow. For every image the
outputs are the mask (palette PNG), the overlay (JPEG) and a small JSON record written last
(names: ``freecp.layout``); an image is up to date when its record names the same image content
hash and the same run key (model, vocabulary, the text embedding vectors themselves, settings),
so a re-run or a resumed run only does the rest. ``records.parquet`` is rebuilt from the JSON
records at the end of a run, also when the run is interrupted or stopped by a full disk.

Runs sharing a folder claim images (``freecp.claims``); a folder run does not end while an image
it was asked for is held by another live run: it waits for that run's record, or for the claim to
go stale and does the image itself (``wait_for_claimed``).

One image never ends a run: whatever goes wrong while reading, segmenting or writing it becomes
that image's failed record with its reason. Only a full disk stops the run (``DiskFullError``),
as every later image would fail the same way.

A folder run keeps the model busy: the next images are read and prepared in a loader thread,
``batch_images`` prepared images go through the model together, and the outputs are written in
a writer thread (``freecp.prefetch``). Each step is the one ``segment_one`` takes, so the files
are the same bit for bit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freecp.build import build_segmenter
from freecp.claims import STALE_SECONDS, claim
from freecp.files import atomic_write
from freecp.inputs import ImageSearch, find_images
from freecp.jobs import FolderJob
from freecp.io import IMAGE_SUFFIXES, ImageReadError, read_image, write_mask, write_overlay
from freecp.layout import DiskFullError, OutputPaths, output_paths, prepare_output
from freecp.prefetch import WriteBehind, read_ahead
from freecp.progress import ProgressCallback
from freecp.records import ImageRecord, read_record, write_index, write_index_if_possible
from freecp.segmenter import PreparedImage, Segmentation, Segmenter
from freecp.threads import ThreadPolicy, current_policy
from freecp.vocab import Vocabulary

ERROR_CHARS = 500  # a failure's reason is kept to this length in its record
CLAIM_POLL_SECONDS = 2.0  # how often a run looks again at images another run holds
log = logging.getLogger(__name__)

@dataclass
class RunSummary:
    """What one run over a folder did."""

    records: list[ImageRecord]
    index: Path | None
    seconds: float
    threads: ThreadPolicy | None = None  # the thread split in force, when one was applied
    outside_links: list[Path] = field(default_factory=list)  # symlinks leading out, not followed

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status == "failed"]


_RUN_KEYS: weakref.WeakKeyDictionary[Segmenter, str] = weakref.WeakKeyDictionary()


def run_key(segmenter: Segmenter) -> str:
    """Hash of everything besides the image that decides the outputs: the model, the vocabulary,
    the settings and every text vector the segmenter uses (so new descriptions mean new outputs)."""
    if segmenter not in _RUN_KEYS:
        digest = hashlib.sha256()
        for part in (segmenter.backbone.model_key, segmenter.vocab.content_hash, segmenter.settings.content_hash):
            digest.update(part.encode() + b"|")
        for vectors in (segmenter.embeddings.queries, segmenter.crop_targets):
            digest.update(vectors.detach().cpu().float().contiguous().numpy().tobytes())
        _RUN_KEYS[segmenter] = digest.hexdigest()[:16]
    return _RUN_KEYS[segmenter]


@dataclass
class _Job:
    """One image on its way through a run: its record so far, its claim and, once read, its pixels.

    The steps are ``_open_job`` (paths, up-to-date check, claim), ``_load`` (read and prepare),
    the model (``segment_one`` alone, or ``segment_folder`` in batches) and ``_finish`` (outputs
    and record, claim released). A job whose ``paths`` is None is settled (bad path, up to date,
    claimed by another run) and only passes through.
    """

    record: ImageRecord
    source: Path
    paths: OutputPaths | None = None
    claim: ExitStack = field(default_factory=ExitStack)
    image: np.ndarray | None = None
    prepared: PreparedImage | None = None
    error: BaseException | None = None  # what went wrong reading or segmenting this image
    seconds: float = 0.0                # work done for this image so far

    def release(self) -> None:
        """Give the claim back (idempotent)."""
        self.claim.close()


def _open_job(image_path: Path, images_root: Path, out_dir: Path, key: str) -> _Job:
    """Output paths, the up-to-date check and the claim; the job comes back settled when
    nothing is to do here."""
    start = time.perf_counter()
    image_path, out_dir = Path(image_path), Path(out_dir)
    relative = image_path.name if Path(images_root).is_file() else image_path.relative_to(images_root)
    job = _Job(ImageRecord(path=Path(relative).as_posix(), status="failed", run_key=key), image_path)
    record = job.record
    try:
        paths = output_paths(out_dir, relative)
        record.mask = paths.mask.relative_to(out_dir).as_posix()
        record.overlay = paths.overlay.relative_to(out_dir).as_posix()
        record.content_hash = hashlib.sha256(image_path.read_bytes()).hexdigest()[:16]
    except (OSError, ValueError) as err:
        record.error = f"cannot use this path: {err}"
        return job
    if (previous := _up_to_date(paths, record)) is not None:
        job.record = previous
        return job
    if not job.claim.enter_context(claim(paths.claim)):
        record.status, record.error = "claimed", "another run is segmenting this image"
        return job
    if (previous := _up_to_date(paths, record)) is not None:
        job.release()
        job.record = previous  # the other run finished it just before our claim
        return job
    job.paths = paths
    job.seconds = time.perf_counter() - start
    return job


def _load(segmenter: Segmenter, job: _Job) -> _Job:
    """Decode the image and prepare its windows (the loader thread's part of a run)."""
    if job.paths is None:
        return job
    start = time.perf_counter()
    try:
        job.image = read_image(job.source, segmenter.settings.max_pixels)
        job.prepared = segmenter.prepare(job.image)
    except Exception as err:  # noqa: BLE001 - one image never ends a run; its record keeps why
        job.error = err
    job.seconds += time.perf_counter() - start
    return job


def _segment(segmenter: Segmenter, jobs: list[_Job]) -> list[Segmentation | None]:
    """The model's part: the prepared images of ``jobs`` segmented together, each job's share of
    the time booked to it. Should the shared call fail, each image is tried alone, so the error
    lands on the image that caused it and the others are still done."""
    todo = [job for job in jobs if job.prepared is not None]
    begin = time.perf_counter()
    try:
        results = segmenter.segment_batch([job.prepared for job in todo]) if todo else []
    except Exception:  # noqa: BLE001 - retried one by one below
        results = []
        for job in todo:
            try:
                results.append(segmenter.segment(job.prepared))
            except Exception as err:  # noqa: BLE001 - one image never ends a run
                job.error = err
                results.append(None)
    for job in todo:
        job.seconds += (time.perf_counter() - begin) / len(todo)
    by_job = dict(zip(map(id, todo), results))
    return [by_job.get(id(job)) for job in jobs]


def _finish(segmenter: Segmenter, out_dir: Path, job: _Job, result: Segmentation | None) -> ImageRecord:
    """Write the mask, the overlay and, last, the record, then release the claim (the writer
    thread's part of a run). Raises ``DiskFullError`` when the output filesystem is full."""
    record, paths = job.record, job.paths
    if paths is None:
        return _logged(record)
    start = time.perf_counter()
    try:
        try:
            if job.error is not None:
                raise job.error
            _write_outputs(paths, job.image, result, segmenter.vocab)
            _fill(record, job.image, result, segmenter)
        except Exception as err:  # noqa: BLE001 - one image never ends a run; its record keeps why
            _discard_outputs(paths)
            _stop_if_disk_full(err)
            reason = str(err) if isinstance(err, ImageReadError) else f"{type(err).__name__}: {err}"
            record.error = reason[:ERROR_CHARS]
        record.seconds = round(job.seconds + time.perf_counter() - start, 4)
        try:
            atomic_write(paths.record, json.dumps(record.to_dict()).encode())
        except OSError as err:
            _discard_outputs(paths)  # outputs without their record would be redone anyway
            _stop_if_disk_full(err)
            record.status, record.error = "failed", f"cannot write its record: {err}"[:ERROR_CHARS]
    finally:
        job.release()
    return _logged(record)


def _up_to_date(paths: OutputPaths, record: ImageRecord) -> ImageRecord | None:
    """The previous record, marked skipped, when it is done for the same image bytes and run key."""
    previous = read_record(paths.record)
    if previous and previous.status == "done" and previous.content_hash == record.content_hash \
            and previous.run_key == record.run_key and previous.mask == record.mask and paths.mask.is_file():
        previous.status = "skipped"
        return previous
    return None


def _write_outputs(paths: OutputPaths, image, result: Segmentation, vocab: Vocabulary) -> None:
    write_mask(paths.mask, result.labels, len(vocab))
    write_overlay(paths.overlay, image, result.labels, len(vocab), class_names=vocab.class_names)


def _fill(record: ImageRecord, image, result: Segmentation, segmenter: Segmenter) -> None:
    """Copy what segmentation found into the record and mark it done."""
    record.status = "done"
    record.height, record.width = image.shape[:2]
    record.classes_present = result.classes_present(segmenter.vocab)
    record.pamr = result.pamr
    if result.report is not None:
        record.rp_scores = result.report.rp_scores
        record.removed_classes = result.report.removed
        record.ambiguity_groups = result.report.groups
        record.ap_targets = result.report.ap_targets
        record.ap_fallback_classes = result.report.fallback_classes
        record.ap_texts = segmenter.settings.ap_texts


def _discard_outputs(paths: OutputPaths) -> None:
    """Remove what a failed image left (a mask without its overlay, or older outputs): a failed
    image has no outputs, so nothing half-written can pass for finished work."""
    for path in (paths.mask, paths.overlay):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a directory or an unwritable folder in the way: the record says it failed


def _stop_if_disk_full(err: BaseException) -> None:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(err.errno, f"the output disk is full ({err.strerror})") from err


def _logged(record: ImageRecord) -> ImageRecord:
    if record.status == "failed":
        log.warning("%s failed: %s", record.path, record.error)
    return record


def segment_one(segmenter: Segmenter, image_path: Path, images_root: Path, out_dir: Path,
                key: str | None = None) -> ImageRecord:
    """Segment one image file unless its outputs are up to date or another run has claimed it.

    Never raises for anything about this one image (its record says what went wrong); raises
    ``DiskFullError`` when the output filesystem is full.
    """
    (record,) = segment_files(segmenter, [image_path], images_root, out_dir, key)
    return record


def segment_files(segmenter: Segmenter, image_paths: Sequence[Path], images_root: Path, out_dir: Path,
                  key: str | None = None, wait_for_claims: bool = False) -> list[ImageRecord]:
    """``segment_one`` for a few images at once: those to do share the model calls (the batched
    path of ``segment_folder``, same outputs), each keeps its own claim and record. With
    ``wait_for_claims`` no record comes back "claimed": images another run holds are waited for
    (``wait_for_claimed``)."""
    key = key or run_key(segmenter)
    records = _segment_files_once(segmenter, image_paths, images_root, out_dir, key)
    claimed = [path for path, record in zip(image_paths, records) if record.status == "claimed"]
    if not wait_for_claims or not claimed:
        return records
    settled = {record.path: record for record in wait_for_claimed(segmenter, claimed, images_root, out_dir, key)}
    return [settled.get(record.path, record) for record in records]


def _segment_files_once(segmenter: Segmenter, image_paths: Sequence[Path], images_root: Path, out_dir: Path,
                        key: str) -> list[ImageRecord]:
    jobs: list[_Job] = []
    try:
        for path in image_paths:
            jobs.append(_load(segmenter, _open_job(path, images_root, out_dir, key)))
        results = _segment(segmenter, jobs)
        return [_finish(segmenter, Path(out_dir), job, result) for job, result in zip(jobs, results)]
    finally:
        for job in jobs:
            job.release()


def wait_for_claimed(segmenter: Segmenter, image_paths: Sequence[Path], images_root: Path, out_dir: Path,
                     key: str, on_progress: ProgressCallback | None = None) -> list[ImageRecord]:
    """Settle images another run holds: look again every ``CLAIM_POLL_SECONDS`` until that run
    has recorded each one or its claim went stale (``freecp.claims``; the image is then done
    here). So a run never ends while an image it was asked for is neither recorded nor being
    worked on by a live run."""
    todo, settled = list(image_paths), []
    log.warning("%d images are being segmented by another run on this folder; waiting for it (a claim "
                "whose heartbeat stops for %.0f s is taken over)", len(todo), STALE_SECONDS)
    while todo:
        if on_progress is not None:
            on_progress("waiting for another run", len(settled), len(settled) + len(todo))
        time.sleep(CLAIM_POLL_SECONDS)
        records = _segment_files_once(segmenter, todo, images_root, out_dir, key)
        settled += [record for record in records if record.status != "claimed"]
        todo = [path for path, record in zip(todo, records) if record.status == "claimed"]
    if on_progress is not None:
        on_progress("waiting for another run", len(settled), len(settled))
    return settled


def segment(images: Path, vocab: Vocabulary, out_dir: Path, job: FolderJob | None = None,
            on_progress: ProgressCallback | None = None) -> RunSummary:
    """The Python entry of ``freecp segment``: the segmenter ``job`` asks for, run over ``images``."""
    job = job or FolderJob()
    segmenter = build_segmenter(vocab, job.segment, on_progress=on_progress)
    return segment_folder(segmenter, images, out_dir, on_progress, follow_symlinks=job.follow_symlinks)


def segment_folder(segmenter: Segmenter, images_root: Path, out_dir: Path,
                   on_progress: ProgressCallback | None = None, files: Sequence[Path] | None = None,
                   follow_symlinks: bool = False) -> RunSummary:
    """Segment every image under ``images_root`` (or only ``files``, paths below it, such as a
    benchmark's split) into ``out_dir``, skipping up-to-date ones.

    The settings' ``prefetch`` batches are read ahead, ``batch_images`` images share model
    calls, ``workers`` such calls run at once (torch's threads split between them when the
    segmenter was built, ``freecp.build``) and the outputs are written behind (the steps of ``segment_one``, so the files are the
    same bit for bit); the summary reports the thread policy in force (``freecp.threads``).
    The index is written however the loop ends (finished, interrupted, disk full); the summary
    of an interrupted or stopped run travels on the exception as ``err.summary``. ``on_progress``
    hears of every image finished ("segmenting", done, total).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    search = find_images(images_root, exclude=out_dir, follow_symlinks=follow_symlinks) if files is None \
        else ImageSearch(list(files), [])
    if not search.images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {images_root}")
    prepare_output(out_dir)
    key = run_key(segmenter)
    settings = segmenter.settings
    records: list[ImageRecord] = []
    opened: list[_Job] = []  # every job that may hold a claim, released whatever happens

    def open_and_load(path: Path) -> _Job:
        job = _open_job(path, images_root, out_dir, key)
        opened.append(job)
        return _load(segmenter, job)

    jobs = read_ahead(search.images, open_and_load, settings.prefetch * settings.batch_images * settings.workers)
    segmented = read_ahead(_batches(jobs, settings.batch_images), lambda batch: (batch, _segment(segmenter, batch)),
                           depth=settings.workers - 1, threads=settings.workers, name="freecp-model")
    try:
        with WriteBehind(2 * settings.batch_images) as writer:
            pending: deque[Future[ImageRecord]] = deque()

            def collect(block: bool) -> None:
                """Take finished records in order (all of them when ``block``); a full disk
                raises here, in the run's thread."""
                while pending and (block or pending[0].done()):
                    records.append(pending.popleft().result())
                    if on_progress is not None:
                        on_progress("segmenting", len(records), len(search.images))

            for batch, results in segmented:
                for job, result in zip(batch, results):
                    pending.append(writer.submit(_finish, segmenter, out_dir, job, result))
                collect(block=False)
            collect(block=True)
        if claimed := [job.source for job in opened if job.record.status == "claimed"]:
            records = [record for record in records if record.status != "claimed"] + \
                wait_for_claimed(segmenter, claimed, images_root, out_dir, key, on_progress)
    except BaseException as err:
        err.summary = RunSummary(  # type: ignore[attr-defined]
            records=records, index=write_index_if_possible(out_dir, records), seconds=time.perf_counter() - start,
            threads=current_policy(), outside_links=search.outside_links)
        raise
    finally:
        segmented.close()  # waits for model calls under way
        jobs.close()  # stops the loader thread before the claims it took are released
        for job in opened:
            job.release()
    return RunSummary(records=records, index=write_index(out_dir, records), seconds=time.perf_counter() - start,
                      threads=current_policy(), outside_links=search.outside_links)


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
