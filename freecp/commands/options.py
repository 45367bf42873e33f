"""Options of the commands that segment (``segment``, ``benchmark``), declared once, and the one
way those options become a segmenter."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from freecp.settings import PROTOCOLS, VARIANTS

if TYPE_CHECKING:
    from freecp.segmenter import Segmenter
    from freecp.settings import SegmentSettings
    from freecp.vocab import Vocabulary
    from freecp.weights import Weights

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
DEFAULT_BACKBONE = "sclip"
DEFAULT_PROTOCOL = "freecp"
DEFAULT_DEVICE = "cpu"
DEFAULT_STORE = os.environ.get("FREECP_STORE", "cache/store")

Model = Annotated[str, typer.Option("--model", help="open_clip model name.")]
Pretrained = Annotated[str, typer.Option("--pretrained", help="open_clip pretrained tag, or 'none' for random weights.")]
ClipCheckpoint = Annotated[Optional[Path], typer.Option("--clip-checkpoint", help="Local CLIP checkpoint file (offline use).")]
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
ShortSide = Annotated[Optional[int], typer.Option("--short-side", help="Resize the short side to this many pixels.")]
Window = Annotated[Optional[int], typer.Option("--window", help="Sliding-window size in pixels.")]
Stride = Annotated[Optional[int], typer.Option("--stride", help="Sliding-window stride in pixels.")]
WindowBatch = Annotated[Optional[int], typer.Option("--window-batch", help="Windows per backbone call.")]
MaxPixels = Annotated[Optional[int], typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Store = Annotated[str, typer.Option("--store", help="Embedding store (directory or s3:// URL).")]
NoEncode = Annotated[bool, typer.Option("--no-encode", help="Fail instead of encoding texts missing from the store.")]
Device = Annotated[str, typer.Option("--device", help="Torch device, e.g. cpu or cuda.")]


def open_segmenter(vocabulary: Vocabulary, settings: SegmentSettings, weights: Weights, *, store: str,
                   device: str, no_encode: bool, console: Console) -> Segmenter:
    """Build the segmenter the options describe; random weights are announced once, on ``console``."""
    from freecp.pipeline import build_segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is printed once, below
        segmenter = build_segmenter(vocabulary, model=weights.model, pretrained=weights.pretrained,
                                    clip_checkpoint=weights.checkpoint, store=store, device=device,
                                    settings=settings, encode_missing=not no_encode)
    if weights.random:
        console.print("[yellow]warning: random CLIP weights: the masks are meaningless (tests only)[/]")
    return segmenter
