"""Composing window maps into the label map (ALGORITHM.md section 6), refined with PAMR when
the settings ask.

Upsampling to the window, pasting, dividing by the window count and resizing are all linear and
separable per axis, so ``canvas`` is two small matrix products; ``compose`` runs it in chunks of
classes so memory stays bounded for large vocabularies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from freecp.pamr import local_affinity, propagate
from freecp.settings import SegmentSettings
from freecp.windows import PreparedImage, Windows

COMPOSE_CHUNK = 32  # classes composed at full resolution at a time (bounds memory for big vocabularies)


@lru_cache(maxsize=64)
def linear_resize_matrix(source: int, target: int) -> torch.Tensor:
    """[target, source] weights of PyTorch's linear resize (align_corners=False, no antialias);
    bilinear 2-D resizing is this applied along each axis."""
    eye = torch.eye(source)[None]                             # channels = source positions
    return F.interpolate(eye, size=target, mode="linear", align_corners=False)[0].T


def axis_operator(starts: list[int], grid: int, window: int, resized: int, target: int,
                  valid: int) -> torch.Tensor:
    """[target, len(starts) * grid]: one axis of upsample-to-window, paste, average, keep the
    first ``valid`` positions (drop padding), resize."""
    upsample = linear_resize_matrix(grid, window)             # [window, grid]
    paste = torch.zeros(resized, len(starts) * grid)
    for i, start in enumerate(starts):
        paste[start:start + window, i * grid:(i + 1) * grid] += upsample
    coverage = torch.zeros(resized)
    for start in starts:
        coverage[start:start + window] += 1
    paste /= coverage[:, None]
    paste = paste[:valid]
    return paste if target == valid else linear_resize_matrix(valid, target) @ paste


def canvas(maps: torch.Tensor, windows: Windows, size: tuple[int, int],
           region: tuple[int, int] | None = None) -> torch.Tensor:
    """Window maps [B, C, h, w] -> maps averaged over overlapping windows, resized to ``size``
    (only the top-left ``region`` of the resized image, when given: padding is left out).

    The whole composition is ``A_y @ mosaic @ A_x^T``: the same numbers as doing it step by step,
    without ever holding C full-resolution canvases per window.
    """
    grid_h, grid_w = maps.shape[-2:]
    wh, ww = windows.pixels.shape[-2:]
    region = region or windows.size
    along_y = axis_operator(windows.rows, grid_h, wh, windows.size[0], size[0], region[0])
    along_x = axis_operator(windows.cols, grid_w, ww, windows.size[1], size[1], region[1])
    n_rows, n_cols = len(windows.rows), len(windows.cols)
    mosaic = maps.reshape(n_rows, n_cols, -1, grid_h, grid_w).permute(2, 0, 3, 1, 4)
    mosaic = mosaic.reshape(-1, n_rows * grid_h, n_cols * grid_w)
    return along_y @ mosaic @ along_x.T


def compose(maps: torch.Tensor, classes: torch.Tensor, windows: Windows, original: tuple[int, int],
            num_classes: int, background_from_max: bool, settings: SegmentSettings,
            guide: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average window maps into the image, resize to the original size, refine with PAMR along
    the edges of ``guide`` (when given), take the argmax: labels [H, W] and each class's peak score.

    ``maps`` [B, C, h, w] belong to vocabulary indices ``classes``. With ``background_from_max``
    the background (class 0) scores 1 - max over the classes.
    """
    weights = None if guide is None else local_affinity(guide, settings.pamr_dilations)  # once per image
    best = torch.full(original, -1.0)
    label = torch.zeros(original, dtype=torch.long)
    scores = np.zeros(num_classes, dtype=np.float32)
    for start in range(0, maps.shape[1], COMPOSE_CHUNK):
        chunk = classes[start:start + COMPOSE_CHUNK]
        composed = canvas(maps[:, start:start + COMPOSE_CHUNK], windows, original, windows.valid)
        if weights is not None:
            composed = propagate(composed, weights, settings.pamr_steps, settings.pamr_dilations)
        scores[chunk.numpy()] = composed.flatten(1).amax(1).numpy()
        top, arg = composed.max(dim=0)
        better = top > best
        best = torch.where(better, top, best)
        label = torch.where(better, chunk[arg], label)
    if background_from_max:
        background = 1 - best.clamp_min(0)
        label = torch.where(background > best, torch.zeros_like(label), label)
        scores[0] = float(background.max())
    return label.to(torch.int32).numpy(), scores


def final_labels(maps: torch.Tensor, classes: torch.Tensor, prepared: PreparedImage, num_classes: int,
                 background_from_max: bool, settings: SegmentSettings) -> tuple[np.ndarray, np.ndarray, str]:
    """``compose`` with PAMR when the image carries its guide, and what became of PAMR ("off",
    "applied", "skipped: out of memory"). Should PAMR run out of memory, the image is composed
    without it and the result says so."""
    windows, original = prepared.windows, prepared.size
    if prepared.guide is None:
        return *compose(maps, classes, windows, original, num_classes, background_from_max, settings), "off"
    try:
        composed = compose(maps, classes, windows, original, num_classes, background_from_max, settings,
                           prepared.guide)
        return *composed, "applied"
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
    return (*compose(maps, classes, windows, original, num_classes, background_from_max, settings),
            "skipped: out of memory")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (Python's, a device's, or torch's CPU allocator's)."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)
