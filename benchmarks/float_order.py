"""What the float order costs: ``fast`` against ``reference``, side by side in one run.

    python benchmarks/float_order.py                      # ViT-B-16, random weights
    python benchmarks/float_order.py --templates 80       # encode voc21's class names in full (slow)
    python benchmarks/float_order.py --model freecp-tiny  # plumbing check in seconds

1. Seconds per image, at voc21 and at ade150, on the parity fixtures' images
   (``data/voc-mini/JPEGImages`` under ``--shared``, default ``../shared``, when present) and on the shipped sample photos. The
   two orders differ on the image side only in refinement (one batched product against one
   matrix-vector product per class), so besides the whole image the refine stage is shown; the
   backbone, most of an image's time, does the same work in both. The orders take turns image
   by image (which goes first alternates), so load from other processes falls on both alike.
2. Encoding voc21 with its descriptions (the reference's 400, from the parity fixtures, when
   present) through the text tower in each order: the class names under ``--templates`` of the
   80 prompt templates (a subset keeps the run short on a shared CPU; the full encode's time is
   extrapolated per prompt and marked so), then every description.

Text embeddings for the segment timings are seeded random unit vectors (the text side does not
change an image's work), and RP's threshold is calibrated so about ``--survivors`` classes pass,
with a low AP threshold, so purification really runs with random weights (segment_speed.py's rule).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.segment_speed import calibrated_rp_threshold, text_embeddings  # noqa: E402
from freecp.clip import ClipBackbone  # noqa: E402
from freecp.build import create_backbone  # noqa: E402
from freecp.jobs import ClipModel  # noqa: E402
from freecp.io import read_image  # noqa: E402
from freecp.resources import sample_images  # noqa: E402
from freecp.segmenter import Segmenter  # noqa: E402
from freecp.settings import FLOAT_ORDERS, SegmentSettings, settings_for  # noqa: E402
from freecp.templates import IMAGENET_TEMPLATES  # noqa: E402
from freecp.vocab import load_vocabulary  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the checkout, as the tests
PARITY_IMAGES = Path("data") / "voc-mini" / "JPEGImages"
VOC21_DESCRIPTIONS = Path("parity") / "fixtures" / "voc21_reference_descriptions.json"
VOCABULARIES = ("voc21", "ade150")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights)")
    parser.add_argument("--templates", type=int, default=8, help="prompt templates per class name in the encode timing")
    parser.add_argument("--survivors", type=int, default=8, help="classes RP should let through")
    parser.add_argument("--ap-threshold", type=float, default=0.5)
    parser.add_argument("--skip-encode", action="store_true", help="time the segmentation only")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (parity images, descriptions)")
    return parser.parse_args()


def backbones(model: str) -> dict[str, ClipBackbone]:
    """One set of weights, seen through each float order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights, as asked
        base = create_backbone(ClipModel(model, pretrained="none"))
    return {order: ClipBackbone(base.model, base.tokenizer, base.model_name, base.model_key,
                                architecture=base.architecture, float_order=order) for order in FLOAT_ORDERS}


def images(shared: Path) -> list[tuple[str, np.ndarray]]:
    folder = shared / PARITY_IMAGES
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        print(f"note: {folder} not found; timing the sample photos only")
    paths += sorted(sample_images().glob("*.jpg"))
    return [(path.name, read_image(path, SegmentSettings.max_pixels)) for path in paths]


