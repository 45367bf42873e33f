"""Class activation maps from dense patch features and text embeddings (ALGORITHM.md section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def query_softmax(features: torch.Tensor, queries: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Per patch, the softmax over ALL queries (background names included): [..., Q].

    The queries are renormalised first, as the reference does: already unit vectors, they may
    move by a float32 step, and the softmax maps then equal the reference's bit for bit.
    """
    queries = F.normalize(queries, dim=-1)
    return (logit_scale * features @ queries.T).softmax(dim=-1)


def class_maps(probs: torch.Tensor, query_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Max over each class's queries (SCLIP's synonym rule): [B, h, w, Q] -> [B, K, h, w]."""
    index = query_class.to(probs.device).expand_as(probs)
    out = probs.new_zeros(*probs.shape[:-1], num_classes)
    out = out.scatter_reduce(-1, index, probs, reduce="amax", include_self=False)
    return out.permute(0, 3, 1, 2)


def select_classes(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``maps[:, classes]`` for maps [B, K, h, w] from ``class_maps``, kept class-minor in memory.

    The reference's maps are views of its [N, Q] softmax, so its sums over pixels (redundancy
    purification) run across a class-minor layout; selecting on the channels-last tensor keeps
    that layout and with it the float32 results, bit for bit.
    """
    return maps.permute(0, 2, 3, 1)[..., classes].permute(0, 3, 1, 2)


def global_minmax(maps: torch.Tensor, bounds_from: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise each window's whole [K, h, w] tensor with ONE min and max (reference).

    The min and max are taken per window over ``bounds_from`` ([B, ...], default ``maps``): the
    reference takes them over the softmax maps of ALL queries, background names included, so the
    segmenter passes the query softmax while normalising only the foreground maps.
    """
    flat = (maps if bounds_from is None else bounds_from).flatten(1)
    low = flat.min(dim=1).values[:, None, None, None]
    high = flat.max(dim=1).values[:, None, None, None]
    return (maps - low) / (high - low).clamp_min(1e-8)
