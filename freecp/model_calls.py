"""The scheduling of model calls: each image's stages pause where they need the model, and the
pending requests of all images are served together, one shared batch per kind of call.

Also the device policy of those calls: half-precision autocast when the settings ask for it, and
pinned host memory for the copy to a CUDA device. The backbone's numbers for a window or a crop do
not depend on what it shares a call with (``ClipBackbone.encode_crops``), so batching changes
nothing but speed.
"""

from __future__ import annotations

import enum
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from freecp.backbones import Backbone

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # precision fp32 runs without autocast
Result = TypeVar("Result")


class Call(enum.Enum):
    """What an image's stages ask of the model (served in this order)."""

    DENSE = "dense"   # its windows through the dense path: (features, attention)
    CROPS = "crops"   # its AP crops through the crop encoder: one embedding per crop


class StageTimer:
    """Accumulates wall time per named stage (for the report and the speed benchmark)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)


@dataclass
class ModelCall:
    """What one image's stages need from the model next."""

    kind: Call
    pixels: torch.Tensor              # [n, 3, h, w] windows or crops


@dataclass
class Answer:
    """The model's answer to one ``ModelCall`` and its share of the shared call's time (by its
    number of windows or crops)."""

    value: Any
    seconds: float


Stages = Generator[ModelCall, Answer, Result]  # one image's stages: they yield calls, get answers


def run_together(runs: list[Stages], serve: Callable[[list[ModelCall | None]], list[Answer | None]]) -> list[Result]:
    """Advance every image's stages to its next model call, serve all the calls at once, hand each
    its answer; until every run has returned its result."""
    results: list[Any] = [None] * len(runs)
    calls: list[ModelCall | None] = [None] * len(runs)
    answers: list[Answer | None] = [None] * len(runs)
    pending = list(range(len(runs)))
    while pending:
        for i in pending:
            try:
                calls[i] = runs[i].send(answers[i])
            except StopIteration as finished:
                calls[i], results[i] = None, finished.value
        pending = [i for i in pending if calls[i] is not None]
        answers = serve(calls)
    return results


def serve(calls: list[ModelCall | None], backbone: Backbone, window_batch: int,
          precision: str) -> list[Answer | None]:
    """Answer every pending call, one shared batch per kind."""
    answers: list[Answer | None] = [None] * len(calls)
    servers: dict[Call, Callable[[list[torch.Tensor]], list[Any]]] = {
        Call.DENSE: lambda pixel_sets: dense_forward(backbone, pixel_sets, window_batch),
        Call.CROPS: lambda crop_sets: encode_crops(backbone, crop_sets)}
    for kind, answer_all in servers.items():
        asking = [i for i, call in enumerate(calls) if call is not None and call.kind is kind]
        if not asking:
            continue
        start = time.perf_counter()
        with model_precision(backbone, precision):
            served = answer_all([to_host(calls[i].pixels, backbone) for i in asking])
        seconds = time.perf_counter() - start
        total = sum(len(calls[i].pixels) for i in asking)
        for i, answer in zip(asking, served):
            answers[i] = Answer(answer, seconds * len(calls[i].pixels) / total)
    return answers


def dense_forward(backbone: Backbone, pixel_sets: list[torch.Tensor],
                  window_batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(features, attention) per image; windows of one shape share calls of ``window_batch``."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, pixels in enumerate(pixel_sets):
        by_shape[tuple(pixels.shape[1:])].append(i)
    out: list[Any] = [None] * len(pixel_sets)
    for members in by_shape.values():
        windows = torch.cat([pixel_sets[i] for i in members])
        outputs = [backbone.dense_forward(chunk) for chunk in windows.split(window_batch)]
        counts = [len(pixel_sets[i]) for i in members]
        features = torch.cat([o.features for o in outputs]).split(counts)
        attention = torch.cat([o.attention for o in outputs]).split(counts)
        for i, f, a in zip(members, features, attention):
            out[i] = (f, a)
    return out


def encode_crops(backbone: Backbone, crop_sets: list[torch.Tensor]) -> list[torch.Tensor]:
    """AP crops of every image in one crop-encoder call; embeddings per image."""
    return list(backbone.encode_crops(torch.cat(crop_sets)).split([len(c) for c in crop_sets]))


def model_precision(backbone: Backbone, precision: str) -> AbstractContextManager:
    """The context model calls run in: half-precision autocast when ``precision`` asks for it
    (fp32: none)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type(backbone), dtype=dtype)


def to_host(pixels: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    """Pinned host memory for the copy to a CUDA device; unchanged elsewhere."""
    return pixels.pin_memory() if device_type(backbone) == "cuda" else pixels


def device_type(backbone: Backbone) -> str:
    """The backbone's torch device type; stand-ins without a device count as the CPU."""
    device = getattr(backbone, "device", None)
    return torch.device(device).type if device is not None else "cpu"
