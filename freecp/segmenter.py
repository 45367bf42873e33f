"""The object a user holds: built once from a backbone and text embeddings, then ``segment(image)``.

This module is the method and little else (ALGORITHM.md sections 2-6); ``_stages`` runs it on one
image: prepare (resize, normalise, sliding windows) -> dense pass (attention captured) -> CAM ->
refinement -> redundancy purification (RP) -> ambiguity purification (AP, the crops of all groups
in one batch) -> composition of the surviving maps (refined with PAMR when the settings ask) ->
label map at the original size, and the purification report.

The steps live in small modules: ``windows`` (input, windows, crops), ``cam``, ``refine``,
``purify``, ``scopes`` (per-window or per-image purification, chosen once), ``compose``,
``report``, and ``model_calls``, which serves the model calls of several images together:
``segment_batch`` runs the same stages for several images at once, with the windows of all of
them sharing backbone calls and their AP crops sharing one crop-encoder call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch

from freecp.ap_texts import for_ap_texts
from freecp.backbones import Backbone, check_backbone
from freecp.cam import class_maps, global_minmax, query_softmax, select_classes
from freecp.clip.text import ClassEmbeddings
from freecp.compose import canvas, final_labels
from freecp.model_calls import Call, ModelCall, Stages, StageTimer, model_precision, run_together, serve
from freecp.purify import AmbiguityGroup, resolve_groups
from freecp.refine import affinity_transition, refine
from freecp.report import PurificationReport, describe_ap_targets, purification_report
from freecp.scopes import boxes_in_original, scope_for, zero_losers
from freecp.settings import SegmentSettings
from freecp.trace import SegmentTrace, scatter_columns
from freecp.vocab import Vocabulary
from freecp.windows import CLIP_MEAN, CLIP_STD, PreparedImage, cut_windows, normalise, preprocess

__all__ = ["CLIP_MEAN", "CLIP_STD", "PreparedImage", "PurificationReport", "Segmentation", "Segmenter",
           "check_backbone"]


@dataclass
class Segmentation:
    """Result of ``Segmenter.segment``."""

    labels: np.ndarray                # [H, W] int32, class index in vocabulary order
    class_scores: np.ndarray          # [K] float32, each class's peak composed score
    report: PurificationReport | None  # None when purification is off
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    pamr: str = "off"                 # PAMR: "off", "applied", or "skipped: <why>" (maps left as they were)

    def classes_present(self, vocab: Vocabulary) -> list[str]:
        names = vocab.class_names
        return [names[i] for i in np.unique(self.labels) if i < len(names)]


class Segmenter:
    """Dense CLIP segmentation with FreeCP purification. Build once; segment many images."""

    def __init__(self, backbone: Backbone, vocab: Vocabulary, embeddings: ClassEmbeddings,
                 settings: SegmentSettings | None = None) -> None:
        self.backbone = backbone
        self.vocab = vocab
        self.settings = settings or SegmentSettings()
        check_backbone(backbone, self.settings)
        if len(embeddings.query_class) != len(vocab.queries):
            raise ValueError("text embeddings do not match the vocabulary's names")
        self.embeddings = embeddings = for_ap_texts(embeddings, vocab, self.settings.ap_texts, backbone)
        self.foreground = torch.tensor(vocab.foreground_indices)
        self.crop_targets = embeddings.crop_targets(len(vocab))  # what AP scores crops against
        self.fallback_classes = [vocab.class_names[k] for k in vocab.foreground_indices
                                 if not bool(embeddings.described[k])]
        self.ap_targets = describe_ap_targets(self.settings.ap_texts, len(self.fallback_classes),
                                              len(vocab.foreground_indices))
        self.scope = scope_for(self.settings)  # per window or per image, chosen here once

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """Resize, normalise and cut an HxWx3 uint8 RGB image into windows (no model involved)."""
        start = time.perf_counter()
        s = self.settings
        windows = cut_windows(preprocess(image, s.short_side), self.backbone.patch_size, s.window, s.stride)
        guide = normalise(image) if s.pamr else None
        return PreparedImage(tuple(image.shape[:2]), windows, time.perf_counter() - start, guide)

    def segment(self, image: np.ndarray | PreparedImage, trace: SegmentTrace | None = None) -> Segmentation:
        """Label an HxWx3 uint8 RGB image; the label map has the image's own size.

        ``trace``, when given, is filled with every per-window stage (see ``freecp.trace``).
        """
        return self.segment_batch([image], [trace])[0]

    def segment_batch(self, images: Sequence[np.ndarray | PreparedImage],
                      traces: Sequence[SegmentTrace | None] | None = None) -> list[Segmentation]:
        """Segment several images at once; each result equals ``segment`` of that image alone.

        Every image runs ``_stages``, which pauses where it needs the model; the pending calls of
        all images are served together (``freecp.model_calls``): all windows (grouped by shape) in
        calls of ``window_batch``, all AP crops in one call. ``traces`` (one per image, or None)
        are filled as ``segment``'s.
        """
        traces = list(traces) if traces is not None else [None] * len(images)
        runs = [self._stages(image, trace) for image, trace in zip(images, traces, strict=True)]
        s = self.settings
        return run_together(runs, lambda calls: serve(calls, self.backbone, s.window_batch, s.precision))

    def model_precision(self) -> AbstractContextManager:
        """The context model calls run in: half-precision autocast when ``precision`` asks for it."""
        return model_precision(self.backbone, self.settings.precision)

    def _stages(self, image: np.ndarray | PreparedImage,
                trace: SegmentTrace | None = None) -> Stages[Segmentation]:
        """One image through the method; ``yield`` hands a model call to ``segment_batch``."""
        timer = StageTimer()
        s = self.settings
        prepared = image if isinstance(image, PreparedImage) else self.prepare(image)
        timer.add("input", prepared.seconds)
        windows, original = prepared.windows, prepared.size
        if trace is not None:
            trace.windows, trace.origins = windows.pixels, windows.origins
        dense = yield ModelCall(Call.DENSE, windows.pixels)
        timer.add("backbone", dense.seconds)
        features, attention = dense.value
        with timer("cam"):
            probs = query_softmax(features, self.embeddings.queries, self.backbone.logit_scale)
            cams = class_maps(probs, self.embeddings.query_class, len(self.vocab))
        if not s.purify:
            with timer("compose"):
                labels, scores, pamr = final_labels(cams, torch.arange(len(self.vocab)), prepared, len(self.vocab),
                                                    background_from_max=False, settings=s)
            return Segmentation(labels, scores, None, dict(timer.seconds), pamr)

        fg_cams = select_classes(cams, self.foreground)
        with timer("refine"):
            normalized = global_minmax(fg_cams, bounds_from=probs)  # bounds over ALL queries, as the reference
            refined = refine(normalized, affinity_transition(attention), s.box_threshold,
                             reference_order=s.float_order == "reference")
        with timer("rp"):
            rp_scores = self.scope.consistency(fg_cams, refined)
            keep = rp_scores > s.rp_threshold if s.redundancy else torch.ones_like(rp_scores, dtype=torch.bool)
            survivors = keep.any(dim=0)
            maps = (refined * keep[:, :, None, None])[:, survivors]  # RP shrinks K for all that follows
            classes = self.foreground[survivors]
        if trace is not None:
            trace.attention, trace.query_softmax = attention, probs.permute(0, 3, 1, 2)
            trace.normalized, trace.refined = normalized, refined
            trace.rp_scores, trace.rp_keep = rp_scores, keep
            trace.after_rp = scatter_columns(maps, survivors, len(self.foreground))
        groups: list[AmbiguityGroup] = []
        if s.ambiguity and len(classes) > 1:
            with timer("ap"):
                plan = self.scope.plan(maps, classes, windows, self.backbone.patch_size, trace is not None)
            embedded = self.crop_targets[:0]
            if plan.crops:
                encoded = yield ModelCall(Call.CROPS, torch.stack(plan.crops))
                timer.add("ap", encoded.seconds)
                embedded = encoded.value
            with timer("ap"):
                groups = resolve_groups(plan.groups, embedded, self.crop_targets, self.backbone.logit_scale,
                                        plan.crop_counts)
                maps = zero_losers(maps, classes, groups, self.scope)
        if trace is not None:
            trace.after_ap, trace.groups = scatter_columns(maps, survivors, len(self.foreground)), groups
        with timer("compose"):
            labels, scores, pamr = final_labels(maps, classes, prepared, len(self.vocab), self.vocab.has_background, s)
        if trace is not None:
            trace.scores, trace.score_classes = canvas(maps, windows, original), classes
        alive = classes[maps.flatten(2).amax(dim=-1).amax(dim=0) > 0]
        report = purification_report(
            self.vocab.class_names, self.foreground.tolist(), rp_scores, survivors, alive, groups,
            boxes_in_original(groups, self.scope, windows, self.backbone.patch_size, original),
            self.ap_targets, self.fallback_classes)
        return Segmentation(labels, scores, report, dict(timer.seconds), pamr)
