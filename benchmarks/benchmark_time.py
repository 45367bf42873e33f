"""How long ``freecp benchmark`` takes per dataset: measured per image on this CPU, scaled to the
split's size, and a GPU figure that is an ESTIMATE from a stated assumption, not a measurement.

    python benchmarks/benchmark_time.py                  # ViT-B-16, random weights, 1 image per dataset
    python benchmarks/benchmark_time.py --gpu-speedup 50 # another assumption for the GPU
    python benchmarks/benchmark_time.py --datasets voc21 cityscapes   # the two window geometries only

For each benchmark synthetic images of the dataset's typical size are segmented with the
dataset's preset (window geometry, thresholds) after a warm-up; as in ``segment_speed.py`` the
text embeddings are seeded random vectors and the RP threshold is calibrated so that about
``--survivors`` classes pass, so that purification does real work (with random weights almost
every class fails RP at the preset threshold). Reading and writing the files are included.

The cost is measured as CPU time of this process on ONE torch thread (core-seconds), not wall
time: on a machine shared with other jobs wall time says more about the neighbours than about
freecp, while the CPU time of a single-threaded process barely moves.

GPU estimate: the core-seconds of ``Segmenter.segment`` (backbone, crops, CAM, refinement,
purification, composition: all tensor work) divided by ``--gpu-speedup``, an assumption about a
data-centre GPU in fp32 against one CPU core (about an A100's fp32 rate against one AVX2 core;
nothing here measures a GPU), plus decoding and PNG/JPEG writing at their CPU cost, as they stay
on the host. It ignores kernel-launch and transfer overheads, so it leans low for small images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from segment_speed import calibrated_rp_threshold, synthetic_image, text_embeddings

from freecp.defaults import DEFAULT_CLIP_MODEL
from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.io import read_image, write_mask, write_overlay
from freecp.published import BENCHMARK_ORDER
from freecp.segmenter import Segmenter
from freecp.settings import settings_for
from freecp.vocab import load_vocabulary

# Validation split sizes and a typical image size (height, width) of each benchmark.
SPLITS = {
    "voc21": (1449, (375, 500)), "voc20": (1449, (375, 500)),
    "context60": (5105, (375, 500)), "context59": (5105, (375, 500)),
    "coco_object": (5000, (480, 640)), "coco_stuff": (5000, (480, 640)),
    "ade150": (2000, (512, 683)), "cityscapes": (500, (1024, 2048)),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_CLIP_MODEL, help="open_clip model name (random weights)")
    parser.add_argument("--images", type=int, default=1, help="timed images per dataset")
    parser.add_argument("--survivors", type=int, default=8, help="classes RP should let through")
    parser.add_argument("--gpu-speedup", type=float, default=200.0,
                        help="assumed speed-up of a GPU over one CPU core for the tensor work")
    parser.add_argument("--datasets", nargs="+", choices=BENCHMARK_ORDER, default=BENCHMARK_ORDER,
                        help="measure only these (the first six share one window geometry)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def time_images(segmenter: Segmenter, paths: list[Path], out_dir: Path) -> tuple[float, float]:
    """Mean CPU seconds per image for the whole job (read, segment, write mask and overlay) and
    for ``Segmenter.segment`` alone: the tensor work a GPU would take over."""
    total = tensor_work = 0.0
    for path in paths:
        start = time.process_time()
        image = read_image(path, segmenter.settings.max_pixels)
        before_segment = time.process_time()
        result = segmenter.segment(image)
        tensor_work += time.process_time() - before_segment
        write_mask(out_dir / f"{path.stem}.png", result.labels, len(segmenter.vocab))
        write_overlay(out_dir / f"{path.stem}.jpg", image, result.labels, len(segmenter.vocab))
        total += time.process_time() - start
    return total / len(paths), tensor_work / len(paths)


def main() -> None:
    args = parse_args()
    console = Console(width=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        backbone = create_backbone(ClipModel(args.model, pretrained="none"))
    torch.set_num_threads(1)
    table = Table(title=f"{args.model}, random weights, one torch thread (CPU time); "
                        f"GPU = segment() / {args.gpu_speedup:g} + file I/O (ESTIMATE)")
    for column in ("dataset", "images", "image size", "core-s / image", "segment() share", "core-hours",
                   "GPU s / image (est.)", "GPU minutes (est.)"):
        table.add_column(column)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            count, size = SPLITS[dataset]
            vocab = load_vocabulary(dataset)
            segmenter = Segmenter(backbone, vocab, text_embeddings(backbone, vocab, "random", args.seed),
                                  settings_for(dataset))
            paths = []
            for i in range(args.images + 1):
                paths.append(Path(tmp) / f"{dataset}_{i}.jpg")
                Image.fromarray(synthetic_image(rng, size)).save(paths[-1], quality=90)
            warm = read_image(paths[-1], segmenter.settings.max_pixels)
            threshold = calibrated_rp_threshold(segmenter, warm, args.survivors)  # also the warm-up
            segmenter = Segmenter(backbone, vocab, segmenter.embeddings, segmenter.settings.replace(rp_threshold=threshold))
            cpu, tensor_work = time_images(segmenter, paths[:-1], Path(tmp))
            gpu = tensor_work / args.gpu_speedup + cpu - tensor_work
            table.add_row(dataset, str(count), f"{size[1]}x{size[0]}", f"{cpu:.2f}", f"{tensor_work / cpu:.0%}",
                          f"{cpu * count / 3600:.1f}", f"{gpu:.2f}", f"{gpu * count / 60:.0f}")
            console.print(f"{dataset}: done", style="dim")
    console.print(table)


if __name__ == "__main__":
    main()
