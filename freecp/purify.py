"""Redundancy and ambiguity purification on refined class maps (ALGORITHM.md section 5).

Everything here works on tensors of all classes at once. The only loops are over ambiguity
groups and boxes, which are few; crops for all groups are encoded by the caller in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from freecp.refine import component_boxes, quantised_masks


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


@dataclass
class AmbiguityGroup:
    """Classes fighting over one region, the boxes to re-classify, and who won."""

    members: list[int]               # class indices (into the vocabulary)
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 in patch units of its map
    winners: list[int] = field(default_factory=list)
    scope: int = 0                   # which window (or 0 for the whole image)

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


def plan_ambiguity(refined: torch.Tensor, classes: list[int], ap_threshold: float,
                   box_threshold: float, scope: int = 0) -> list[AmbiguityGroup]:
    """Groups among the surviving ``classes`` of refined maps [K, h, w], with their crop boxes."""
    if len(classes) < 2:
        return []
    maps = refined[classes]
    groups = ambiguity_groups(pairwise_soft_iou(maps.flatten(1)), ap_threshold)
    planned = []
    for local in groups:
        mean_map = maps[local].mean(dim=0, keepdim=True)
        _, boxes = component_boxes(quantised_masks(mean_map, box_threshold))
        box_list = [tuple(int(v) for v in b) for b in boxes] or [(0, 0, 0, 0)]
        planned.append(AmbiguityGroup(members=[classes[i] for i in local], boxes=box_list, scope=scope))
    return planned


def resolve_groups(groups: list[AmbiguityGroup], crop_embeddings: torch.Tensor,
                   targets: torch.Tensor, logit_scale: float) -> None:
    """Set each group's winners from its crops' embeddings, in the order of ``crop_boxes``.

    A crop keeps the member whose target embedding scores highest; a group with a degenerate
    box, or none valid, keeps all its members.
    """
    offset = 0
    for group in groups:
        count = len(group.crop_boxes)
        crops = crop_embeddings[offset:offset + count]
        offset += count
        if group.has_degenerate_box:
            group.winners = list(group.members)
            continue
        scores = logit_scale * crops @ targets[group.members].T
        picked = sorted({group.members[i] for i in scores.argmax(dim=1).tolist()})
        group.winners = picked
