"""The ``segment-images`` flow: segment every new image of a folder (the nightly job).

Incremental by construction: ``segment_files`` skips an image whose outputs exist for the same
image content and run key (model, vocabulary, embeddings, settings hash), so a re-run does only
new or changed images and a run killed halfway redoes only what is missing. The tasks (``batch_images``
images each) run on a thread pool, or on a Dask cluster when ``dask_address`` is given; either way each
process loads the model once (``freecp.flows.segmenters``). Tasks return small record dicts; masks go
to ``out`` and are never Prefect results.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import flow, get_run_logger, task
from prefect.exceptions import FailedRun
from prefect.runtime import task_run
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from freecp.flows.hints import prefect_wording
from freecp.flows.logs import LIBRARY_LOG_HOOKS, library_logs
from freecp.flows.params import with_job_parameters_of
from freecp.flows.report import publish_segment_report
from freecp.flows.retry import transient_failure
from freecp.flows.segmenters import SegmenterSpec, segmenter_for
from freecp.flows.vocabulary import VocabSource, load_vocabulary_task
from freecp import inputs, pipeline
from freecp.jobs import FolderJob
from freecp.device import check_device, parse_device
from freecp.layout import prepare_output
from freecp.records import ImageRecord, write_index_if_possible
from freecp.threads import current_policy

PARTLY_FAILED = "Partly failed"  # the state name of a run where some images failed and the rest were done
DISK_FULL = "Disk full"  # the state name of a run the output disk stopped


class _QuietPartlyFailed(logging.Filter):
    """Drop the engine's traceback for a run that ended "Partly failed" or "Disk full".

    A flow that returns a Failed state makes the engine raise ``FailedRun`` from that state and log
    it with a traceback ("Engine execution exited with unexpected exception") in the worker and
    the UI. For these runs that traceback says nothing: the run's own error lines and its state
    message say what was done and what stopped it. Other failures keep their tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, FailedRun) and str(error).startswith((f"{PARTLY_FAILED}:", f"{DISK_FULL}:")))


logging.getLogger("prefect.flow_runs").addFilter(_QuietPartlyFailed())


def _absolute(location: str | None) -> str | None:
    """Local paths made absolute, so Dask workers in other directories find the same files."""
    if location is None or urlparse(location).scheme not in ("", "file"):
        return location
    return str(Path(location).expanduser().resolve())


