"""Per-window vs per-image purification on the simulated benchmark: mIoU and time, side by side.

The simulated world (tests/simulated.py) has planted redundancy and ambiguity and a stand-in
backbone, so the numbers show how the two purification scopes behave on the pipeline's logic,
not how they behave with real CLIP weights. Run from the repository root:
    python benchmarks/scope_ablation.py [--images 12] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from freecp.evaluate import confusion_matrix, metrics_from_confusion  # noqa: E402
from freecp.segmenter import Segmenter  # noqa: E402
from tests.simulated import SETTINGS, SimulatedBackbone, make_dataset, make_world  # noqa: E402

CONFIGS = {
    "baseline": {"purify": False},
    "RP, per window": {"ambiguity": False, "scope": "window"},
    "RP, per image": {"ambiguity": False, "scope": "image"},
    "RP+AP, per window": {"scope": "window"},
    "RP+AP, per image": {"scope": "image"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    table = Table(title="simulated benchmark: purification scope")
    table.add_column("setting")
    for seed in args.seeds:
        table.add_column(f"mIoU seed {seed}", justify="right")
    table.add_column("s / image", justify="right")
    table.add_column("time / baseline", justify="right")
    rows: dict[str, list[float]] = {name: [] for name in CONFIGS}
    seconds: dict[str, float] = {name: 0.0 for name in CONFIGS}
    for seed in args.seeds:
        world = make_world(seed=seed)
        data = make_dataset(world, count=args.images, seed=seed)
        backbone = SimulatedBackbone(world, seed=seed)
        for name, overrides in CONFIGS.items():
            segmenter = Segmenter(backbone, world.vocab, world.embeddings(), SETTINGS.replace(**overrides))
            start = time.perf_counter()
            results = [segmenter.segment(image) for image, _ in data]
            seconds[name] += time.perf_counter() - start
            conf = sum(confusion_matrix(r.labels, truth, len(world.vocab))
                       for r, (_, truth) in zip(results, data, strict=True))
            rows[name].append(metrics_from_confusion(conf)["mIoU"])
    per_image = {name: s / (args.images * len(args.seeds)) for name, s in seconds.items()}
    for name, values in rows.items():
        table.add_row(name, *(f"{v:.1f}" for v in values), f"{per_image[name]:.3f}",
                      f"{per_image[name] / per_image['baseline']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
