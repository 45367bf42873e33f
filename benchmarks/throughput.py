"""Throughput of folder runs (issue 11): one image at a time vs read-ahead vs batched + read-ahead,
the time outside the backbone, and what a `freecp encode` re-run costs.

    python benchmarks/throughput.py                                   # ViT-B-16, random weights, 20 images
    python benchmarks/throughput.py --images 40 --model ViT-B-32 --batch-images 4
    python benchmarks/throughput.py --model freecp-tiny --images 4    # plumbing check in a minute
    python benchmarks/throughput.py --modes workers                   # one at a time vs the workers mode only
    python benchmarks/throughput.py --device cuda --precision fp16    # on a GPU

One run does, in order:
1. `freecp encode VOCAB` into a fresh store as a subprocess, twice: the first run encodes, the
   second finds every text stored (whole-process seconds of each; the second must not build
   the model).
2. N synthetic 500 x 375 JPEG images, in sub-folders of --round images.
3. Rounds: each mode segments the round's sub-folder with `segment_folder` (files written), then
   the plain dense forward of the same windows runs alone ("backbone only"). The modes take
   turns round by round, so load from other processes on a shared machine falls on all alike.
4. The modes' output files (masks, overlays, records without their timings) are compared
   byte for byte; the script exits 1 if they differ.
Printed: images/s per mode, its speed-up over one at a time, and total / backbone-only seconds.
Targets on the 2-core CPU: total / backbone-only <= 1.15; batched + read-ahead >= 1.2 x one at a time.

Random weights keep nearly every class out at the preset RP threshold, which would make
purification look free; the thresholds default to 0.03 / 0.5 so RP keeps a few classes and AP
crops are encoded, as on real images.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.segment_speed import synthetic_image  # noqa: E402
from freecp.defaults import DEFAULT_CLIP_MODEL
from freecp.io import read_image  # noqa: E402
from freecp.jobs import ClipModel, SegmentJob  # noqa: E402
from freecp.build import build_segmenter  # noqa: E402
from freecp.pipeline import segment_folder  # noqa: E402
from freecp.segmenter import Segmenter  # noqa: E402
from freecp.settings import settings_for  # noqa: E402
from freecp.threads import apply_thread_policy, available_cores  # noqa: E402
from freecp.vocab import load_vocabulary  # noqa: E402
from tests.run_outputs import run_outputs  # noqa: E402

IMAGE_SIZE = (375, 500)  # height, width: a VOC-sized photo


@dataclass
class Mode:
    name: str
    prefetch: int
    batch_images: int
    workers: int = 1
    seconds: float = 0.0
    images: int = 0
    groups: int = 0


@dataclass
class Backbone:
    seconds: float = 0.0
    windows: int = 0
    images: int = 0


@dataclass
class Encode:
    first: float
    rerun: float
    rerun_cpu: float      # user + system seconds of the re-run process (what load does not inflate)
    rerun_line: str
    torch_free: bool


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--round", type=int, default=4, help="images per round (modes take turns per round)")
    parser.add_argument("--model", default=DEFAULT_CLIP_MODEL)
    parser.add_argument("--pretrained", default="none", help="pretrained tag; none = random weights")
    parser.add_argument("--vocab", default="voc21")
    parser.add_argument("--batch-images", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--modes", default="read-ahead,batched,workers",
                        help="modes to compare with one at a time (comma-separated: read-ahead, batched, workers)")
    parser.add_argument("--workers", type=int, default=available_cores(),
                        help="model calls at once in the workers mode (default: the cores)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rp-threshold", type=float, default=0.03)
    parser.add_argument("--ap-threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def timed_encode(args: argparse.Namespace, store: Path) -> Encode:
    """Two timed `freecp encode` processes on the same store, then a third under -X importtime
    that shows what a re-run loads."""
    command = [sys.executable, "-m", "freecp", "encode", args.vocab, "--store", str(store), "--model", args.model,
               "--pretrained", args.pretrained, "--device", args.device, "--no-progress"]
    seconds, cpu, runs = [], [], []
    for _ in range(2):
        start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        runs.append(subprocess.run(command, capture_output=True, text=True, check=True))
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
    check = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in check.stderr.splitlines()
                if line.startswith("import time:")}
    return Encode(seconds[0], seconds[1], cpu[1], runs[1].stdout.strip(), not imported & {"torch", "open_clip"})


def write_rounds(root: Path, count: int, per_round: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folders = []
    for start in range(0, count, per_round):
        folder = root / f"round{len(folders):02d}"
        folder.mkdir(parents=True)
        for i in range(start, min(start + per_round, count)):
            Image.fromarray(synthetic_image(rng, IMAGE_SIZE)).save(folder / f"image{i:03d}.jpg", quality=90)
        folders.append(folder)
    return folders


def backbone_only(segmenter: Segmenter, folder: Path, into: Backbone) -> None:
    """The dense forward of each image's windows, in the pipeline's calls, and nothing else."""
    for path in sorted(folder.glob("*.jpg")):
        windows = segmenter.prepare(read_image(path, segmenter.settings.max_pixels)).windows.pixels
        start = time.perf_counter()
        with segmenter.model_precision():
            for chunk in windows.split(segmenter.settings.window_batch):
                segmenter.backbone.dense_forward(chunk)
        if segmenter.backbone.device.type == "cuda":
            torch.cuda.synchronize()
        into.seconds += time.perf_counter() - start
        into.windows += len(windows)
        into.images += 1


def main() -> int:
    args = parse_args()
    policy = apply_thread_policy(segmenters=1)
    print(f"machine: {policy.line()}; torch {torch.__version__}; device {args.device}; model {args.model} "
          f"({args.pretrained}); {args.images} images {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]}; precision {args.precision}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        encode = timed_encode(args, root / "store")
        print(f"encode: first run {encode.first:.1f} s, re-run {encode.rerun:.2f} s ({encode.rerun_cpu:.2f} s CPU) "
              f"(ratio {encode.rerun / encode.first:.3f}; torch/open_clip not imported: {encode.torch_free})")
        folders = write_rounds(root / "images", args.images, args.round, args.seed)
        settings = settings_for(args.vocab, rp_threshold=args.rp_threshold, ap_threshold=args.ap_threshold,
                                precision=args.precision)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            job = SegmentJob(ClipModel(args.model, pretrained=args.pretrained, device=args.device),
                             store=str(root / "store"), no_encode=True)
            base = build_segmenter(load_vocabulary(args.vocab), job, settings)
        candidates = {"read-ahead": Mode("read-ahead", args.prefetch, 1),
                      "batched": Mode(f"batched x{args.batch_images} + read-ahead", args.prefetch, args.batch_images),
                      "workers": Mode(f"read-ahead + {args.workers} workers", args.prefetch, 1, args.workers)}
        modes = [Mode("one at a time", 0, 1)] + [candidates[name] for name in args.modes.split(",")]
        segmenters = {m.name: Segmenter(base.backbone, base.vocab, base.embeddings,
                                        settings.replace(prefetch=m.prefetch, batch_images=m.batch_images,
                                                         workers=m.workers))
                      for m in modes}
        warm_up = read_image(next(folders[0].glob("*.jpg")), settings.max_pixels)
        segmenters[modes[0].name].segment(warm_up)
        plain = Backbone()
        for number, folder in enumerate(folders, start=1):
            for mode in modes:
                start = time.perf_counter()
                summary = segment_folder(segmenters[mode.name], folder, root / "out" / mode.name / folder.name)
                mode.seconds += time.perf_counter() - start
                mode.images += summary.count("done")
                mode.groups += sum(len(r.ambiguity_groups) for r in summary.records)
            apply_thread_policy(segmenters=1)  # as the one-at-a-time mode ran
            backbone_only(segmenters[modes[0].name], folder, plain)
            print(f"round {number}/{len(folders)}: " + ", ".join(
                f"{m.name} {m.images / m.seconds:.3f} img/s" for m in modes)
                + f", backbone only {plain.images / plain.seconds:.3f} img/s", flush=True)
        reference = run_outputs(root / "out" / modes[0].name)
        identical = all(run_outputs(root / "out" / m.name) == reference for m in modes[1:])

    per_image_backbone = plain.seconds / plain.images
    print(f"\nbackbone only: {per_image_backbone:.3f} s/image ({plain.windows / plain.images:.0f} windows each)")
    print(f"{'mode':34} {'img/s':>8} {'vs one':>8} {'s/img':>8} {'total/backbone':>15}")
    for mode in modes:
        per_image = mode.seconds / mode.images
        print(f"{mode.name:34} {1 / per_image:8.3f} {modes[0].seconds / mode.seconds:8.3f} {per_image:8.3f} "
              f"{per_image / per_image_backbone:15.3f}")
    print(f"ambiguity groups per image: {modes[0].groups / modes[0].images:.1f}")
    print(f"encode re-run: {encode.rerun:.2f} s whole process, {encode.rerun_cpu:.2f} s CPU ({encode.rerun_line})")
    print(f"outputs identical across modes: {identical}")
    return 0 if identical and encode.torch_free else 1


if __name__ == "__main__":
    sys.exit(main())
