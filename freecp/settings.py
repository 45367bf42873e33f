"""Segmentation settings as data: one frozen dataclass, presets per benchmark, a stable hash.

The presets carry the reference implementation's thresholds and window geometry
(ALGORITHM.md section 5). Every field can be overridden; the hash of the settings is part of
the key that decides whether an image's outputs are up to date.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

Variant = Literal["maskclip", "sclip", "clearclip", "naclip", "vanilla", "gem"]
Protocol = Literal["freecp", "original"]
ScFormula = Literal["half-dice", "soft-iou"]
PurifyScope = Literal["window", "image"]
Precision = Literal["fp32", "fp16", "bf16"]
BoxRule = Literal["contours", "components"]
# The float32 summation order of the text tower and refinement (same functions, rounding apart):
# "fast" cuts each text batch to its longest prompt with fused attention and refines all classes
# in one product; "reference" is the reference's order, bit for bit (the parity suite's).
FloatOrder = Literal["fast", "reference"]
ApTexts = Literal["descriptions", "names", "random"]

VARIANTS: tuple[str, ...] = get_args(Variant)    # the one list of last-block variants
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
PRECISIONS: tuple[str, ...] = get_args(Precision)
FLOAT_ORDERS: tuple[str, ...] = get_args(FloatOrder)
AP_TEXTS: tuple[str, ...] = get_args(ApTexts)
SC_FORMULAS: tuple[str, ...] = get_args(ScFormula)
SCOPES: tuple[str, ...] = get_args(PurifyScope)
BOX_RULES: tuple[str, ...] = get_args(BoxRule)
# How a run is carried out, not what it computes: left out of the settings hash.
RUN_ONLY_FIELDS = ("window_batch", "batch_images", "prefetch", "workers", "max_pixels")


# Each setting with a fixed set of values: how an error names it, and the values it allows.
CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "variant": ("variant", VARIANTS),
    "protocol": ("protocol", PROTOCOLS),
    "sc_formula": ("SC formula", SC_FORMULAS),
    "scope": ("purification scope", SCOPES),
    "box_rule": ("box rule", BOX_RULES),
    "precision": ("precision", PRECISIONS),
    "float_order": ("float order", FLOAT_ORDERS),
    "ap_texts": ("AP texts", AP_TEXTS),
}


def check_choice(name: str, value: str) -> None:
    """ValueError, in one line, unless ``value`` is one of setting ``name``'s values (``CHOICES``)."""
    label, allowed = CHOICES[name]
    if value not in allowed:
        raise ValueError(f"unknown {label} {value!r}; choose one of {', '.join(allowed)}")


def check_float_order(value: str) -> None:
    """``check_choice`` for a float order given outside the settings (encode, the backbone)."""
    check_choice("float_order", value)


@dataclass(frozen=True)
class SegmentSettings:
    """Everything that changes a label map, besides the model and the text embeddings."""

    variant: Variant = "sclip"
    protocol: Protocol = "freecp"
    short_side: int = 448          # resize so the short side is this (long side capped at 2048)
    window: int = 384              # sliding-window crop size in pixels
    stride: int = 112              # sliding-window stride in pixels
    purify: bool = True            # False: plain baseline (CAM argmax, no refinement)
    redundancy: bool = True        # run redundancy purification (RP)
    ambiguity: bool = True         # run ambiguity purification (AP)
    rp_threshold: float = 0.15     # keep class iff its self-consistency score > this
    ap_threshold: float = 0.8      # two classes are ambiguous iff soft IoU >= this
    sc_formula: ScFormula = "half-dice"
    scope: PurifyScope = "window"  # decide classes per window (reference) or once per image
    box_threshold: float = 0.4     # boxes from maps thresholded at this fraction of the max
    box_rule: BoxRule = "contours"  # AP crops: one per contour, holes too (reference), or per component
    crop_size: int = 112           # AP crops are resized to this square
    window_batch: int = 16         # windows per backbone call
    batch_images: int = 1          # images whose windows and crops share model calls (same outputs)
    prefetch: int = 2              # images read and prepared ahead of the model (0: in turn)
    workers: int = 1               # model calls of a folder run at once, torch's threads split between them
    precision: Precision = "fp32"  # model calls in fp32, or autocast to fp16 / bf16 (not exact)
    float_order: FloatOrder = "fast"  # "reference": the reference's float32 sums, bit for bit (slower)
    max_pixels: int = 100_000_000  # larger images are refused (decompression-bomb guard)
    # Beyond the reference (off or at the reference's choice by default):
    ap_texts: ApTexts = "descriptions"  # AP scores crops against the LLM's descriptions, the class
                                        # names only, or seeded random-word descriptors (a control)
    pamr: bool = False                  # refine the final score maps along image edges (freecp.pamr)
    pamr_steps: int = 10                # PAMR iterations (NACLIP's choice)
    pamr_dilations: tuple[int, ...] = (8, 16)  # PAMR neighbourhood dilations (NACLIP's choice)

    def __post_init__(self) -> None:
        for name in CHOICES:
            check_choice(name, getattr(self, name))
        for name in ("short_side", "window", "crop_size", "window_batch", "batch_images", "workers", "max_pixels",
                     "pamr_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
        if not 0 < self.stride <= self.window:
            raise ValueError("stride must be positive and at most the window size")
        if not self.pamr_dilations or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.pamr_dilations):
            raise ValueError(f"pamr-dilations must be whole numbers of at least 1, not {self.pamr_dilations!r}")
        if not isinstance(self.prefetch, int) or isinstance(self.prefetch, bool) or self.prefetch < 0:
            raise ValueError(f"prefetch must be a whole number of at least 0, not {self.prefetch!r}")

    def replace(self, **changes: Any) -> "SegmentSettings":
        """A copy with some fields changed; ``None`` values are ignored (unset CLI options)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def output_fields(self) -> dict[str, Any]:
        """The fields that change outputs (batching, prefetching, workers and the pixel guard do not)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS}

    @property
    def content_hash(self) -> str:
        """Hash of the fields that change outputs."""
        return hashlib.sha256(json.dumps(self.output_fields(), sort_keys=True).encode()).hexdigest()[:16]


# Reference thresholds and geometry per benchmark vocabulary (ALGORITHM.md section 5), and the samples'.
PRESETS: dict[str, dict[str, Any]] = {
    "voc21": dict(rp_threshold=0.15, ap_threshold=0.8),
    "context60": dict(rp_threshold=0.10, ap_threshold=0.7),
    "coco_object": dict(rp_threshold=0.15, ap_threshold=0.8),
    "voc20": dict(rp_threshold=0.15, ap_threshold=0.7),
    "context59": dict(rp_threshold=0.10, ap_threshold=0.7),
    "coco_stuff": dict(rp_threshold=0.05, ap_threshold=0.7),
    "ade150": dict(rp_threshold=0.05, ap_threshold=0.7),
    "cityscapes": dict(rp_threshold=0.10, ap_threshold=0.8, short_side=560, window=224, stride=112),
    # The shipped sample photos (the README's first command, random weights): a 384 short side
    # (one row of windows per photo, so the command stays short) and an RP threshold at which
    # random weights keep some of the 7 classes and drop others, so RP and AP both act.
    "samples": dict(rp_threshold=0.075, ap_threshold=0.8, short_side=384),
}


def settings_for(vocab_name: str, **overrides: Any) -> SegmentSettings:
    """The preset for a benchmark vocabulary (defaults for any other), with overrides applied."""
    return SegmentSettings(**PRESETS.get(vocab_name, {})).replace(**overrides)
