"""Purification scopes: per window (the reference) or per image, chosen once from the settings."""

from __future__ import annotations

import torch

from freecp.purify import AmbiguityGroup, self_consistency
from freecp.scopes import BY_NAME, ImageScope, WindowScope, scope_for, zero_losers
from freecp.settings import SCOPES, SegmentSettings
from freecp.windows import cut_windows

PATCH = 4


def test_the_settings_choose_the_scope_once():
    assert set(BY_NAME) == set(SCOPES)
    assert isinstance(scope_for(SegmentSettings()), WindowScope)
    assert isinstance(scope_for(SegmentSettings(scope="image")), ImageScope)


def test_window_scope_scores_each_window_and_image_scope_pools_them_into_one_decision():
    torch.manual_seed(0)
    cams, refined = torch.rand(3, 2, 4, 4), torch.rand(3, 2, 4, 4)
    per_window = WindowScope(SegmentSettings()).consistency(cams, refined)
    per_image = ImageScope(SegmentSettings(scope="image")).consistency(cams, refined)
    assert per_window.shape == per_image.shape == (3, 2)
    assert not torch.equal(per_window[0], per_window[1])
    pooled = self_consistency(cams.transpose(0, 1).flatten(1), refined.transpose(0, 1).flatten(1))
    assert all(torch.equal(row, pooled) for row in per_image)


def test_losers_are_zeroed_in_their_window_or_everywhere_and_the_input_is_left_as_it_was():
    maps = torch.ones(2, 3, 2, 2)                     # 2 windows, columns of vocabulary classes 4, 5, 6
    classes = torch.tensor([4, 5, 6])
    group = AmbiguityGroup(members=[4, 6], boxes=[(0, 0, 1, 1)], winners=[6], scope=1)
    in_window = zero_losers(maps, classes, [group], WindowScope(SegmentSettings()))
    in_image = zero_losers(maps, classes, [group], ImageScope(SegmentSettings(scope="image")))
    assert torch.equal(maps, torch.ones(2, 3, 2, 2))
    alive = in_window.flatten(2).amax(-1) > 0
    assert alive.tolist() == [[True, True, True], [False, True, True]]
    assert (in_image.flatten(2).amax(-1) > 0).tolist() == [[False, True, True], [False, True, True]]


def test_both_scopes_plan_groups_in_vocabulary_indices_with_one_crop_per_box():
    pixels = torch.rand(3, 8, 16)
    windows = cut_windows(pixels, PATCH, window=8, stride=8)   # two windows side by side
    maps = torch.zeros(2, 2, 2, 2)
    maps[:, :, 0, :] = 1.0                                    # both classes on the top row: ambiguous
    classes = torch.tensor([3, 7])
    settings = SegmentSettings(window=8, stride=8, ap_threshold=0.5, crop_size=6)
    window_plan = WindowScope(settings).plan(maps, classes, windows, PATCH, every_valid_box=False)
    image_plan = ImageScope(settings.replace(scope="image")).plan(maps, classes, windows, PATCH, every_valid_box=False)
    assert [(g.members, g.scope) for g in window_plan.groups] == [([3, 7], 0), ([3, 7], 1)]
    assert [g.members for g in image_plan.groups] == [[3, 7]]
    assert len(window_plan.crops) == sum(window_plan.crop_counts) == 2
    assert image_plan.crop_counts is None and len(image_plan.crops) == len(image_plan.groups[0].crop_boxes) == 1
    assert window_plan.crops[0].shape == (3, 6, 6)
