"""One segmenter per worker process, built on first use and kept for every later image.

Loading the CLIP model and reading the embedding store costs seconds; segmenting one image
costs less. Tasks therefore carry a small, hashable ``SegmenterSpec`` instead of a model, and
each process (the flow's own process for the thread runner, every Dask worker process for the
Dask runner) builds the segmenter for a spec once. This module must be imported by name
(``freecp.flows.segmenters``) so that the cache is shared by every task a process runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from freecp import pipeline
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.vocab import Vocabulary

MAX_SEGMENTERS = 2  # a long-lived Dask worker may serve a few deployments; keep memory bounded


@dataclass(frozen=True)
class SegmenterSpec:
    """Everything a segmenter is built from; equal specs share one segmenter in a process."""

    vocab: Vocabulary
    model: str
    pretrained: str | None
    clip_checkpoint: str | None
    store: str | None
    device: str
    settings: SegmentSettings


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
            segmenter = pipeline.build_segmenter(
                spec.vocab,
                model=spec.model,
                pretrained=spec.pretrained,
                clip_checkpoint=spec.clip_checkpoint,
                store=spec.store,
                device=spec.device,
                settings=spec.settings,
                encode_missing=encode_missing,
            )
            _builds += 1
            _segmenters[spec] = segmenter
            while len(_segmenters) > MAX_SEGMENTERS:
                _segmenters.popitem(last=False)
        else:
            _segmenters.move_to_end(spec)
        return segmenter


def builds() -> int:
    """How many segmenters this process has built (what the scale-out test checks per worker)."""
    return _builds
