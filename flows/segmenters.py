"""One segmenter per worker process, built on first use and kept for every later image.

Loading the CLIP model and reading the embedding store costs seconds; segmenting one image
costs less. Tasks therefore carry a small, hashable ``SegmenterSpec`` instead of a model, and
each process (the flow's own process for the thread runner, every Dask worker process for the
Dask runner) builds the segmenter for a spec once. This module must be imported by name
(``freecp.flows.segmenters``) so that the cache is shared by every task a process runs.

Each build sets the process's thread policy (``freecp.build``, ``freecp.threads``): as many
segmenters run at once as the thread pool has threads, or as all Dask workers on the host have,
and together they never ask torch for more threads than the cores. On a multi-GPU host, ``device="cuda"`` gives
each Dask worker its own GPU, so every GPU holds one model.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from freecp.build import build_segmenter
from freecp.jobs import SegmentJob
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.vocab import Vocabulary

MAX_SEGMENTERS = 2  # a long-lived Dask worker may serve a few deployments; keep memory bounded


@dataclass(frozen=True)
class SegmenterSpec:
    """Everything a segmenter is built from; equal specs share one segmenter in a process."""

    vocab: Vocabulary
    job: SegmentJob       # the model, the store (paths made absolute by the flow)
    settings: SegmentSettings
    threads: int = 1      # segmenters this process runs at once (the flow's thread pool size)


_lock = threading.Lock()
_segmenters: OrderedDict[SegmenterSpec, Segmenter] = OrderedDict()
_builds = 0


def segmenter_for(spec: SegmenterSpec, *, encode_missing: bool = False) -> Segmenter:
    """This process's segmenter for ``spec``; built (and counted) only the first time.

    The lock is held while building so that threads asking at the same moment wait for one
    build instead of each loading the model.
    """
    global _builds
    with _lock:
        segmenter = _segmenters.get(spec)
        if segmenter is None:
            worker, host_threads = _dask_worker()
            device = spec.job.clip.device
            clip = replace(spec.job.clip, device=device_for_worker(device, worker, _cuda_devices(device)))
            job = replace(spec.job, clip=clip, no_encode=not encode_missing)
            segmenter = build_segmenter(spec.vocab, job, spec.settings, concurrent=host_threads or spec.threads)
            _builds += 1
            _segmenters[spec] = segmenter
            while len(_segmenters) > MAX_SEGMENTERS:
                _segmenters.popitem(last=False)
        else:
            _segmenters.move_to_end(spec)
        return segmenter


def device_for_worker(device: str, worker: str | None, gpus: int) -> str:
    """The device a worker's model goes on: plain ``cuda`` on a host with several visible GPUs
    becomes ``cuda:<worker index mod GPUs>``; anything else is kept. The index is the worker's
    name when that is a number or ends in ``-<number>`` (LocalCluster, ``dask worker --nworkers``),
    else a stable hash of the name. A worker that sees one GPU (dask-cuda sets
    ``CUDA_VISIBLE_DEVICES`` per worker) keeps ``cuda``."""
    if device != "cuda" or gpus <= 1 or worker is None:
        return device
    number = re.search(r"(?:^|-)(\d+)$", worker)
    index = int(number.group(1)) if number else zlib.crc32(worker.encode())
    return f"cuda:{index % gpus}"


def _dask_worker() -> tuple[str | None, int | None]:
    """This Dask worker's name and the threads of all workers on its host, or (None, None)."""
    try:
        from distributed import get_client, get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None, None
    host = urlparse(worker.address).hostname
    workers = get_client().scheduler_info()["workers"].values()
    host_threads = sum(int(w["nthreads"]) for w in workers if w.get("host") == host)
    return str(worker.name), max(host_threads, int(worker.state.nthreads))


def _cuda_devices(device: str) -> int:
    """GPUs this process sees (CUDA_VISIBLE_DEVICES applies); 0 when the device is not CUDA."""
    if device != "cuda":
        return 0
    import torch

    return torch.cuda.device_count()


def builds() -> int:
    """How many segmenters this process has built (what the scale-out test checks per worker)."""
    return _builds
