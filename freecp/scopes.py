"""Where purification decides (ALGORITHM.md section 6): per sliding window, as the reference,
or once per image. The scope is chosen once, when a segmenter is built (``scope_for``); the
recipe then asks it, without testing which it is:

- ``consistency``: RP's self-consistency scores [B, Kf], one decision per window or one per image;
- ``plan``: AP's ambiguity groups (members as vocabulary indices) and the crops to encode;
- ``loser_rows``: the windows in which a group's losers are zeroed;
- ``origin``: where a group's boxes lie in the resized image, for the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from freecp.compose import canvas
from freecp.purify import AmbiguityGroup, plan_ambiguity, self_consistency
from freecp.report import box_in_original
from freecp.settings import SegmentSettings
from freecp.windows import Windows, crop


@dataclass
class AmbiguityPlan:
    """AP's groups and the crops of their boxes, in group order (classified together later)."""

    groups: list[AmbiguityGroup]      # members are vocabulary indices
    crops: list[torch.Tensor]         # [3, crop, crop] each
    crop_counts: list[int] | None     # crops per group; None: each group's ``crop_boxes``


class Scope(Protocol):
    """What the recipe asks of a scope (see the module's docstring)."""

    def consistency(self, cams: torch.Tensor, refined: torch.Tensor) -> torch.Tensor: ...

    def plan(self, maps: torch.Tensor, classes: torch.Tensor, windows: Windows, patch: int,
             every_valid_box: bool) -> AmbiguityPlan: ...

    def loser_rows(self, group: AmbiguityGroup) -> int | slice: ...

    def origin(self, windows: Windows, group: AmbiguityGroup) -> tuple[int, int]: ...


@dataclass(frozen=True)
class WindowScope:
    """The reference's scope: every window decides its own classes and groups."""

    settings: SegmentSettings

    def consistency(self, cams: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
        return self_consistency(cams.flatten(2), refined.flatten(2), self.settings.sc_formula)

    def plan(self, maps: torch.Tensor, classes: torch.Tensor, windows: Windows, patch: int,
             every_valid_box: bool) -> AmbiguityPlan:
        """Groups in every window, crops cut from their window. ``every_valid_box`` also encodes
        the valid boxes of groups that a degenerate box keeps whole (their winners change nothing;
        a trace records them, as the reference does)."""
        s = self.settings
        groups = []
        for b in range(len(maps)):
            alive = torch.nonzero(maps[b].flatten(1).amax(dim=1) > 0).flatten().tolist()
            groups += plan_ambiguity(maps[b], alive, s.ap_threshold, s.box_threshold, scope=b, box_rule=s.box_rule)
        boxes = [g.valid_boxes if every_valid_box else g.crop_boxes for g in groups]
        crops = [crop(windows.pixels[g.scope], box, patch, s.crop_size) for g, group_boxes in zip(groups, boxes)
                 for box in group_boxes]
        return AmbiguityPlan(in_vocabulary(groups, classes), crops, [len(b) for b in boxes])

    def loser_rows(self, group: AmbiguityGroup) -> int:
        return group.scope

    def origin(self, windows: Windows, group: AmbiguityGroup) -> tuple[int, int]:
        return windows.origins[group.scope]


@dataclass(frozen=True)
class ImageScope:
    """One decision per image: RP pools the sums of all windows, AP plans on the composed maps."""

    settings: SegmentSettings

    def consistency(self, cams: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
        flat_cam, flat_ref = cams.flatten(2), refined.flatten(2)
        pooled = self_consistency(flat_cam.transpose(0, 1).flatten(1), flat_ref.transpose(0, 1).flatten(1),
                                  self.settings.sc_formula)
        return pooled[None].expand(len(cams), -1)

    def plan(self, maps: torch.Tensor, classes: torch.Tensor, windows: Windows, patch: int,
             every_valid_box: bool) -> AmbiguityPlan:
        """One set of groups from the maps composed at patch resolution; crops cut from the image
        (each group's crops are its crop boxes, so no crop counts)."""
        s = self.settings
        height, width = windows.size
        image_maps = canvas(maps, windows, (height // patch, width // patch))
        groups = plan_ambiguity(image_maps, list(range(len(classes))), s.ap_threshold, s.box_threshold,
                                box_rule=s.box_rule)
        crops = [crop(windows.image, box, patch, s.crop_size) for g in groups for box in g.crop_boxes]
        return AmbiguityPlan(in_vocabulary(groups, classes), crops, None)

    def loser_rows(self, group: AmbiguityGroup) -> slice:
        return slice(None)

    def origin(self, windows: Windows, group: AmbiguityGroup) -> tuple[int, int]:
        return 0, 0


# One scope for each value of ``settings.scope`` (``freecp.settings.SCOPES``).
BY_NAME: dict[str, Callable[[SegmentSettings], Scope]] = {"window": WindowScope, "image": ImageScope}


def scope_for(settings: SegmentSettings) -> Scope:
    """The scope ``settings.scope`` names, reading its thresholds from ``settings``."""
    return BY_NAME[settings.scope](settings)


def in_vocabulary(groups: list[AmbiguityGroup], classes: torch.Tensor) -> list[AmbiguityGroup]:
    """Groups planned on the columns of maps of ``classes``, with members as vocabulary indices."""
    return [dataclasses.replace(g, members=[int(classes[m]) for m in g.members]) for g in groups]


def zero_losers(maps: torch.Tensor, classes: torch.Tensor, groups: list[AmbiguityGroup],
                scope: Scope) -> torch.Tensor:
    """A copy of maps [B, C, h, w] of ``classes`` with each group's losers zeroed where the scope says."""
    column = {int(c): i for i, c in enumerate(classes)}
    maps = maps.clone()
    for g in groups:
        for loser in set(g.members) - set(g.winners):
            maps[scope.loser_rows(g), column[loser]] = 0
    return maps


def boxes_in_original(groups: list[AmbiguityGroup], scope: Scope, windows: Windows, patch: int,
                      original: tuple[int, int]) -> list[list[list[int]]]:
    """Every group's boxes as pixels of the original image."""
    return [[box_in_original(b, scope.origin(windows, g), patch, windows.valid, original) for b in g.boxes]
            for g in groups]
