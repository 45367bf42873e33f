"""The options of every command that segments (``segment``, ``benchmark``), declared once as the
fields of ``SegmentationOptions``, and the one way those options become settings and a segmenter."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, get_type_hints

import typer
from rich.console import Console

from freecp.commands.progress import progress_bars
from freecp.defaults import DEFAULT_STORE
from freecp.settings import PRECISIONS, PROTOCOLS, VARIANTS, SegmentSettings, settings_for
from freecp.weights import Weights

if TYPE_CHECKING:
    from freecp.segmenter import Segmenter
    from freecp.vocab import Vocabulary


Model = Annotated[str, typer.Option("--model", help="open_clip model name.")]
Pretrained = Annotated[str, typer.Option("--pretrained", help="open_clip pretrained tag, or 'none' for random weights.")]
ClipCheckpoint = Annotated[Optional[Path], typer.Option("--clip-checkpoint", help="Local CLIP checkpoint file (offline use).")]
QUICK_GELU_HELP = ("Activation for --clip-checkpoint weights: QuickGELU (OpenAI's) or GELU. "
                   "Default: detected from the file (see README); ambiguous files are refused.")
QuickGelu = Annotated[Optional[bool], typer.Option("--quick-gelu/--no-quick-gelu", help=QUICK_GELU_HELP)]
Backbone = Annotated[str, typer.Option("--backbone", help=f"Last-block variant: {', '.join(VARIANTS)}.")]
Protocol = Annotated[str, typer.Option("--protocol", help=f"Residual/FFN protocol: {', '.join(PROTOCOLS)}.")]
Purify = Annotated[bool, typer.Option("--purify/--no-purify", help="Run FreeCP (off: plain baseline).")]
Redundancy = Annotated[Optional[bool], typer.Option("--redundancy/--no-redundancy", help="Redundancy purification.")]
Ambiguity = Annotated[Optional[bool], typer.Option("--ambiguity/--no-ambiguity", help="Ambiguity purification.")]
Scope = Annotated[Optional[str], typer.Option("--scope", help="Purify per 'window' (reference) or per 'image'.")]
RpThreshold = Annotated[Optional[float], typer.Option("--rp-threshold", help="Override the preset's RP threshold.")]
ApThreshold = Annotated[Optional[float], typer.Option("--ap-threshold", help="Override the preset's AP threshold.")]
ScFormula = Annotated[
    Optional[str], typer.Option("--sc-formula", help="Self-consistency: 'half-dice' (reference) or 'soft-iou'.")
]
BoxRule = Annotated[Optional[str], typer.Option(
    "--box-rule", help="AP crop boxes: one per 'contours' (reference, hole borders too) or per 'components'.")]
ShortSide = Annotated[Optional[int], typer.Option("--short-side", help="Resize the short side to this many pixels.")]
Window = Annotated[Optional[int], typer.Option("--window", help="Sliding-window size in pixels.")]
Stride = Annotated[Optional[int], typer.Option("--stride", help="Sliding-window stride in pixels.")]
WindowBatch = Annotated[Optional[int], typer.Option("--window-batch", help="Windows per backbone call.")]
BatchImages = Annotated[Optional[int], typer.Option(
    "--batch-images", help="Images whose windows and AP crops share model calls (same outputs; for GPUs).")]
Prefetch = Annotated[Optional[int], typer.Option(
    "--prefetch", help="Batches of images read and prepared ahead of the model (0: in turn).")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", help="Images in the model at once, torch's threads split between them (same outputs; "
                      "on a CPU 2 or more run faster than 1).")]
Precision = Annotated[Optional[str], typer.Option(
    "--precision", help=f"Model precision: {', '.join(PRECISIONS)} (fp16/bf16 autocast: for GPUs, not exact).")]
MaxPixels = Annotated[Optional[int], typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Store = Annotated[str, typer.Option("--store", help="Embedding store (directory or s3:// URL).")]
NoEncode = Annotated[bool, typer.Option("--no-encode", help="Fail instead of encoding texts missing from the store.")]
Device = Annotated[str, typer.Option("--device", help="Torch device, e.g. cpu or cuda.")]


@dataclass(frozen=True)
class SegmentationOptions:
    """Every option of a command that segments: the model, overrides of the preset, the store.

    The fields are the declaration: ``with_segmentation_options`` turns each into a command-line
    option of the decorated command, with the field's type, help and default.
    """

    model: Model = "ViT-B-16"
    pretrained: Pretrained = "openai"
    clip_checkpoint: ClipCheckpoint = None
    quick_gelu: QuickGelu = None
    backbone: Backbone = SegmentSettings.variant
    protocol: Protocol = SegmentSettings.protocol
    purify: Purify = SegmentSettings.purify
    redundancy: Redundancy = None
    ambiguity: Ambiguity = None
    scope: Scope = None
    rp_threshold: RpThreshold = None
    ap_threshold: ApThreshold = None
    sc_formula: ScFormula = None
    box_rule: BoxRule = None
    short_side: ShortSide = None
    window: Window = None
    stride: Stride = None
    window_batch: WindowBatch = None
    batch_images: BatchImages = None
    prefetch: Prefetch = None
    workers: Workers = None
    precision: Precision = None
    max_pixels: MaxPixels = None
    store: Store = DEFAULT_STORE
    no_encode: NoEncode = False
    device: Device = "cpu"

    @property
    def weights(self) -> Weights:
        return Weights(self.model, self.pretrained, str(self.clip_checkpoint) if self.clip_checkpoint else None)

    def settings(self, preset: str) -> SegmentSettings:
        """The preset of a benchmark vocabulary (defaults for any other) with these overrides."""
        overrides = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _SETTINGS_FIELDS}
        return settings_for(preset, variant=self.backbone, **overrides)

    def open_segmenter(self, vocabulary: Vocabulary, settings: SegmentSettings, console: Console) -> Segmenter:
        """Build the segmenter, after setting this process's thread policy (``settings.workers``
        model calls at a time); random weights are announced once, on ``console``."""
        from freecp.pipeline import build_segmenter
        from freecp.threads import apply_thread_policy

        apply_thread_policy(segmenters=settings.workers)
        weights = self.weights
        with warnings.catch_warnings(), progress_bars() as on_progress:
            warnings.simplefilter("ignore")  # the random-weights warning is printed once, below
            segmenter = build_segmenter(vocabulary, model=weights.model, pretrained=weights.pretrained,
                                        clip_checkpoint=weights.checkpoint, store=self.store, device=self.device,
                                        settings=settings, encode_missing=not self.no_encode,
                                        on_progress=on_progress,
                                        quick_gelu=self.quick_gelu)
        if weights.random:
            console.print("[yellow]warning: random CLIP weights: the masks are meaningless (tests only)[/]")
        return segmenter


# Options that are SegmentSettings fields under the same name (--backbone is its ``variant``).
_SETTINGS_FIELDS = frozenset(f.name for f in fields(SegmentSettings))


def with_segmentation_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` every ``SegmentationOptions`` field as an option; it receives them as one
    keyword argument, ``options``. Typer reads the combined signature set here."""
    hints = get_type_hints(SegmentationOptions, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in fields(SegmentationOptions)]
    own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "options"]

    @functools.wraps(command)
    def with_options(**values: Any) -> None:
        options = SegmentationOptions(**{f.name: values.pop(f.name) for f in fields(SegmentationOptions)})
        command(options=options, **values)

    with_options.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
    return with_options
