"""Where a segmentation's time goes, what purification costs, and how time grows with the
vocabulary and the image.

    python benchmarks/segment_speed.py                         # ViT-B-16, random weights, 2 images/setting
    python benchmarks/segment_speed.py --images 5 --pretrained openai   # needs the weights locally
    python benchmarks/segment_speed.py --model freecp-tiny --images 1   # plumbing check in seconds

Settings (all on synthetic JPEG images, each read from and written to disk):
  1. 150 classes, purification on: per-stage share of the whole (input, backbone, cam, refine,
     rp, ap, compose from ``Segmentation.timings``, plus reading and writing the files).
  2. 150 classes, purification off: purification overhead = (1) / (2).
  3. 21 and 1000 classes, purification on and off: time per image relative to 21 classes.
  4. 150 classes, purification on, on 1000 x 750 images against 500 x 375.
Targets (issue 2): overhead <= 1.25 at 150 classes; 1000 classes <= 1.5 x 21 classes.

Fair timing on a shared CPU: the settings take turns image by image (round 1 runs image 1
through every setting, round 2 image 2, ...), so load from other processes falls on all of them
alike. Besides the raw ratios, "pooled" ratios replace each run's backbone time by the median
backbone time of all runs at the same image size: the backbone does exactly the same work for
every vocabulary and with or without purification, so its swings under load are noise, not cost.

Text embeddings are computed once, before any timing. By default they are seeded random unit
vectors (``--text random``): encoding 1000 classes x 80 templates through the ViT-B-16 text
tower takes far longer than the benchmark itself here, and with random image weights real text
vectors mean nothing either. ``--text encode`` encodes the synthetic names for real.

Purification load: with random weights almost every class fails RP at the preset thresholds,
which would make purification look free. So for each vocabulary the RP threshold is calibrated
on a warm-up image to let about ``--survivors`` classes through (real images keep a handful),
and the AP threshold is lowered (``--ap-threshold``) so that ambiguity groups and crops occur.
The thresholds, classes kept, groups and crops are printed. Calibration doubles as warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from freecp.defaults import DEFAULT_CLIP_MODEL
from freecp.clip import ClassEmbeddings, embed_vocabulary
from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.io import read_image, write_mask, write_overlay
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.vocab import Vocabulary, load_vocabulary

STAGES = ("read", "input", "backbone", "cam", "refine", "rp", "ap", "compose", "other", "write")
VOCAB_SIZES = (21, 150, 1000)
SIZES = {"500x375": (375, 500), "1000x750": (750, 1000)}  # name -> (height, width)
MAIN = (150, True, "500x375")


@dataclass
class Measurement:
    """Seconds per stage for every timed image, and what purification did."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    groups: int = 0
    crops: int = 0
    kept: int = 0

    @property
    def images(self) -> int:
        return len(self.seconds["backbone"])

    def stage(self, name: str) -> float:
        """Mean seconds per image spent in one stage."""
        values = self.seconds.get(name, [])
        return sum(values) / self.images if values else 0.0

    @property
    def per_image(self) -> float:
        return sum(self.stage(s) for s in STAGES)

    def pooled(self, backbone: float) -> float:
        """Per-image time with this run's backbone time replaced by ``backbone``."""
        return self.per_image - self.stage("backbone") + backbone


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_CLIP_MODEL, help="open_clip model name")
    parser.add_argument("--pretrained", default="none", help="pretrained tag; 'none' = random weights")
    parser.add_argument("--clip-checkpoint", default=None, help="local checkpoint file instead of a tag")
    parser.add_argument("--images", type=int, default=2, help="timed images per setting")
    parser.add_argument("--text", choices=("random", "encode"), default="random",
                        help="seeded random text embeddings, or encode the class names (slow for 1000)")
    parser.add_argument("--survivors", type=int, default=8, help="classes RP should let through")
    parser.add_argument("--ap-threshold", type=float, default=0.5)
    parser.add_argument("--scope", choices=("window", "image"), default="window")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def synthetic_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Smooth colour regions with some texture: compresses and decodes like a photo, unlike noise."""
    height, width = size
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    texture = rng.normal(0, 12, (height, width, 3))
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def write_images(folder: Path, name: str, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{name}_{i}.jpg"
        Image.fromarray(synthetic_image(rng, SIZES[name])).save(path, quality=90)
        paths.append(path)
    return paths


def text_embeddings(backbone, vocab: Vocabulary, mode: str, seed: int) -> ClassEmbeddings:
    """Embeddings for every name of ``vocab``, computed before any timing starts."""
    if mode == "encode":
        return embed_vocabulary(backbone, vocab)
    generator = torch.Generator().manual_seed(seed + len(vocab))
    queries = F.normalize(torch.randn(len(vocab.queries), backbone.embed_dim, generator=generator), dim=-1)
    return ClassEmbeddings(queries=queries, query_class=torch.tensor(vocab.query_class),
                           descriptions=None, described=torch.zeros(len(vocab), dtype=torch.bool),
                           source=f"random-seed{seed}")


def calibrated_rp_threshold(segmenter: Segmenter, image: np.ndarray, survivors: int) -> float:
    """The RP threshold that lets about ``survivors`` classes through on ``image``."""
    probe = Segmenter(segmenter.backbone, segmenter.vocab, segmenter.embeddings,
                      segmenter.settings.replace(rp_threshold=-1.0, ambiguity=False))
    scores = sorted(probe.segment(image).report.rp_scores.values(), reverse=True)
    return float(scores[min(survivors, len(scores) - 1)])


def time_one(segmenter: Segmenter, path: Path, out_dir: Path, into: Measurement) -> None:
    """Read, segment and write one image, adding each stage's seconds to ``into``."""
    classes = len(segmenter.vocab)
    start = time.perf_counter()
    image = read_image(path, segmenter.settings.max_pixels)
    into.seconds["read"].append(time.perf_counter() - start)
    start = time.perf_counter()
    seg = segmenter.segment(image)
    total = time.perf_counter() - start
    start = time.perf_counter()
    write_mask(out_dir / f"{path.stem}.png", seg.labels, classes)
    write_overlay(out_dir / f"{path.stem}.jpg", image, seg.labels, classes)
    into.seconds["write"].append(time.perf_counter() - start)
    for stage in STAGES:
        if stage not in ("read", "write", "other"):
            into.seconds[stage].append(seg.timings.get(stage, 0.0))
    into.seconds["other"].append(total - sum(seg.timings.values()))
    if seg.report is not None:
        into.groups += len(seg.report.groups)
        into.crops += sum(len(g["boxes"]) for g in seg.report.groups)
        into.kept = max(into.kept, len(seg.report.kept))


