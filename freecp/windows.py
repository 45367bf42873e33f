"""The input side of the method (ALGORITHM.md sections 2, 6 and 10): an RGB image resized and
normalised as CLIP expects, cut into sliding windows, and crops cut from a window for AP.

Plain functions on tensors; no model is involved, so a loader thread can run them ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = torch.tensor([122.771, 116.746, 104.094]).view(3, 1, 1)
CLIP_STD = torch.tensor([68.501, 66.632, 70.323]).view(3, 1, 1)
MAX_LONG_SIDE = 2048

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in patch units


@dataclass
class Windows:
    """The sliding windows of one resized image: a full grid of row starts x column starts."""

    image: torch.Tensor               # [3, H, W] the resized, normalised image (padded, see valid)
    pixels: torch.Tensor              # [B, 3, wh, ww] its windows, row-major over (rows, cols)
    rows: list[int]                   # y0 of each window row in the resized image
    cols: list[int]                   # x0 of each window column
    valid: tuple[int, int]            # the resized image's own size; beyond it is padding

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.image.shape[-2:])

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.rows for x in self.cols]


@dataclass
class PreparedImage:
    """An image resized, normalised and cut into windows (``Segmenter.prepare``): all the input
    work, which a loader thread can do while the model runs on the previous image."""

    size: tuple[int, int]             # the original image's (height, width)
    windows: Windows
    seconds: float                    # time the preparation took
    guide: torch.Tensor | None = None  # [3, H, W] the normalised image at its own size, for PAMR


def normalise(image: np.ndarray) -> torch.Tensor:
    """An HxWx3 uint8 RGB image as CLIP's normalised [3, H, W] float32."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (pixels - CLIP_MEAN) / CLIP_STD


def preprocess(image: np.ndarray, short_side: int) -> torch.Tensor:
    """Keep-ratio resize to (2048, short_side), then CLIP normalisation, exactly as the reference's
    mmcv pipeline: OpenCV's bilinear resize on the 8-bit image (its rounding included)."""
    h, w = image.shape[:2]
    factor = min(MAX_LONG_SIDE / max(h, w), short_side / min(h, w))
    size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
    resized = cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return normalise(resized)


def starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins along one axis; the last window is shifted to end at the border."""
    steps = max(size - window + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, size - window) for i in range(steps)})


def cut_windows(pixels: torch.Tensor, patch: int, window: int, stride: int) -> Windows:
    """Sliding windows of a resized image [3, H, W]; a side shorter than one patch (extreme aspect
    ratios: the long side is capped first) is padded with the mean colour to a patch, which
    composition crops off again."""
    valid = tuple(pixels.shape[-2:])
    pixels = F.pad(pixels, (0, max(0, patch - valid[1]), 0, max(0, patch - valid[0])))
    height, width = pixels.shape[-2:]
    wh, ww = min(window, height), min(window, width)
    rows = starts(height, wh, stride)
    cols = starts(width, ww, stride)
    crops = torch.stack([pixels[:, y:y + wh, x:x + ww] for y in rows for x in cols])
    return Windows(pixels, crops, rows, cols, valid)


def crop(pixels: torch.Tensor, box: Box, patch: int, crop_size: int) -> torch.Tensor:
    """The pixels [3, H, W] under a box in patch units, resized bilinearly to a square for AP."""
    x0, y0, x1, y1 = box
    region = pixels[:, y0 * patch:y1 * patch, x0 * patch:x1 * patch][None]
    return F.interpolate(region, size=(crop_size, crop_size), mode="bilinear", align_corners=False)[0]
