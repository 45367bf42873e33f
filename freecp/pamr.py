"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), in bounded memory.

Each class's score map is replaced, ``steps`` times, by a weighted average of its values at the
8 neighbours of every pixel on 3x3 grids of each dilation. The weights come from the image: for
colour channel c, ``-|x_i - x_j| / (1e-8 + 0.1 * std_i)`` with ``std_i`` the (unbiased) standard
deviation of the channel over the pixel's grids, centre included once per dilation; averaged over
the channels and softmaxed over the neighbours, so every step is a convex combination and a map
that is zero stays zero. Borders repeat the edge pixel (replicate padding).

The operations and their order are those of the module NACLIP applies (checked against its
outputs in ``tests/test_pamr.py``), so the float32 results agree with it. Work is done in bands
of rows and chunks of classes of at most ``budget`` bytes of temporaries; the only full-size
arrays are the affinities ([neighbours, H, W]) and two copies of the maps being refined.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from freecp.defaults import PAMR_WORK_BYTES

# Neighbour offsets of a 3x3 grid in row-major order; the centre is index 4.
_GRID = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_NEIGHBOURS = tuple(offset for offset in _GRID if offset != (0, 0))
# Bands hold a multiple of this many pixels. Torch's vectorised kernels treat the last few
# elements of a row-major array (the tail past the last full vector) with scalar code that rounds
# differently (exp in the softmax, the order of sums); aligned bands put the same pixels there as
# the whole image does, so banded results equal unbanded ones bit for bit.
_BAND_ALIGN = 256


def pamr(image: torch.Tensor, scores: torch.Tensor, steps: int, dilations: Sequence[int],
         budget: int = PAMR_WORK_BYTES) -> torch.Tensor:
    """Refine ``scores`` [K, H, W] along the edges of ``image`` [3, H, W] (normalised, float32)."""
    if scores.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"score maps {tuple(scores.shape[-2:])} and image {tuple(image.shape[-2:])} differ in size")
    affinity = local_affinity(image, dilations, budget)
    return propagate(scores.float(), affinity, steps, dilations, budget)


def local_affinity(image: torch.Tensor, dilations: Sequence[int], budget: int = PAMR_WORK_BYTES) -> torch.Tensor:
    """Softmaxed neighbour weights [8 * len(dilations), H, W], dilation by dilation."""
    channels, height, width = image.shape
    reach = max(dilations)
    padded = _pad(image.float(), reach)
    per_row = 4 * width * channels * len(_GRID) * len(dilations) * 4  # neighbour stacks and their temporaries
    out = torch.empty(len(_NEIGHBOURS) * len(dilations), height, width, device=image.device)
    for top, bottom in _bands(height, width, budget // per_row):
        centre = padded[:, reach + top:reach + bottom, reach:reach + width]
        grid = _shifted(padded, reach, top, bottom, width, dilations, _GRID)            # [C, 9D, h, w]
        spread = grid.std(dim=1, keepdim=True)
        distance = (centre[:, None] - _shifted(padded, reach, top, bottom, width, dilations, _NEIGHBOURS)).abs()
        weights = (-distance / (1e-8 + 0.1 * spread)).mean(dim=0, keepdim=True)
        out[:, top:bottom] = torch.softmax(weights, dim=1)[0]
    return out


def propagate(scores: torch.Tensor, affinity: torch.Tensor, steps: int, dilations: Sequence[int],
              budget: int = PAMR_WORK_BYTES) -> torch.Tensor:
    """``steps`` rounds of replacing each map by its affinity-weighted neighbour average.

    The weighted neighbour values of a chunk of classes and a band of rows go into one buffer,
    allocated once and reused (fresh large temporaries at every step cost more than the sums).
    """
    classes, height, width = scores.shape
    reach = max(dilations)
    neighbours = len(affinity)
    rows_of_classes = max(1, budget // (neighbours * width * 4))
    chunk = max(1, min(classes, rows_of_classes // height))
    bands = list(_bands(height, width, height if chunk > 1 else rows_of_classes))
    shifts = [(dy * d, dx * d) for d in dilations for dy, dx in _NEIGHBOURS]
    buffer = torch.empty(chunk * neighbours * max(bottom - top for top, bottom in bands) * width,
                         device=scores.device)
    current = scores.contiguous()
    for _ in range(steps):
        following = torch.empty_like(current)
        for first in range(0, classes, chunk):
            padded = _pad(current[first:first + chunk], reach)
            count = len(padded)
            for top, bottom in bands:
                weighted = buffer[:count * neighbours * (bottom - top) * width].view(
                    count, neighbours, bottom - top, width)
                for n, (dy, dx) in enumerate(shifts):
                    torch.mul(padded[:, reach + top + dy:reach + bottom + dy, reach + dx:reach + dx + width],
                              affinity[n, top:bottom], out=weighted[:, n])
                following[first:first + count, top:bottom] = weighted.sum(dim=1)
        current = following
    return current


def _pad(maps: torch.Tensor, reach: int) -> torch.Tensor:
    """[N, H, W] -> [N, H + 2 reach, W + 2 reach], edges repeated."""
    return F.pad(maps[None], [reach] * 4, mode="replicate")[0]


def _shifted(padded: torch.Tensor, reach: int, top: int, bottom: int, width: int, dilations: Sequence[int],
             offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[N, len(offsets) * len(dilations), bottom - top, width]: rows top..bottom of the unpadded
    maps, shifted by each offset times each dilation (dilation-major)."""
    return torch.stack([padded[:, reach + top + dy * d:reach + bottom + dy * d, reach + dx * d:reach + dx * d + width]
                        for d in dilations for dy, dx in offsets], dim=1)


def _bands(height: int, width: int, rows: int) -> Iterator[tuple[int, int]]:
    """Row ranges of about ``rows`` rows (at least one aligned unit; see ``_BAND_ALIGN``)."""
    unit = _BAND_ALIGN // math.gcd(width, _BAND_ALIGN)
    rows = max(unit, rows // unit * unit)
    for top in range(0, height, rows):
        yield top, min(height, top + rows)