def main() -> None:
    args = parse_args()
    console = Console(width=150)  # tables stay readable when the output is piped to a file
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        backbone = create_backbone(ClipModel(args.model, pretrained=args.pretrained, clip_checkpoint=args.clip_checkpoint))
    console.print(f"model {backbone.model_key}, torch threads {torch.get_num_threads()}, "
                  f"{args.images} timed images per setting, scope {args.scope}")
    if args.text == "random":
        console.print("text embeddings: seeded random unit vectors (not encoded; see --text)")

    vocabs = {size: load_vocabulary([f"class {i}" for i in range(size)]) for size in VOCAB_SIZES}
    embeddings = {size: text_embeddings(backbone, vocab, args.text, args.seed) for size, vocab in vocabs.items()}
    base = SegmentSettings(ap_threshold=args.ap_threshold, scope=args.scope)
    plan = [(size, purify, "500x375") for size in VOCAB_SIZES for purify in (True, False)]
    plan.append((150, True, "1000x750"))

    with tempfile.TemporaryDirectory() as tmp:
        folder, out_dir = Path(tmp) / "images", Path(tmp) / "out"
        folder.mkdir()
        out_dir.mkdir()
        images = {name: write_images(folder, name, args.images + 1, args.seed + i) for i, name in enumerate(SIZES)}
        warm = read_image(images["500x375"][-1], base.max_pixels)  # the extra image: calibration only
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("calibrating RP (and warming up)", total=len(VOCAB_SIZES) + len(plan) * args.images)
            thresholds = {}
            for size in VOCAB_SIZES:
                thresholds[size] = calibrated_rp_threshold(Segmenter(backbone, vocabs[size], embeddings[size], base),
                                                           warm, args.survivors)
                progress.advance(task)
            segmenters = {key: Segmenter(backbone, vocabs[key[0]], embeddings[key[0]],
                                         base.replace(purify=key[1], rp_threshold=thresholds[key[0]]))
                          for key in plan}
            runs = {key: Measurement() for key in plan}
            for number in range(args.images):
                for key in plan:
                    progress.update(task, description=f"image {number + 1}: {key[0]} classes, "
                                                      f"purify {'on' if key[1] else 'off'}, {key[2]}")
                    time_one(segmenters[key], images[key[2]][number], out_dir, runs[key])
                    progress.advance(task)
    report(console, runs, thresholds, args)


