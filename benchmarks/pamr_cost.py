"""What PAMR costs per image, at 21 and 150 classes, measured side by side in one run; and its
peak memory at 150 classes on a 2048 x 1024 image.

    python benchmarks/pamr_cost.py                     # ViT-B-16 (random weights), 2 images per case
    python benchmarks/pamr_cost.py --model freecp-tiny # the tiny test model: PAMR's share grows

Time: for voc21 (21 classes) and ade150 (150 classes), synthetic photo-like images of the
benchmark's typical size go through ``Segmenter.segment`` once without and once with PAMR
(NACLIP's 10 steps, dilations 8 and 16), alternating image by image after a warm-up, on ONE torch
thread; the cost is the CPU time of this process (core-seconds), which a shared machine barely
moves. Purification is OFF (``--no-purify``), so every class's map is composed and refined: the
most PAMR can cost at that vocabulary size (with FreeCP on, only the classes that survive
purification are refined). Text embeddings are seeded random vectors (no text tower runs).

Memory: two child processes segment one 2048 x 1024 image with ade150 (purification off), one
without PAMR and one with it (``--pamr-steps 1``: every step allocates the same buffers, so the
peak does not depend on the step count), and report their peak resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from segment_speed import synthetic_image, text_embeddings

from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.defaults import DEFAULT_CLIP_MODEL
from freecp.segmenter import Segmenter
from freecp.settings import settings_for
from freecp.vocab import load_vocabulary

CASES = {"voc21": (375, 500), "ade150": (512, 683)}  # vocabulary -> typical image size (height, width)
MEMORY_CASE = ("ade150", (1024, 2048))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_CLIP_MODEL, help="open_clip model name (random weights)")
    parser.add_argument("--images", type=int, default=2, help="timed images per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-memory", action="store_true", help="leave out the 2048 x 1024 memory check")
    parser.add_argument("--memory-child", choices=["off", "on"], help=argparse.SUPPRESS)
    return parser.parse_args()


def segmenters(model: str, vocab_name: str, seed: int, pamr_steps: int = 10) -> tuple[Segmenter, Segmenter]:
    """The same backbone and embeddings without and with PAMR (purification off)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = create_backbone(ClipModel(model, pretrained="none"))
    vocab = load_vocabulary(vocab_name)
    embeddings = text_embeddings(backbone, vocab, "random", seed)
    settings = settings_for(vocab_name, purify=False)
    return (Segmenter(backbone, vocab, embeddings, settings),
            Segmenter(backbone, vocab, embeddings, settings.replace(pamr=True, pamr_steps=pamr_steps)))


def time_case(model: str, vocab_name: str, size: tuple[int, int], count: int, seed: int) -> dict:
    """Core-seconds per image without and with PAMR, alternating image by image."""
    plain, refined = segmenters(model, vocab_name, seed)
    rng = np.random.default_rng(seed)
    images = [synthetic_image(rng, size) for _ in range(count + 1)]
    plain.segment(images[0])
    refined.segment(images[0])  # warm-up of both
    seconds = {"off": 0.0, "on": 0.0}
    for image in images[1:]:
        for name, segmenter in (("off", plain), ("on", refined)):
            start = time.process_time()
            result = segmenter.segment(image)
            seconds[name] += time.process_time() - start
            assert result.pamr == ("applied" if name == "on" else "off")
    return {k: v / count for k, v in seconds.items()}


def memory_child(model: str, pamr: str, seed: int) -> None:
    """Segment one 2048 x 1024 image and print the peak RSS in MiB (run in a fresh process)."""
    vocab_name, size = MEMORY_CASE
    plain, refined = segmenters(model, vocab_name, seed, pamr_steps=1)
    segmenter = refined if pamr == "on" else plain
    result = segmenter.segment(synthetic_image(np.random.default_rng(seed), size))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"pamr": result.pamr, "peak_mib": peak}))


def measure_memory(model: str, seed: int) -> dict[str, float]:
    peaks = {}
    for pamr in ("off", "on"):
        done = subprocess.run([sys.executable, __file__, "--model", model, "--seed", str(seed), "--memory-child", pamr],
                              capture_output=True, text=True, check=True)
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[pamr] = answer["peak_mib"]
    return peaks


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        memory_child(args.model, args.memory_child, args.seed)
        return
    console = Console()
    table = Table(title=f"PAMR per image, {args.model} (random weights), purification off, one thread, "
                        f"{args.images} images per case")
    for column in ("vocabulary", "image", "without PAMR (core-s)", "with PAMR (core-s)", "ratio", "PAMR adds"):
        table.add_column(column)
    for vocab_name, size in CASES.items():
        cost = time_case(args.model, vocab_name, size, args.images, args.seed)
        table.add_row(f"{vocab_name} ({len(load_vocabulary(vocab_name))} classes)", f"{size[1]} x {size[0]}",
                      f"{cost['off']:.2f}", f"{cost['on']:.2f}", f"{cost['on'] / cost['off']:.2f}x",
                      f"{cost['on'] - cost['off']:.2f} s")
    console.print(table)
    if not args.skip_memory:
        peaks = measure_memory(args.model, args.seed)
        vocab_name, (height, width) = MEMORY_CASE
        console.print(f"peak RSS, {vocab_name} on one {width} x {height} image: without PAMR {peaks['off']:.0f} MiB, "
                      f"with PAMR {peaks['on']:.0f} MiB (+{peaks['on'] - peaks['off']:.0f} MiB)")


if __name__ == "__main__":
    main()
