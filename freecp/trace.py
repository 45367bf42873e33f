"""What one ``Segmenter.segment`` call computed per window, for checks and debugging.

Pass a ``SegmentTrace()`` as ``segment(image, trace=...)`` and it comes back filled with every
per-window stage that the reference implementation also records (tests/test_parity.py compares
them). Without a trace the segmenter keeps none of this and does no extra work.

Foreground maps are indexed like ``Vocabulary.foreground_indices``; queries like
``Vocabulary.queries``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from freecp.purify import AmbiguityGroup


@dataclass
class SegmentTrace:
    """Per-window stages of one image; every tensor's first dimension is the window."""

    windows: torch.Tensor | None = None         # [B, 3, wh, ww] normalised window pixels
    origins: list[tuple[int, int]] = field(default_factory=list)  # (y0, x0) in the resized image
    attention: torch.Tensor | None = None       # [B, N, N] blocks 1..L-1, head-averaged, CLS dropped
    query_softmax: torch.Tensor | None = None   # [B, Q, h, w] softmax over all queries
    normalized: torch.Tensor | None = None      # [B, Kf, h, w] foreground maps after the global min-max
    refined: torch.Tensor | None = None         # [B, Kf, h, w] after attention refinement
    rp_scores: torch.Tensor | None = None       # [B, Kf] self-consistency scores
    rp_keep: torch.Tensor | None = None         # [B, Kf] bool, survived redundancy purification
    after_rp: torch.Tensor | None = None        # [B, Kf, h, w] refined maps of the survivors
    after_ap: torch.Tensor | None = None        # [B, Kf, h, w] what composition receives
    groups: list[AmbiguityGroup] = field(default_factory=list)  # members are vocabulary indices
    scores: torch.Tensor | None = None          # [C, H, W] composed maps of ``score_classes``, original size
    score_classes: torch.Tensor | None = None   # [C] vocabulary indices of the classes composed


def scatter_columns(maps: torch.Tensor, columns: torch.Tensor, width: int) -> torch.Tensor:
    """Maps [B, C, ...] of foreground ``columns`` back into a zero tensor [B, width, ...]."""
    full = maps.new_zeros(maps.shape[0], width, *maps.shape[2:])
    full[:, columns] = maps
    return full
