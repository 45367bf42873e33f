"""Redundancy and ambiguity purification on refined class maps (ALGORITHM.md section 5).

Everything here works on tensors of all classes at once. The only loops are over ambiguity
groups and boxes, which are few; crops for all groups are encoded by the caller in one batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from freecp.refine import component_boxes, contour_boxes, quantised_masks


def self_consistency(cam: torch.Tensor, refined: torch.Tensor, formula: str = "half-dice") -> torch.Tensor:
    """Per-class agreement of the softmax map and its refinement, over the last dimension.

    ``half-dice`` is the reference code's sum(XY) / (sum X + sum Y) (never above 0.5; the preset
    thresholds are tuned for it); ``soft-iou`` is the paper's sum(XY) / sum(X + Y - XY).
    """
    inter = (cam * refined).sum(dim=-1)
    if formula == "half-dice":
        return inter / (cam.sum(dim=-1) + refined.sum(dim=-1) + 1e-8)
    if formula == "soft-iou":
        return inter / ((cam + refined - cam * refined).sum(dim=-1) + 1e-8)
    raise ValueError(f"unknown self-consistency formula {formula!r}")


def pairwise_soft_iou(maps: torch.Tensor) -> torch.Tensor:
    """P[i, j] = sum min(M_i, M_j) / sum max(M_i, M_j) for maps [K, N] -> [K, K]."""
    lows = torch.minimum(maps[:, None], maps[None]).sum(-1)
    highs = torch.maximum(maps[:, None], maps[None]).sum(-1)
    return lows / highs.clamp_min(1e-8)


def ambiguity_groups(overlap: torch.Tensor, threshold: float) -> list[list[int]]:
    """Connected components (size > 1) of the graph with an edge where overlap >= threshold."""
    adjacency = csr_matrix((overlap >= threshold).numpy())
    _, labels = connected_components(adjacency, directed=False)
    groups = [np.flatnonzero(labels == g).tolist() for g in np.unique(labels)]
    return [g for g in groups if len(g) > 1]


@dataclass(frozen=True)
class AmbiguityGroup:
    """Classes fighting over one region, the boxes to re-classify, and who won (a planned group has
    no winners yet; ``resolve_groups`` returns resolved copies)."""

    members: list[int]               # class indices (into the vocabulary)
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 in patch units of its map
    winners: list[int] = field(default_factory=list)
    scope: int = 0                   # which window (or 0 for the whole image)
    crop_winners: list[int] = field(default_factory=list)  # the member each encoded crop picked, in order

    @property
    def valid_boxes(self) -> list[tuple[int, int, int, int]]:
        return [b for b in self.boxes if b[2] > b[0] and b[3] > b[1]]

    @property
    def has_degenerate_box(self) -> bool:
        return len(self.valid_boxes) < len(self.boxes) or not self.boxes

    @property
    def crop_boxes(self) -> list[tuple[int, int, int, int]]:
        """Boxes worth encoding: none when a degenerate box keeps the whole group anyway."""
        return [] if self.has_degenerate_box else self.valid_boxes


def group_boxes(mean_map: torch.Tensor, box_threshold: float, box_rule: str) -> list[tuple[int, int, int, int]]:
    """Crop boxes of a group's mean map [h, w]: one per contour (``contours``, the reference's rule:
    hole borders give boxes too) or one per 8-connected component (``components``)."""
    mask = quantised_masks(mean_map[None], box_threshold)
    if box_rule == "contours":
        boxes = contour_boxes(mask[0])
    elif box_rule == "components":
        boxes = [tuple(int(v) for v in b) for b in component_boxes(mask)[1]]
    else:
        raise ValueError(f"unknown box rule {box_rule!r}; choose contours or components")
    return boxes or [(0, 0, 0, 0)]


def plan_ambiguity(refined: torch.Tensor, classes: list[int], ap_threshold: float,
                   box_threshold: float, scope: int = 0, box_rule: str = "contours") -> list[AmbiguityGroup]:
    """Groups among the surviving ``classes`` of refined maps [K, h, w], with their crop boxes."""
    if len(classes) < 2:
        return []
    maps = refined[classes]
    groups = ambiguity_groups(pairwise_soft_iou(maps.flatten(1)), ap_threshold)
    planned = []
    for local in groups:
        boxes = group_boxes(maps[local].mean(dim=0), box_threshold, box_rule)
        planned.append(AmbiguityGroup(members=[classes[i] for i in local], boxes=boxes, scope=scope))
    return planned


def resolve_groups(groups: list[AmbiguityGroup], crop_embeddings: torch.Tensor,
                   targets: torch.Tensor, logit_scale: float,
                   crop_counts: list[int] | None = None) -> list[AmbiguityGroup]:
    """The groups with their winners, decided from their crops' embeddings, group after group.

    ``crop_counts`` says how many crops each group has (default: ``len(crop_boxes)``; a trace
    also encodes the valid boxes of groups with a degenerate box, as the reference does). A crop
    keeps the member whose target embedding scores highest (``crop_winners``, in crop order); a
    group with a degenerate box, or none valid, keeps all its members.
    """
    counts = crop_counts if crop_counts is not None else [len(g.crop_boxes) for g in groups]
    resolved = []
    offset = 0
    for group, count in zip(groups, counts):
        crops = crop_embeddings[offset:offset + count]
        offset += count
        scores = logit_scale * crops @ targets[group.members].T
        crop_winners = [group.members[i] for i in scores.argmax(dim=1).tolist()]
        winners = list(group.members) if group.has_degenerate_box else sorted(set(crop_winners))
        resolved.append(dataclasses.replace(group, winners=winners, crop_winners=crop_winners))
    return resolved
