"""Attention-affinity refinement of class maps (CLIP-ES style; ALGORITHM.md sections 4 and 7).

Boxes from a score map: the map is quantised to 0..255 and thresholded above int(0.4 * max); each
8-connected component of the mask gives one bounding box (x0, y0, x0 + w, y0 + h), clipped to
size - 1. For refinement's box masks that equals the union of the bounding boxes of OpenCV's
external and internal contours (an internal contour lies inside its component's box), and lets
every class of every window be labelled in one ``scipy.ndimage.label`` call instead of a Python
loop over classes. Ambiguity purification crops each box, so there the two rules differ: the
reference crops one box per contour, hole borders included (``contour_boxes``).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from scipy import ndimage

SINKHORN_ROUNDS = 3
REFINE_EPS = 1e-8  # added to each refined map's range (the reference's; fits the fixtures to 1e-9)


def affinity_transition(attention: torch.Tensor) -> torch.Tensor:
    """Attention [B, N, N] -> symmetric, squared transition matrix [B, N, N]."""
    trans = attention.clamp_min(0)
    for _ in range(SINKHORN_ROUNDS):
        trans = trans / trans.sum(dim=-2, keepdim=True).clamp_min(1e-12)  # columns
        trans = trans / trans.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # rows
    trans = (trans + trans.transpose(-1, -2)) / 2
    return trans @ trans


def quantised_masks(maps: torch.Tensor, threshold: float) -> np.ndarray:
    """Boolean masks of maps [..., h, w] in [0, 1]: 0..255 quantised, > int(threshold * max)
    (OpenCV's binary threshold is strict)."""
    quant = (maps.clamp(0, 1) * 255).to(torch.uint8).numpy()
    peak = quant.reshape(*quant.shape[:-2], -1).max(axis=-1)
    cut = (threshold * peak.astype(np.float64)).astype(np.int64)[..., None, None]
    return quant > cut


def component_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the 8-connected components of stacked masks [M, h, w].

    Returns (owner [C], boxes [C, 4] as x0, y0, x1, y1 clipped to size - 1): box c belongs to
    mask owner[c]. Masks without any component own no box.
    """
    h, w = masks.shape[-2:]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # connect within a map, never across maps
    labels, count = ndimage.label(masks, structure=structure)
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
    slices = ndimage.find_objects(labels)
    owner = np.array([s[0].start for s in slices], dtype=np.int64)
    y0 = np.array([s[1].start for s in slices])
    x0 = np.array([s[2].start for s in slices])
    y1 = np.minimum(np.array([s[1].stop for s in slices]), h - 1)
    x1 = np.minimum(np.array([s[2].stop for s in slices]), w - 1)
    return owner, np.stack([x0, y0, x1, y1], axis=1)


def contour_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes of EVERY contour of a binary mask [h, w] (outer borders and hole borders), in
    OpenCV's order, as x0, y0, x1, y1 clipped to size - 1: the reference's boxes for AP crops."""
    h, w = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours:
        x, y, width, height = cv2.boundingRect(contour)
        boxes.append((x, y, min(x + width, w - 1), min(y + height, h - 1)))
    return boxes


def box_masks(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per map, the union of its component boxes as a float mask: [M, h, w] -> [M, h, w]."""
    h, w = maps.shape[-2:]
    owner, boxes = component_boxes(quantised_masks(maps, threshold))
    out = torch.zeros(maps.shape[0], h, w)
    if len(owner):
        rows, cols = torch.arange(h), torch.arange(w)
        b = torch.from_numpy(boxes)
        in_y = (rows[None] >= b[:, 1:2]) & (rows[None] < b[:, 3:4])
        in_x = (cols[None] >= b[:, 0:1]) & (cols[None] < b[:, 2:3])
        filled = (in_y[:, :, None] & in_x[:, None, :]).float()
        out.index_add_(0, torch.from_numpy(owner), filled)
    return out.clamp_max(1)


def propagate(maps: torch.Tensor, transition: torch.Tensor, threshold: float,
              reference_order: bool = False) -> torch.Tensor:
    """transition @ (box mask * map) per class: maps [B, K, h, w] (global-min-max normalised),
    transition [B, N, N] -> [B, K, N], before any normalisation.

    By default one matrix product serves all classes of a window. ``reference_order`` instead
    takes one matrix-vector product per class, as the reference does: its float32 sums then
    come out bit for bit (a product's summation order depends on its shapes), which decides
    the refined maps that random weights leave nearly flat. Masking the map instead of the
    transition's columns gives the same products (the mask is 0 or 1).
    """
    batch, classes, h, w = maps.shape
    boxes = box_masks(maps.reshape(batch * classes, h, w), threshold).reshape(batch, classes, h * w)
    masked = boxes * maps.reshape(batch, classes, h * w)
    if not reference_order:
        return masked @ transition.transpose(-1, -2)  # [B, K, N]: sum_q T(p, q) * masked(q)
    # The reference's maps lie query-minor in memory ([N, Q]), so each map reaches the product as
    # a column with stride Q, and a CPU matmul takes another kernel (and summation order) for
    # that than for a contiguous column. One window at a time: broadcasting T over the classes
    # of a window is a stride-0 view, across windows it would copy T once per class.
    pixel_major = masked.transpose(1, 2).contiguous()  # [B, N, K]
    columns = [torch.as_strided(p, (classes, h * w, 1), (1, classes, classes)) for p in pixel_major]
    return torch.stack([torch.matmul(t, c)[..., 0] for t, c in zip(transition, columns)])


def refine(maps: torch.Tensor, transition: torch.Tensor, threshold: float,
           reference_order: bool = False) -> torch.Tensor:
    """Refined maps: ``propagate``, then per-class min-max as the reference,
    (x - min) / (max - min + 1e-8), so a nearly flat map stays below 1."""
    refined = propagate(maps, transition, threshold, reference_order)
    low = refined.min(dim=-1, keepdim=True).values
    high = refined.max(dim=-1, keepdim=True).values
    return ((refined - low) / (high - low + REFINE_EPS)).reshape(maps.shape)
