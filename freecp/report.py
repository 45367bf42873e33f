"""What purification decided for one image, in words and original pixels, for people to read
and records to store."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from freecp.purify import AmbiguityGroup
from freecp.windows import Box


@dataclass
class PurificationReport:
    """What purification decided for one image, for people to read and records to store."""

    rp_scores: dict[str, float]       # per foreground class: best self-consistency over windows
    kept: list[str]                   # survived redundancy purification somewhere
    removed: list[str]                # purged by RP or AP everywhere: never in the output
    groups: list[dict]                # ambiguity groups: members, boxes (x0, y0, x1, y1 in original
                                      # image pixels), winners, window index
    ap_targets: str                   # which text embeddings AP scored crops against
    fallback_classes: list[str]       # classes AP had to score by class name (no descriptions)


def describe_ap_targets(ap_texts: str, fallbacks: int, foreground: int) -> str:
    """Which text embeddings AP scores crops against, in words: ``fallbacks`` of the
    ``foreground`` classes have no description (or descriptor) and are scored by name."""
    kind = "random-word descriptor" if ap_texts == "random" else "description"
    if ap_texts == "names":
        return "class names (ap-texts names)"
    if fallbacks == foreground:
        return f"class names (no {kind} embeddings)"
    if fallbacks:
        return f"{kind}s; class names for {fallbacks} classes without any"
    return f"{kind}s"


def box_in_original(box: Box, origin: tuple[int, int], patch: int, resized: tuple[int, int],
                    original: tuple[int, int]) -> list[int]:
    """A box in patch units of a map whose top-left lies at ``origin`` (y, x) of the resized image,
    as x0, y0, x1, y1 pixels of the original image."""
    y0, x0 = origin
    sy, sx = original[0] / resized[0], original[1] / resized[1]
    x_a, y_a, x_b, y_b = box
    return [min(round((x0 + x_a * patch) * sx), original[1]), min(round((y0 + y_a * patch) * sy), original[0]),
            min(round((x0 + x_b * patch) * sx), original[1]), min(round((y0 + y_b * patch) * sy), original[0])]


def purification_report(names: list[str], foreground: list[int], rp_scores: torch.Tensor, rp_kept: torch.Tensor,
                        alive: torch.Tensor, groups: list[AmbiguityGroup], group_boxes: list[list[list[int]]],
                        ap_targets: str, fallback_classes: list[str]) -> PurificationReport:
    """The report of one image: RP scores [B, Kf] (best over windows), the foreground classes RP
    kept somewhere (``rp_kept`` [Kf]), those ``alive`` after AP, and the groups with their boxes
    in original pixels (``group_boxes``)."""
    best = rp_scores.max(dim=0).values
    alive_set = set(alive.tolist())
    return PurificationReport(
        rp_scores={names[k]: round(float(best[i]), 6) for i, k in enumerate(foreground)},
        kept=[names[k] for i, k in enumerate(foreground) if rp_kept[i]],
        removed=[names[k] for k in foreground if k not in alive_set],
        groups=[{
            "window": g.scope,
            "members": [names[m] for m in g.members],
            "boxes": boxes,
            "winners": [names[m] for m in g.winners],
        } for g, boxes in zip(groups, group_boxes, strict=True)],
        ap_targets=ap_targets,
        fallback_classes=fallback_classes,
    )
