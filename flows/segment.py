"""The ``segment-images`` flow: segment every new image of a folder (the nightly job).

Incremental by construction: ``segment_one`` skips an image whose outputs exist for the same
image content and run key (model, vocabulary, embeddings, settings hash), so a re-run does only
new or changed images and a run killed halfway redoes only what is missing. The per-image tasks
run on a thread pool, or on a Dask cluster when ``dask_address`` is given; either way each
process loads the model once (``freecp.flows.segmenters``). Tasks return small record dicts; masks go
to ``out`` and are never Prefect results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import flow, get_run_logger, task
from prefect.exceptions import FailedRun
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from freecp.flows.hints import prefect_wording
from freecp.flows.logs import LIBRARY_LOG_HOOKS
from freecp.flows.report import count_statuses, publish_segment_report
from freecp.flows.retry import transient_failure
from freecp.flows.segmenters import SegmenterSpec, segmenter_for, thread_policy
from freecp.flows.vocabulary import VocabSource, load_vocabulary_task
from freecp import inputs, pipeline
from freecp.defaults import DEFAULT_STORE
from freecp.device import check_device, parse_device
from freecp.layout import prepare_output
from freecp.settings import settings_for

PARTLY_FAILED = "Partly failed"  # the state name of a run where some images failed and the rest were done


class _QuietPartlyFailed(logging.Filter):
    """Drop the engine's traceback for a run that ended "Partly failed".

    A flow that returns a Failed state makes the engine raise ``FailedRun`` from that state and log
    it with a traceback ("Engine execution exited with unexpected exception") in the worker and
    the UI. For a partly failed run that traceback says nothing: the run's own error lines and
    its state message list the failed images and reasons. Other failures keep their tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, FailedRun) and str(error).startswith(f"{PARTLY_FAILED}:"))


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
def prepare_segmenter(spec: SegmenterSpec, encode: bool) -> None:
    """Build the segmenter once before fanning out: bad settings or a bad store fail here, and
    texts the store lacks are encoded by this one process, not by every worker."""
    check_device(spec.device)
    get_run_logger().info("thread policy: %s", thread_policy(spec).line())
    with prefect_wording():
        segmenter_for(spec, encode_missing=encode)


@task(name="find-images", cache_policy=NO_CACHE, persist_result=False)
def find_images(images: str, out: str, follow_symlinks: bool) -> list[str]:
    """The images to do; also makes ``out`` a current-layout output folder (see ``freecp.layout``)."""
    search = inputs.find_images(Path(images), exclude=Path(out), follow_symlinks=follow_symlinks)
    prepare_output(Path(out))
    logger = get_run_logger()
    logger.info("%d images under %s", len(search.images), images)
    for link in search.outside_links:
        logger.warning("not following %s: the symlink leads outside %s", link, images)
    return [str(p) for p in search.images]


@task(name="segment-image", task_run_name="segment {image}", retries=1, retry_delay_seconds=10,
      retry_condition_fn=transient_failure, cache_policy=NO_CACHE, persist_result=False)
def segment_image(image: str, images_root: str, out: str, spec: SegmenterSpec) -> dict[str, Any]:
    record = pipeline.segment_one(segmenter_for(spec), Path(image), Path(images_root), Path(out))
    logger = get_run_logger()
    if record.status == "failed":
        logger.error("%s failed: %s", record.path, record.error)
    elif record.status == "skipped":
        logger.info("%s is up to date", record.path)
    elif record.status == "claimed":
        logger.info("%s is being segmented by another run", record.path)
    else:
        logger.info("%s done in %.2f s: %s", record.path, record.seconds, ", ".join(record.classes_present))
    return record.to_dict()


