"""``freecp segment``: segment an image or a folder into masks, overlays and records."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from freecp.settings import PROTOCOLS, VARIANTS

DEFAULT_STORE = os.environ.get("FREECP_STORE", "cache/store")
console = Console(stderr=True, soft_wrap=True)


def segment(
    images: Path = typer.Argument(..., help="An image file or a folder (searched recursively)."),
    vocab: str = typer.Option(..., "--vocab", help="Shipped vocabulary name (voc21, ade150, ...) or a file."),
    out: Path = typer.Option(..., "--out", help="Output folder: masks/, overlays/, records.parquet."),
    model: str = typer.Option("ViT-B-16", help="open_clip model name."),
    pretrained: str = typer.Option("openai", help="open_clip pretrained tag, or 'none' for random weights."),
    clip_checkpoint: Optional[Path] = typer.Option(None, help="Local CLIP checkpoint file (offline use)."),
    backbone: str = typer.Option("sclip", help=f"Last-block variant: {', '.join(VARIANTS)}."),
    protocol: str = typer.Option("freecp", help=f"Residual/FFN protocol: {', '.join(PROTOCOLS)}."),
    purify: bool = typer.Option(True, "--purify/--no-purify", help="Run FreeCP (off: plain baseline)."),
    redundancy: Optional[bool] = typer.Option(None, "--redundancy/--no-redundancy", help="Redundancy purification."),
    ambiguity: Optional[bool] = typer.Option(None, "--ambiguity/--no-ambiguity", help="Ambiguity purification."),
    scope: Optional[str] = typer.Option(None, help="Purify per 'window' (reference) or per 'image'."),
    rp_threshold: Optional[float] = typer.Option(None, help="Override the preset's RP threshold."),
    ap_threshold: Optional[float] = typer.Option(None, help="Override the preset's AP threshold."),
    sc_formula: Optional[str] = typer.Option(None, help="Self-consistency: 'half-dice' (reference) or 'soft-iou'."),
    short_side: Optional[int] = typer.Option(None, help="Resize the short side to this many pixels."),
    window: Optional[int] = typer.Option(None, help="Sliding-window size in pixels."),
    stride: Optional[int] = typer.Option(None, help="Sliding-window stride in pixels."),
    window_batch: Optional[int] = typer.Option(None, help="Windows per backbone call."),
    max_pixels: Optional[int] = typer.Option(None, help="Refuse images with more pixels than this."),
    store: str = typer.Option(DEFAULT_STORE, help="Embedding store (directory or s3:// URL)."),
    no_encode: bool = typer.Option(False, "--no-encode", help="Fail instead of encoding texts missing from the store."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
) -> None:
    """Segment IMAGES against a vocabulary; exits 1 if any image failed."""
    from freecp.clip import WeightsUnavailableError
    from freecp.pipeline import build_segmenter, segment_folder
    from freecp.settings import settings_for
    from freecp.stores.fs import StoreError
    from freecp.vocab import VocabularyError, load_vocabulary

    try:
        vocabulary = load_vocabulary(vocab)
        settings = settings_for(
            vocabulary.name, variant=backbone, protocol=protocol, purify=purify, redundancy=redundancy,
            ambiguity=ambiguity, scope=scope, rp_threshold=rp_threshold, ap_threshold=ap_threshold,
            sc_formula=sc_formula, short_side=short_side, window=window, stride=stride,
            window_batch=window_batch, max_pixels=max_pixels)
        if not images.exists():
            raise FileNotFoundError(f"{images} does not exist")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning is printed once, below
            segmenter = build_segmenter(vocabulary, model=model, pretrained=pretrained,
                                        clip_checkpoint=str(clip_checkpoint) if clip_checkpoint else None,
                                        store=store, device=device, settings=settings,
                                        encode_missing=not no_encode)
        if clip_checkpoint is None and pretrained.lower() in ("none", "random"):
            console.print("[yellow]warning: random CLIP weights: the masks are meaningless (tests only)[/]")
        summary = segment_folder(segmenter, images, out)
    except (VocabularyError, WeightsUnavailableError, StoreError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    _print_summary(summary, out)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(summary, out: Path) -> None:
    done, skipped, failed = summary.count("done"), summary.count("skipped"), summary.count("failed")
    table = Table(title=f"freecp segment -> {out}")
    table.add_column("images")
    table.add_column("done")
    table.add_column("skipped")
    table.add_column("failed")
    table.add_column("s / image")
    table.add_row(str(len(summary.records)), str(done), str(skipped), str(failed),
                  f"{summary.seconds / max(done, 1):.2f}")
    console.print(table)
    if summary.top_classes():
        console.print("classes found most often: " + ", ".join(f"{c} ({n})" for c, n in summary.top_classes(8)))
    if summary.top_removed():
        console.print("removed by purification most often: "
                      + ", ".join(f"{c} ({n})" for c, n in summary.top_removed(8)))
    for record in summary.failed:
        console.print(f"[red]failed[/] {record.path}: {record.error}")
    console.print(f"records: {summary.index}")


def register(app: typer.Typer) -> None:
    """Add ``freecp segment``."""
    app.command(name="segment")(segment)