def task_runner_for(dask_address: str | None, threads: int) -> TaskRunner:
    """Threads in the flow's process by default; a Dask cluster when its scheduler address is given."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=threads)


@task(name="prepare-segmenter", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient_failure,
      cache_policy=NO_CACHE, persist_result=False)
def prepare_segmenter(spec: SegmenterSpec) -> None:
    """Build the segmenter once before fanning out: bad settings or a bad store fail here, and
    texts the store lacks are encoded by this one process (unless the job says no_encode), not
    by every worker."""
    check_device(spec.job.clip.device)
    with prefect_wording():
        segmenter_for(spec, encode_missing=not spec.job.no_encode)
    get_run_logger().info("thread policy: %s", current_policy().line())


@task(name="find-images", cache_policy=NO_CACHE, persist_result=False)
def find_images(images: str, out: str, follow_symlinks: bool, batch_images: int) -> list[list[str]]:
    """The images to do, in groups of ``batch_images`` (one task each); also makes ``out`` a
    current-layout output folder (see ``freecp.layout``)."""
    search = inputs.find_images(Path(images), exclude=Path(out), follow_symlinks=follow_symlinks)
    prepare_output(Path(out))
    logger = get_run_logger()
    logger.info("%d images under %s, %d per task", len(search.images), images, batch_images)
    for link in search.outside_links:
        logger.warning("not following %s: the symlink leads outside %s", link, images)
    paths = [str(p) for p in search.images]
    return [paths[start:start + batch_images] for start in range(0, len(paths), batch_images)]


def _batch_run_name() -> str:
    images = task_run.parameters["images"]
    return f"segment {Path(images[0]).name}" + (f" and {len(images) - 1} more" if len(images) > 1 else "")


@task(name="segment-images", task_run_name=_batch_run_name, retries=1, retry_delay_seconds=10,
      retry_condition_fn=transient_failure, cache_policy=NO_CACHE, persist_result=False)
def segment_images_task(images: list[str], images_root: str, out: str, spec: SegmenterSpec) -> list[dict[str, Any]]:
    """A few images through the model together (``pipeline.segment_files``: same outputs as one
    by one; each image keeps its claim, its up-to-date check and its own failure record)."""
    with library_logs():  # this task may run in a Dask worker, where the flow's routing is not
        records = pipeline.segment_files(segmenter_for(spec), [Path(p) for p in images], Path(images_root),
                                         Path(out), wait_for_claims=True)
    logger = get_run_logger()
    for record in records:
        if record.status == "failed":
            logger.error("%s failed: %s", record.path, record.error)
        elif record.status == "skipped":
            logger.info("%s is up to date", record.path)
        else:
            logger.info("%s done in %.2f s: %s", record.path, record.seconds, ", ".join(record.classes_present))
    return [record.to_dict() for record in records]


@flow(name="segment-batch", persist_result=False, validate_parameters=False)
def segment_batch(images_root: str, out: str, spec: SegmenterSpec, follow_symlinks: bool) -> dict[str, Any]:
    """The fan-out, as a subflow so that its task runner can be chosen per run. The image list
    is made here, not passed in, so that a large folder does not become a huge flow parameter.
    Returns the records and, when the output disk filled up, ``disk_full``: its message (the
    tasks that finished before keep their records; the run then ends "Disk full")."""
    try:
        groups = find_images(images_root, out, follow_symlinks, spec.settings.batch_images)
    except pipeline.DiskFullError as err:  # full before the first image
        return {"records": [], "disk_full": err.strerror or str(err)}
    futures = segment_images_task.map(groups, images_root, out, spec)
    records, disk_full = [], ""
    for future in futures:
        try:
            records += future.result()
        except pipeline.DiskFullError as err:
            disk_full = err.strerror or str(err)
    return {"records": records, "disk_full": disk_full}


@task(name="write-index", cache_policy=NO_CACHE, persist_result=False)
def write_index(out: str, records: list[dict[str, Any]]) -> str | None:
    """The index of every record in ``out`` (None where the disk cannot take it)."""
    return _index_or_none(out, [ImageRecord(**r) for r in records])


def _index_or_none(out: str, records: list[ImageRecord]) -> str | None:
    index = write_index_if_possible(Path(out), records)
    return None if index is None else str(index)


@flow(name="segment-images", **LIBRARY_LOG_HOOKS)
@with_job_parameters_of(exclude={"workers"}, job=FolderJob)  # the flow's threads or Dask workers play that part
def segment_images(images: str, vocab: VocabSource, out: str, *, job: FolderJob, threads: int = 2,
                   dask_address: str | None = None) -> State:
    """Segment the images under ``images`` that have no up-to-date outputs in ``out``.

    The other parameters are the options of ``freecp segment`` (``freecp.jobs.FolderJob``);
    settings left as None take the vocabulary's preset; ``batch_images`` images share a task
    and the model's calls. ``threads`` sizes the thread pool (torch threads are split between
    its segmenters, ``freecp.threads``); ``dask_address`` (``tcp://host:8786``) sends the work
    to that Dask cluster instead. If any image failed the run ends in a Failed state named
    "Partly failed" whose message lists every failed image with its reason (each is also an
    error line in the run's log); the others are still segmented and indexed. Failures of one
    image are never retried: they are records, not task failures. A full output disk ends the
    run in a Failed state named "Disk full" (finished images and the index are kept, as with
    ``freecp segment``); a cancelled run (SIGTERM) writes the index before it ends.
    """
    vocabulary = load_vocabulary_task(vocab)
    segment = job.segment
    settings = segment.overrides.settings(vocabulary.name)
    logger = get_run_logger()
    logger.info("settings %s (hash %s)", settings.to_dict(), settings.content_hash)
    if segment.clip.weights.random:
        logger.warning("random CLIP weights: the masks are meaningless (tests and plumbing checks only)")
    clip = replace(segment.clip, clip_checkpoint=_absolute(segment.clip.clip_checkpoint),
                   device=parse_device(segment.clip.device))
    spec = SegmenterSpec(vocab=vocabulary, job=replace(segment, clip=clip, store=_absolute(segment.store)),
                         settings=settings, threads=1 if dask_address else threads)
    images_root, out_dir = _absolute(images), _absolute(out)
    prepare_segmenter(spec)
    batch = segment_batch.with_options(task_runner=task_runner_for(dask_address, threads))
    try:
        outcome = batch(images_root, out_dir, spec, job.follow_symlinks)
    except BaseException:  # cancelled (SIGTERM) or crashed: the index still says what was done
        _index_or_none(out_dir, [])
        raise
    records = outcome["records"]
    index = write_index(out_dir, records) or "NOT written (the disk is full)"
    totals = publish_segment_report(records, images_root, index)
    message = f"{totals.line()}; index {index}"
    if outcome["disk_full"]:
        text = (f"{DISK_FULL}: {outcome['disk_full']}; the run stopped. {message}. Finished images are kept; "
                f"free some space and run again to do the rest")
        logger.error(text)
        return Failed(name=DISK_FULL, message=text)
    if totals.failures:
        listed = "; ".join(f"{path}: {error}" for path, error in totals.failures)
        logger.error("%s: %s. Failed images: %s", PARTLY_FAILED, message, listed)
        return Failed(name=PARTLY_FAILED, message=f"{PARTLY_FAILED}: {message}. Failed images: {listed}")
    return Completed(message=message, data={s: totals.counts[s] for s in ("done", "skipped", "failed")})
