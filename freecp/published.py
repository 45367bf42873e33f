"""The paper's published mIoU table, as data: the one place freecp keeps those numbers.

FreeCP (ICCV 2025), ViT-B/16 with OpenAI's CLIP weights, mIoU in percent on the eight
benchmarks' validation splits (ALGORITHM.md section 9). ``benchmark`` compares a run with the
row of the same method; the averages are the paper's own, not recomputed here.
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLISHED_SETUP = "ViT-B/16, OpenAI weights"
PUBLISHED_MODELS = ("ViT-B-16", "ViT-B-16-quickgelu")  # open_clip names of that architecture
BENCHMARK_ORDER = ("voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade150",
                   "coco_stuff")  # the paper's column order
COLUMN_TITLES = {"voc21": "VOC21", "context60": "PC60", "coco_object": "Obj", "voc20": "VOC20",
                 "cityscapes": "City", "context59": "PC59", "ade150": "ADE", "coco_stuff": "Stuff"}


@dataclass(frozen=True)
class PublishedRow:
    """One method of the table and the freecp configuration that runs it."""

    method: str
    variant: str     # --variant
    purify: bool     # False: the method alone, without FreeCP's refinement and purification
    miou: dict[str, float]
    average: float

    def __post_init__(self) -> None:
        if tuple(self.miou) != BENCHMARK_ORDER:
            raise ValueError(f"{self.method}: one number per benchmark, in the paper's order")


def _row(method: str, variant: str, purify: bool, *numbers: float) -> PublishedRow:
    *per_benchmark, average = numbers
    return PublishedRow(method, variant, purify, dict(zip(BENCHMARK_ORDER, per_benchmark, strict=True)), average)


PUBLISHED: tuple[PublishedRow, ...] = (
    #                                                  VOC21 PC60  Obj  VOC20 City  PC59  ADE Stuff  Avg
    _row("SCLIP", "sclip", False,                      59.1, 30.4, 30.5, 80.4, 32.2, 34.2, 16.1, 22.4, 38.2),
    _row("SCLIP + FreeCP", "sclip", True,              65.8, 35.3, 37.2, 84.3, 33.3, 38.0, 18.4, 24.9, 42.1),
    _row("ClearCLIP + FreeCP", "clearclip", True,      64.5, 35.7, 36.9, 81.5, 34.4, 39.3, 18.9, 26.1, 42.2),
    _row("MaskCLIP + FreeCP", "maskclip", True,        64.4, 34.7, 36.2, 84.1, 32.5, 36.6, 17.6, 23.3, 41.2),
)


def published_row(variant: str, purify: bool) -> PublishedRow | None:
    """The row a run with this last-block variant and purification switch should be compared to."""
    return next((row for row in PUBLISHED if row.variant == variant and row.purify == purify), None)