def report(console: Console, runs: dict[tuple, Measurement], thresholds: dict[int, float],
           args: argparse.Namespace) -> None:
    backbone = {name: statistics.median(v for key, run in runs.items() if key[2] == name
                                        for v in run.seconds["backbone"]) for name in SIZES}
    main_run = runs[MAIN]
    stages = Table(title="Per-stage share, 150 classes, purification on, 500x375 images")
    for column in ("stage", "s / image", "share"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for stage in STAGES:
        stages.add_row(stage, f"{main_run.stage(stage):.3f}", f"{main_run.stage(stage) / main_run.per_image:.1%}")
    stages.add_row("total", f"{main_run.per_image:.3f}", "100%")
    console.print(stages)

    ratios = Table(title="Ratios of per-image time (read + segment + write)")
    for column in ("measure", "raw", "pooled backbone", "target", "pooled seconds"):
        ratios.add_column(column, justify="left" if column == "measure" else "right")

    def add(measure: str, key: tuple, reference: tuple, target: str = "") -> None:
        run, ref = runs[key], runs[reference]
        a, b = run.pooled(backbone[key[2]]), ref.pooled(backbone[reference[2]])
        ratios.add_row(measure, f"{run.per_image / ref.per_image:.2f}", f"{a / b:.2f}", target, f"{a:.2f} / {b:.2f}")

    add("purify / no-purify, 150 classes", MAIN, (150, False, "500x375"), "<= 1.25")
    for purify in (True, False):
        for size in VOCAB_SIZES[1:]:
            add(f"{size} / 21 classes, purify {'on' if purify else 'off'}", (size, purify, "500x375"),
                (21, purify, "500x375"), "<= 1.5" if size == 1000 and purify else "")
    add("1000x750 / 500x375, 150 classes, purify on", (150, True, "1000x750"), MAIN)
    console.print(ratios)

    detail = Table(title="Seconds per image by stage (raw), every setting")
    detail.add_column("classes, purify, image")
    for column in (*STAGES, "total", "RP thr", "kept", "groups", "crops"):
        detail.add_column(column, justify="right")
    for (size, purify, name), run in runs.items():
        purification = (f"{thresholds[size]:.4f}", str(run.kept), f"{run.groups / run.images:.1f}",
                        f"{run.crops / run.images:.1f}") if purify else ("-",) * 4
        detail.add_row(f"{size}, {'on' if purify else 'off'}, {name}",
                       *(f"{run.stage(s):.2f}" for s in STAGES), f"{run.per_image:.2f}", *purification)
    console.print(detail)
    console.print(f"median backbone seconds: {', '.join(f'{k} {v:.2f}' for k, v in backbone.items())}. "
                  "groups and crops are per image; 'kept' is the most classes RP kept in one image; "
                  f"AP threshold {args.ap_threshold}.")


if __name__ == "__main__":
    main()