@flow(name="segment-batch", persist_result=False, validate_parameters=False)
def segment_batch(images_root: str, out: str, spec: SegmenterSpec, follow_symlinks: bool) -> list[dict[str, Any]]:
    """The fan-out, as a subflow so that its task runner can be chosen per run. The image list
    is made here, not passed in, so that a large folder does not become a huge flow parameter."""
    futures = segment_image.map(find_images(images_root, out, follow_symlinks), images_root, out, spec)
    return [future.result() for future in futures]


@task(name="write-index", cache_policy=NO_CACHE, persist_result=False)
def write_index(out: str, records: list[dict[str, Any]]) -> str:
    return str(pipeline.write_index(Path(out), [pipeline.ImageRecord(**r) for r in records]))


@flow(name="segment-images", **LIBRARY_LOG_HOOKS)
def segment_images(
    images: str,
    vocab: VocabSource,
    out: str,
    store: str = DEFAULT_STORE,
    model: str = "ViT-B-16",
    pretrained: str = "openai",
    clip_checkpoint: str | None = None,
    backbone: str = "sclip",
    protocol: str = "freecp",
    purify: bool = True,
    redundancy: bool | None = None,
    ambiguity: bool | None = None,
    scope: str | None = None,
    rp_threshold: float | None = None,
    ap_threshold: float | None = None,
    sc_formula: str | None = None,
    short_side: int | None = None,
    window: int | None = None,
    stride: int | None = None,
    window_batch: int | None = None,
    precision: str | None = None,
    max_pixels: int | None = None,
    no_encode: bool = False,
    device: str = "cpu",
    threads: int = 2,
    dask_address: str | None = None,
    follow_symlinks: bool = False,
) -> State:
    """Segment the images under ``images`` that have no up-to-date outputs in ``out``.

    Parameters are those of ``freecp segment``; settings left as None take the vocabulary's
    preset. ``threads`` sizes the thread pool (torch threads are split between its segmenters,
    ``freecp.threads``); ``dask_address`` (``tcp://host:8786``) sends the
    per-image work to that Dask cluster instead. If any image failed the run ends in a Failed
    state named "Partly failed" whose message lists every failed image with its reason (each is
    also an error line in the run's log); the others are still segmented and indexed. Failures
    of one image are never retried: they are records, not task failures.
    """
    vocabulary = load_vocabulary_task(vocab)
    settings = settings_for(
        vocabulary.name, variant=backbone, protocol=protocol, purify=purify, redundancy=redundancy,
        ambiguity=ambiguity, scope=scope, rp_threshold=rp_threshold, ap_threshold=ap_threshold,
        sc_formula=sc_formula, short_side=short_side, window=window, stride=stride,
        window_batch=window_batch, precision=precision, max_pixels=max_pixels,
    )
    logger = get_run_logger()
    logger.info("settings %s (hash %s)", settings.to_dict(), settings.content_hash)
    if clip_checkpoint is None and pretrained.lower() in ("none", "random"):
        logger.warning("random CLIP weights: the masks are meaningless (tests and plumbing checks only)")
    spec = SegmenterSpec(vocab=vocabulary, model=model, pretrained=pretrained,
                         clip_checkpoint=_absolute(clip_checkpoint), store=_absolute(store),
                         device=parse_device(device), settings=settings,
                         threads=1 if dask_address else threads)
    images_root, out_dir = _absolute(images), _absolute(out)
    prepare_segmenter(spec, encode=not no_encode)
    batch = segment_batch.with_options(task_runner=task_runner_for(dask_address, threads))
    records = batch(images_root, out_dir, spec, follow_symlinks)
    index = write_index(out_dir, records)
    publish_segment_report(records, images_root, index)
    counts = count_statuses(records)
    message = f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; index {index}"
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        listed = "; ".join(f"{r['path']}: {r['error']}" for r in failed)
        logger.error("%s: %s. Failed images: %s", PARTLY_FAILED, message, listed)
        return Failed(name=PARTLY_FAILED, message=f"{PARTLY_FAILED}: {message}. Failed images: {listed}")
    return Completed(message=message, data=counts)
