"""The object a user holds: built once from a backbone and text embeddings, then ``segment(image)``.

One call runs the whole method on one image (ALGORITHM.md sections 2-6):
resize and normalise -> sliding windows -> one batched dense forward (attention captured) ->
CAM -> refinement -> redundancy purification -> ambiguity purification (crops of all groups in
one batch) -> composition of the surviving maps (refined with PAMR when the settings ask) -> label
map at the original size.
``segment_batch`` runs the same stages for several images at once, with the windows of all of
them sharing backbone calls and their AP crops sharing one crop-encoder call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from freecp.ap_texts import for_ap_texts
from freecp.backbones import Backbone
from freecp.cam import class_maps, global_minmax, query_softmax, select_classes
from freecp.clip.text import ClassEmbeddings
from freecp.pamr import local_affinity, propagate
from freecp.purify import AmbiguityGroup, plan_ambiguity, resolve_groups, self_consistency
from freecp.refine import affinity_transition, refine
from freecp.settings import SegmentSettings
from freecp.trace import SegmentTrace, scatter_columns
from freecp.vocab import Vocabulary

CLIP_MEAN = torch.tensor([122.771, 116.746, 104.094]).view(3, 1, 1)
CLIP_STD = torch.tensor([68.501, 66.632, 70.323]).view(3, 1, 1)
MAX_LONG_SIDE = 2048
COMPOSE_CHUNK = 32  # classes composed at full resolution at a time (bounds memory for big vocabularies)
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # --precision fp32 runs without autocast


@dataclass
class PurificationReport:
    """What purification decided for one image, for people to read and records to store."""

    rp_scores: dict[str, float]       # per foreground class: best self-consistency over windows
    kept: list[str]                   # survived redundancy purification somewhere
    removed: list[str]                # purged by RP or AP everywhere: never in the output
    groups: list[dict]                # ambiguity groups: members, boxes (x0, y0, x1, y1 in original
                                      # image pixels), winners, window index
    ap_targets: str                   # which text embeddings AP scored crops against
    fallback_classes: list[str]       # classes AP had to score by class name (no descriptions)


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


@dataclass
class _Windows:
    """The sliding windows of one resized image: a full grid of row starts x column starts."""

    image: torch.Tensor               # [3, H, W] the resized, normalised image (padded, see valid)
    pixels: torch.Tensor              # [B, 3, wh, ww] its windows, row-major over (rows, cols)
    rows: list[int]                   # y0 of each window row in the resized image
    cols: list[int]                   # x0 of each window column
    valid: tuple[int, int]            # the resized image's own size; beyond it is padding

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.image.shape[-2:])

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.rows for x in self.cols]


@dataclass
class PreparedImage:
    """An image resized, normalised and cut into windows (``Segmenter.prepare``): all the input
    work, which a loader thread can do while the model runs on the previous image."""

    size: tuple[int, int]             # the original image's (height, width)
    windows: _Windows
    seconds: float                    # time the preparation took
    guide: torch.Tensor | None = None  # [3, H, W] the normalised image at its own size, for PAMR


@dataclass
class _ModelCall:
    """What one image's stages need from the model next: ``kind`` is "dense" (windows) or
    "crops"; the time of the shared call is booked to ``stage`` of ``timer``, pro rata."""

    kind: str
    pixels: torch.Tensor              # [n, 3, h, w]
    timer: "_StageTimer"
    stage: str


# What a backbone is built to compute that the settings also name (and the run key hashes).
BACKBONE_SETTINGS = ("variant", "protocol", "float_order")


def check_backbone(backbone: Backbone, settings: SegmentSettings) -> None:
    """ValueError, in one line, when the backbone computes another variant, protocol or float
    order than the settings name: the run key hashes the settings, so they must be what runs.
    Stand-in backbones without these attributes are taken as they are."""
    wrong = [(name, getattr(backbone, name), getattr(settings, name)) for name in BACKBONE_SETTINGS
             if getattr(backbone, name, getattr(settings, name)) != getattr(settings, name)]
    if wrong:
        differences = "; ".join(f"{name.replace('_', ' ')} {have!r}, the settings ask for {want!r}"
                                for name, have, want in wrong)
        fix = ", ".join(f"{name}={want!r}" for name, _, want in wrong)
        raise ValueError(f"the backbone runs {differences}: load it with {fix}")


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
        self.crop_targets = embeddings.crop_targets(len(vocab))
        missing = [vocab.class_names[k] for k in vocab.foreground_indices
                   if not bool(embeddings.described[k])]
        self.fallback_classes = missing
        kind = "random-word descriptor" if self.settings.ap_texts == "random" else "description"
        if self.settings.ap_texts == "names":
            self.ap_targets = "class names (ap-texts names)"
        elif len(missing) == len(vocab.foreground_indices):
            self.ap_targets = f"class names (no {kind} embeddings)"
        elif missing:
            self.ap_targets = f"{kind}s; class names for {len(missing)} classes without any"
        else:
            self.ap_targets = f"{kind}s"

    # ------------------------------------------------------------------ public
    def prepare(self, image: np.ndarray) -> PreparedImage:
        """Resize, normalise and cut an HxWx3 uint8 RGB image into windows (no model involved)."""
        start = time.perf_counter()
        windows = self._windows(self._preprocess(image))
        guide = _normalise(image) if self.settings.pamr else None
        return PreparedImage(tuple(image.shape[:2]), windows, time.perf_counter() - start, guide)

    def segment(self, image: np.ndarray | PreparedImage, trace: SegmentTrace | None = None) -> Segmentation:
        """Label an HxWx3 uint8 RGB image; the label map has the image's own size.

        ``trace``, when given, is filled with every per-window stage (see ``freecp.trace``).
        """
        return self.segment_batch([image], [trace])[0]

    def segment_batch(self, images: Sequence[np.ndarray | PreparedImage],
                      traces: Sequence[SegmentTrace | None] | None = None) -> list[Segmentation]:
        """Segment several images at once; each result equals ``segment`` of that image alone.

        Every image runs ``_stages``, which pauses where it needs the model; the pending requests
        of all images are served together: all windows (grouped by shape) in calls of
        ``window_batch``, all AP crops in one call. The backbone's numbers for a window or a crop
        do not depend on what it shares a call with (``ClipBackbone.encode_crops``), so batching
        changes nothing but speed. ``traces`` (one per image, or None) are filled as ``segment``'s.
        """
        traces = list(traces) if traces is not None else [None] * len(images)
        runs = [self._stages(image, trace) for image, trace in zip(images, traces, strict=True)]
        results: list[Segmentation | None] = [None] * len(runs)
        calls: list[_ModelCall | None] = [None] * len(runs)
        answers: list[Any] = [None] * len(runs)
        pending = list(range(len(runs)))
        while pending:
            for i in pending:
                try:
                    calls[i] = runs[i].send(answers[i])
                except StopIteration as finished:
                    calls[i], results[i] = None, finished.value
            pending = [i for i in pending if calls[i] is not None]
            answers = self._serve(calls)
        return results

    # ------------------------------------------------------------------ stages
    def _stages(self, image: np.ndarray | PreparedImage,
                trace: SegmentTrace | None = None) -> Generator[_ModelCall, Any, Segmentation]:
        """One image through the method; ``yield`` hands a model call to ``segment_batch``."""
        timer = _StageTimer()
        s = self.settings
        prepared = image if isinstance(image, PreparedImage) else self.prepare(image)
        timer.seconds["input"] += prepared.seconds
        windows, original = prepared.windows, prepared.size
        if trace is not None:
            trace.windows, trace.origins = windows.pixels, windows.origins
        features, attention = yield _ModelCall("dense", windows.pixels, timer, "backbone")
        with timer("cam"):
            probs = query_softmax(features, self.embeddings.queries, self.backbone.logit_scale)
            cams = class_maps(probs, self.embeddings.query_class, len(self.vocab))
        if not s.purify:
            with timer("compose"):
                labels, scores, refinement = self._final_labels(cams, torch.arange(len(self.vocab)), windows,
                                                                prepared, background_from_max=False)
            return Segmentation(labels, scores, None, dict(timer.seconds), refinement)

        fg_cams = select_classes(cams, self.foreground)
        with timer("refine"):
            normalized = global_minmax(fg_cams, bounds_from=probs)  # bounds over ALL queries, as the reference
            refined = refine(normalized, affinity_transition(attention), s.box_threshold,
                             reference_order=s.float_order == "reference")
        with timer("rp"):
            rp_scores, keep = self._redundancy(fg_cams, refined)
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
                if s.scope == "window":
                    groups, crops, crop_counts = self._ambiguity_per_window(maps, classes, windows,
                                                                            trace is not None)
                else:
                    groups, crops, crop_counts = self._ambiguity_per_image(maps, classes, windows)
            embedded = (yield _ModelCall("crops", torch.stack(crops), timer, "ap")) if crops \
                else self.crop_targets[:0]
            with timer("ap"):
                maps = self._settle(maps, classes, groups, embedded, crop_counts)
        if trace is not None:
            trace.after_ap, trace.groups = scatter_columns(maps, survivors, len(self.foreground)), groups
        with timer("compose"):
            labels, scores, refinement = self._final_labels(maps, classes, windows, prepared,
                                                            background_from_max=self.vocab.has_background)
        if trace is not None:
            trace.scores, trace.score_classes = self._canvas(maps, windows, original), classes
        alive = classes[maps.flatten(2).amax(dim=-1).amax(dim=0) > 0]
        report = self._report(rp_scores, survivors, alive, groups, windows, original)
        return Segmentation(labels, scores, report, dict(timer.seconds), refinement)

    # ------------------------------------------------------------------ model
    def _serve(self, calls: list[_ModelCall | None]) -> list[Any]:
        """Answer every pending call, one shared batch per kind; each call's share of the time
        (by its number of windows or crops) goes to its image's timer."""
        answers: list[Any] = [None] * len(calls)
        kinds: dict[str, Callable[[list[torch.Tensor]], list[Any]]] = {
            "dense": self._dense_forward, "crops": self._encode_crops}
        for kind, serve in kinds.items():
            asking = [i for i, call in enumerate(calls) if call is not None and call.kind == kind]
            if not asking:
                continue
            start = time.perf_counter()
            with self.model_precision():
                served = serve([self._to_host(calls[i].pixels) for i in asking])
            seconds = time.perf_counter() - start
            total = sum(len(calls[i].pixels) for i in asking)
            for i, answer in zip(asking, served):
                answers[i] = answer
                calls[i].timer.seconds[calls[i].stage] += seconds * len(calls[i].pixels) / total
        return answers

    def _dense_forward(self, pixel_sets: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(features, attention) per image; windows of one shape share calls of ``window_batch``."""
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, pixels in enumerate(pixel_sets):
            by_shape[tuple(pixels.shape[1:])].append(i)
        out: list[Any] = [None] * len(pixel_sets)
        for members in by_shape.values():
            windows = torch.cat([pixel_sets[i] for i in members])
            outputs = [self.backbone.dense_forward(chunk) for chunk in windows.split(self.settings.window_batch)]
            counts = [len(pixel_sets[i]) for i in members]
            features = torch.cat([o.features for o in outputs]).split(counts)
            attention = torch.cat([o.attention for o in outputs]).split(counts)
            for i, f, a in zip(members, features, attention):
                out[i] = (f, a)
        return out

    def _encode_crops(self, crop_sets: list[torch.Tensor]) -> list[torch.Tensor]:
        """AP crops of every image in one crop-encoder call; embeddings per image."""
        return list(self.backbone.encode_crops(torch.cat(crop_sets)).split([len(c) for c in crop_sets]))

    def model_precision(self) -> AbstractContextManager:
        """The context model calls run in: half-precision autocast when ``precision`` asks for it
        (fp32: none)."""
        dtype = AUTOCAST_DTYPES.get(self.settings.precision)
        if dtype is None:
            return nullcontext()
        return torch.autocast(_device_type(self.backbone), dtype=dtype)

    def _to_host(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pinned host memory for the copy to a CUDA device; unchanged elsewhere."""
        return pixels.pin_memory() if _device_type(self.backbone) == "cuda" else pixels

    # ------------------------------------------------------------------ input
    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Keep-ratio resize to (2048, S), then CLIP normalisation, exactly as the reference's
        mmcv pipeline: OpenCV's bilinear resize on the 8-bit image (its rounding included)."""
        h, w = image.shape[:2]
        factor = min(MAX_LONG_SIDE / max(h, w), self.settings.short_side / min(h, w))
        size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        resized = cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return _normalise(resized)

    def _windows(self, pixels: torch.Tensor) -> _Windows:
        """Sliding windows; a side shorter than one patch (extreme aspect ratios: the long side is
        capped first) is padded with the mean colour to a patch, which composition crops off again."""
        valid = tuple(pixels.shape[-2:])
        p = self.backbone.patch_size
        pixels = F.pad(pixels, (0, max(0, p - valid[1]), 0, max(0, p - valid[0])))
        height, width = pixels.shape[-2:]
        wh, ww = min(self.settings.window, height), min(self.settings.window, width)
        rows = _starts(height, wh, self.settings.stride)
        cols = _starts(width, ww, self.settings.stride)
        crops = torch.stack([pixels[:, y:y + wh, x:x + ww] for y in rows for x in cols])
        return _Windows(pixels, crops, rows, cols, valid)

    # ------------------------------------------------------------ purification
    def _redundancy(self, cams: torch.Tensor, refined: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RP scores [B, Kf] and the keep mask [B, Kf]; with image scope one decision per image."""
        s = self.settings
        flat_cam, flat_ref = cams.flatten(2), refined.flatten(2)
        if s.scope == "image":  # pool the sums of all windows, then decide once
            scores = self_consistency(flat_cam.transpose(0, 1).flatten(1), flat_ref.transpose(0, 1).flatten(1),
                                      s.sc_formula)[None].expand(len(cams), -1)
        else:
            scores = self_consistency(flat_cam, flat_ref, s.sc_formula)
        keep = scores > s.rp_threshold if s.redundancy else torch.ones_like(scores, dtype=torch.bool)
        return scores, keep

    def _ambiguity_per_window(self, maps: torch.Tensor, classes: torch.Tensor, windows: _Windows,
                              every_valid_box: bool = False,
                              ) -> tuple[list[AmbiguityGroup], list[torch.Tensor], list[int]]:
        """Plan groups in every window and cut their crops (classified together by ``_settle``);
        also the number of crops per group.

        ``every_valid_box`` also encodes the valid boxes of groups that a degenerate box keeps
        whole (their winners change nothing; a trace records them, as the reference does).
        """
        s = self.settings
        groups = []
        for b in range(len(maps)):
            alive = torch.nonzero(maps[b].flatten(1).amax(dim=1) > 0).flatten().tolist()
            groups += plan_ambiguity(maps[b], alive, s.ap_threshold, s.box_threshold, scope=b,
                                     box_rule=s.box_rule)
        boxes = [g.valid_boxes if every_valid_box else g.crop_boxes for g in groups]
        crops = [self._crop(windows.pixels[g.scope], box) for g, group_boxes in zip(groups, boxes)
                 for box in group_boxes]
        return groups, crops, [len(b) for b in boxes]

    def _ambiguity_per_image(self, maps: torch.Tensor, classes: torch.Tensor,
                             windows: _Windows) -> tuple[list[AmbiguityGroup], list[torch.Tensor], None]:
        """Image-scope AP: one set of groups from the composed maps at patch resolution (each
        group's crops are its crop boxes, so no crop counts)."""
        s = self.settings
        p = self.backbone.patch_size
        height, width = windows.size
        image_maps = self._canvas(maps, windows, (height // p, width // p))
        groups = plan_ambiguity(image_maps, list(range(len(classes))), s.ap_threshold, s.box_threshold,
                                box_rule=s.box_rule)
        crops = [self._crop(windows.image, box) for g in groups for box in g.crop_boxes]
        return groups, crops, None

    def _settle(self, maps: torch.Tensor, classes: torch.Tensor, groups: list[AmbiguityGroup],
                embedded: torch.Tensor, crop_counts: list[int] | None = None) -> torch.Tensor:
        """Re-classify the crops from their embeddings; zero each group's losers in its window (or all).

        Group members arrive as indices into ``classes`` and leave as vocabulary indices.
        """
        if not groups:
            return maps
        for g in groups:
            g.members = [int(classes[m]) for m in g.members]
        resolve_groups(groups, embedded, self.crop_targets, self.backbone.logit_scale, crop_counts)
        column = {int(c): i for i, c in enumerate(classes)}
        maps = maps.clone()
        per_image = self.settings.scope == "image"
        for g in groups:
            for loser in set(g.members) - set(g.winners):
                if per_image:
                    maps[:, column[loser]] = 0
                else:
                    maps[g.scope, column[loser]] = 0
        return maps

    def _crop(self, pixels: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        p = self.backbone.patch_size
        x0, y0, x1, y1 = box
        region = pixels[:, y0 * p:y1 * p, x0 * p:x1 * p][None]
        size = (self.settings.crop_size, self.settings.crop_size)
        return F.interpolate(region, size=size, mode="bilinear", align_corners=False)[0]

    # ------------------------------------------------------------ composition
    def _final_labels(self, maps: torch.Tensor, classes: torch.Tensor, windows: _Windows, prepared: PreparedImage,
                      background_from_max: bool) -> tuple[np.ndarray, np.ndarray, str]:
        """``_compose`` with PAMR when the settings ask for it, and what became of PAMR. Should
        PAMR run out of memory, the image is composed without it and the result says so."""
        if prepared.guide is None:
            return *self._compose(maps, classes, windows, prepared.size, background_from_max), "off"
        try:
            composed = self._compose(maps, classes, windows, prepared.size, background_from_max, prepared.guide)
            return *composed, "applied"
        except (MemoryError, RuntimeError) as err:
            if not _out_of_memory(err):
                raise
        return *self._compose(maps, classes, windows, prepared.size, background_from_max), "skipped: out of memory"

    def _compose(self, maps: torch.Tensor, classes: torch.Tensor, windows: _Windows, original: tuple[int, int],
                 background_from_max: bool, guide: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Average window maps into the image, resize to the original size, refine with PAMR along
        the edges of ``guide`` (when given), take the argmax.

        ``maps`` [B, C, h, w] belong to vocabulary indices ``classes``. With ``background_from_max``
        the background (class 0) scores 1 - max over the classes. Classes are composed in chunks so
        memory stays bounded for large vocabularies.
        """
        s = self.settings
        weights = None if guide is None else local_affinity(guide, s.pamr_dilations)  # PAMR's, once per image
        best = torch.full(original, -1.0)
        label = torch.zeros(original, dtype=torch.long)
        scores = np.zeros(len(self.vocab), dtype=np.float32)
        for start in range(0, maps.shape[1], COMPOSE_CHUNK):
            chunk = classes[start:start + COMPOSE_CHUNK]
            composed = self._canvas(maps[:, start:start + COMPOSE_CHUNK], windows, original, windows.valid)
            if weights is not None:
                composed = propagate(composed, weights, s.pamr_steps, s.pamr_dilations)
            scores[chunk.numpy()] = composed.flatten(1).amax(1).numpy()
            top, arg = composed.max(dim=0)
            better = top > best
            best = torch.where(better, top, best)
            label = torch.where(better, chunk[arg], label)
        if background_from_max:
            background = 1 - best.clamp_min(0)
            label = torch.where(background > best, torch.zeros_like(label), label)
            scores[0] = float(background.max())
        return label.to(torch.int32).numpy(), scores

    def _canvas(self, maps: torch.Tensor, windows: _Windows, size: tuple[int, int],
                region: tuple[int, int] | None = None) -> torch.Tensor:
        """Window maps [B, C, h, w] -> maps averaged over overlapping windows, resized to ``size``
        (only the top-left ``region`` of the resized image, when given: padding is left out).

        Upsampling to the window, pasting, dividing by the window count and resizing are all
        linear and separable per axis, so the whole composition is ``A_y @ mosaic @ A_x^T`` with
        two small matrices: the same numbers as doing it step by step, without ever holding
        C full-resolution canvases per window.
        """
        grid_h, grid_w = maps.shape[-2:]
        wh, ww = windows.pixels.shape[-2:]
        region = region or windows.size
        along_y = _axis_operator(windows.rows, grid_h, wh, windows.size[0], size[0], region[0])
        along_x = _axis_operator(windows.cols, grid_w, ww, windows.size[1], size[1], region[1])
        n_rows, n_cols = len(windows.rows), len(windows.cols)
        mosaic = maps.reshape(n_rows, n_cols, -1, grid_h, grid_w).permute(2, 0, 3, 1, 4)
        mosaic = mosaic.reshape(-1, n_rows * grid_h, n_cols * grid_w)
        return along_y @ mosaic @ along_x.T

    # ---------------------------------------------------------------- report
    def _box_in_original(self, box: tuple[int, int, int, int], scope: int, windows: _Windows,
                         original: tuple[int, int]) -> list[int]:
        """A box in patch units of a window (or of the whole resized image) as original pixels."""
        p = self.backbone.patch_size
        y0, x0 = windows.origins[scope] if self.settings.scope == "window" else (0, 0)
        sy, sx = original[0] / windows.valid[0], original[1] / windows.valid[1]
        x_a, y_a, x_b, y_b = box
        return [min(round((x0 + x_a * p) * sx), original[1]), min(round((y0 + y_a * p) * sy), original[0]),
                min(round((x0 + x_b * p) * sx), original[1]), min(round((y0 + y_b * p) * sy), original[0])]

    def _report(self, rp_scores: torch.Tensor, rp_kept: torch.Tensor, alive: torch.Tensor,
                groups: list[AmbiguityGroup], windows: _Windows, original: tuple[int, int]) -> PurificationReport:
        names = self.vocab.class_names
        fg = self.foreground.tolist()
        best = rp_scores.max(dim=0).values
        alive_set = set(alive.tolist())
        return PurificationReport(
            rp_scores={names[k]: round(float(best[i]), 6) for i, k in enumerate(fg)},
            kept=[names[k] for i, k in enumerate(fg) if rp_kept[i]],
            removed=[names[k] for k in fg if k not in alive_set],
            groups=[{
                "window": g.scope,
                "members": [names[m] for m in g.members],
                "boxes": [self._box_in_original(b, g.scope, windows, original) for b in g.boxes],
                "winners": [names[m] for m in g.winners],
            } for g in groups],
            ap_targets=self.ap_targets,
            fallback_classes=self.fallback_classes,
        )


def _axis_operator(starts: list[int], grid: int, window: int, resized: int, target: int,
                   valid: int) -> torch.Tensor:
    """[target, len(starts) * grid]: one axis of upsample-to-window, paste, average, keep the
    first ``valid`` positions (drop padding), resize."""
    upsample = _linear_resize_matrix(grid, window)           # [window, grid]
    paste = torch.zeros(resized, len(starts) * grid)
    for i, start in enumerate(starts):
        paste[start:start + window, i * grid:(i + 1) * grid] += upsample
    coverage = torch.zeros(resized)
    for start in starts:
        coverage[start:start + window] += 1
    paste /= coverage[:, None]
    paste = paste[:valid]
    return paste if target == valid else _linear_resize_matrix(valid, target) @ paste


@lru_cache(maxsize=64)
def _linear_resize_matrix(source: int, target: int) -> torch.Tensor:
    """[target, source] weights of PyTorch's linear resize (align_corners=False, no antialias);
    bilinear 2-D resizing is this applied along each axis."""
    eye = torch.eye(source)[None]                             # channels = source positions
    return F.interpolate(eye, size=target, mode="linear", align_corners=False)[0].T


def _normalise(image: np.ndarray) -> torch.Tensor:
    """An HxWx3 uint8 RGB image as CLIP's normalised [3, H, W] float32."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (pixels - CLIP_MEAN) / CLIP_STD


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (Python's, a device's, or torch's CPU allocator's)."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)


def _device_type(backbone) -> str:
    """The backbone's torch device type; stand-ins without a device count as the CPU."""
    device = getattr(backbone, "device", None)
    return torch.device(device).type if device is not None else "cpu"


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins along one axis; the last window is shifted to end at the border."""
    steps = max(size - window + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, size - window) for i in range(steps)})


class _StageTimer:
    """Accumulates wall time per named stage (for the report and the speed benchmark)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start