def segment_timings(models: dict[str, ClipBackbone], args: argparse.Namespace) -> None:
    photos = images(args.shared)
    print(f"\n1. seconds per image, fast vs reference ({len(photos)} images, torch threads {torch.get_num_threads()})")
    print(f"{'vocab':7} {'image':16} {'fast s':>8} {'ref s':>8} {'ref/fast':>9} "
          f"{'fast refine':>12} {'ref refine':>11} {'refine ref/fast':>16}")
    for name in VOCABULARIES:
        vocab = load_vocabulary(name)
        embeddings = text_embeddings(models["fast"], vocab, "random", seed=0)
        base = settings_for(name, ap_threshold=args.ap_threshold)
        threshold = calibrated_rp_threshold(Segmenter(models["fast"], vocab, embeddings, base), photos[0][1],
                                            args.survivors)
        segmenters = {order: Segmenter(model, vocab, embeddings, base.replace(rp_threshold=threshold, float_order=order))
                      for order, model in models.items()}
        totals: dict[str, list[float]] = {order: [] for order in models}
        refines: dict[str, list[float]] = {order: [] for order in models}
        for index, (label, image) in enumerate(photos):
            turn = list(models) if index % 2 == 0 else list(reversed(models))
            results = {}
            for order in turn:
                start = time.perf_counter()
                results[order] = segmenters[order].segment(image)
                totals[order].append(time.perf_counter() - start)
                refines[order].append(results[order].timings.get("refine", 0.0))
            same = np.array_equal(results["fast"].labels, results["reference"].labels)
            print(f"{name:7} {label:16} {totals['fast'][-1]:8.2f} {totals['reference'][-1]:8.2f} "
                  f"{totals['reference'][-1] / totals['fast'][-1]:9.3f} {refines['fast'][-1]:12.3f} "
                  f"{refines['reference'][-1]:11.3f} {refines['reference'][-1] / refines['fast'][-1]:16.2f}"
                  f"{'' if same else '  (labels differ)'}")
        print(f"{name:7} {'median':16} {statistics.median(totals['fast']):8.2f} "
              f"{statistics.median(totals['reference']):8.2f} "
              f"{statistics.median(r / f for r, f in zip(totals['reference'], totals['fast'])):9.3f} "
              f"{statistics.median(refines['fast']):12.3f} {statistics.median(refines['reference']):11.3f} "
              f"{statistics.median(r / f for r, f in zip(refines['reference'], refines['fast'])):16.2f}"
              f"   (RP threshold {threshold:.4f}, AP {args.ap_threshold})")


def encode_timings(models: dict[str, ClipBackbone], args: argparse.Namespace) -> None:
    vocab = load_vocabulary("voc21")
    templates = IMAGENET_TEMPLATES[:args.templates]
    prompts = [template.format(name) for name in vocab.queries for template in templates]
    descriptions, source = [], args.shared / VOC21_DESCRIPTIONS
    if source.is_file():
        descriptions = [text for texts in json.loads(source.read_text()).values() for text in texts]
    else:
        print(f"note: {source} not found; class names only")
    full = len(vocab.queries) * len(IMAGENET_TEMPLATES)
    print(f"\n2. encoding voc21: {len(prompts)} class-name prompts ({len(vocab.queries)} names x "
          f"{len(templates)} of {len(IMAGENET_TEMPLATES)} templates) and {len(descriptions)} descriptions")
    seconds: dict[str, dict[str, float]] = {}
    for round_ in range(2):  # fast first, then reference first: both see the same load on average
        for order in (FLOAT_ORDERS if round_ == 0 else tuple(reversed(FLOAT_ORDERS))):
            for label, texts in (("names", prompts), ("descriptions", descriptions)):
                if not texts:
                    continue
                start = time.perf_counter()
                models[order].encode_texts(texts)
                seconds.setdefault(order, {}).setdefault(label, 0.0)
                seconds[order][label] += (time.perf_counter() - start) / 2
    for order, taken in seconds.items():
        names, described = taken.get("names", 0.0), taken.get("descriptions", 0.0)
        whole = names * full / len(prompts) + described
        print(f"{order:9}: names {names:7.1f} s ({names / len(prompts) * 1000:5.1f} ms/prompt), descriptions "
              f"{described:6.1f} s ({described / max(1, len(descriptions)) * 1000:5.1f} ms/text); voc21 with "
              f"descriptions in full: {whole:6.1f} s{' (extrapolated)' if len(prompts) < full else ''}")
    fast, reference = seconds["fast"], seconds["reference"]
    for label in fast:
        print(f"reference / fast, {label}: {reference[label] / fast[label]:.2f}")


def main() -> None:
    args = parse_args()
    print(f"model {args.model} (random weights); load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    models = backbones(args.model)
    segment_timings(models, args)
    if not args.skip_encode:
        encode_timings(models, args)
    print(f"\nload average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
