"""CAM, global min-max, boxes from score maps and attention refinement on hand-made inputs."""

from __future__ import annotations

import pytest
import torch

from freecp.cam import class_maps, global_minmax, query_softmax
from freecp.refine import (
    affinity_transition,
    box_masks,
    component_boxes,
    quantised_masks,
    refine,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _boxes_of(map_2d: torch.Tensor, threshold: float = 0.4) -> set[tuple[int, ...]]:
    _, boxes = component_boxes(quantised_masks(map_2d[None], threshold))
    return {tuple(int(v) for v in b) for b in boxes}


# ----------------------------------------------------------------------------- CAM


def test_class_maps_take_the_max_over_synonyms_after_a_softmax_over_all_queries():
    # Five orthonormal queries: two background names, two synonyms of class 1, one name of class 2.
    queries = torch.eye(5)
    query_class = torch.tensor([0, 0, 1, 1, 2])
    patch = torch.tensor([0.1, 0.2, 0.8, 0.5, 0.3])
    features = patch.expand(1, 1, 2, 5)  # [B=1, h=1, w=2, D=5]
    maps = class_maps(query_softmax(features, queries, logit_scale=10.0), query_class, 3)

    weights = torch.exp(10.0 * patch)
    probs = weights / weights.sum()  # the softmax runs over all five names, background included
    assert maps.shape == (1, 3, 1, 2)
    assert torch.allclose(maps[0, :, 0, 0], torch.stack([probs[:2].max(), probs[2:4].max(), probs[4]]))
    # Not a sum over synonyms, and not a softmax over per-class best logits.
    assert not torch.isclose(maps[0, 1, 0, 0], probs[2] + probs[3])
    per_class = torch.softmax(10.0 * torch.stack([patch[:2].max(), patch[2:4].max(), patch[4]]), 0)
    assert not torch.isclose(maps[0, 1, 0, 0], per_class[1])


def test_query_softmax_sums_to_one_over_queries():
    features = torch.nn.functional.normalize(torch.randn(2, 3, 4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    probs = query_softmax(features, queries, 100.0)
    assert probs.shape == (2, 3, 4, 6)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3, 4))


def test_global_minmax_uses_one_min_and_max_per_window():
    maps = torch.zeros(2, 2, 2, 2)
    maps[0, 0] = torch.tensor([[2.0, 6.0], [3.0, 2.0]])
    maps[0, 1] = torch.tensor([[2.0, 4.0], [2.0, 3.0]])  # its own max is 4: per-class scaling would give 1
    maps[1, 0] = torch.tensor([[-1.0, 1.0], [0.0, 0.0]])
    maps[1, 1] = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    out = global_minmax(maps)
    assert torch.allclose(out[0], (maps[0] - 2.0) / 4.0)
    assert torch.allclose(out[1], (maps[1] + 1.0) / 2.0)
    assert out[0, 1].max() == 0.5


# ---------------------------------------------------------------------------- boxes


def test_boxes_from_a_map_match_hand_computed_ones():
    grid = torch.zeros(6, 8)
    grid[1:3, 1:4] = 1.0   # a 2 x 3 block -> (x0, y0, x1, y1) = (1, 1, 4, 3)
    grid[3, 6] = 0.8       # a single cell -> (6, 3, 7, 4)
    grid[5, 0:2] = 0.9     # on the last row: y1 = min(6, 5) = 5, a zero-height box
    grid[0, 7] = 0.4       # 0.4 * 255 -> 102, not above int(0.4 * 255) = 102: below the threshold
    assert _boxes_of(grid) == {(1, 1, 4, 3), (6, 3, 7, 4), (0, 5, 2, 5)}


def test_boxes_are_clipped_to_size_minus_one_and_never_cover_the_last_row_or_column():
    grid = torch.zeros(5, 5)
    grid[2:5, 3:5] = 1.0  # reaches the bottom-right corner
    assert _boxes_of(grid) == {(3, 2, 4, 4)}
    mask = box_masks(grid[None], 0.4)[0]
    expected = torch.zeros(5, 5)
    expected[2:4, 3:4] = 1.0
    assert torch.equal(mask, expected)


def test_diagonal_neighbours_form_one_component():
    grid = torch.zeros(6, 6)
    grid[1, 1] = grid[2, 2] = grid[3, 3] = 1.0
    assert _boxes_of(grid) == {(1, 1, 4, 4)}


def test_threshold_is_relative_to_the_maps_own_peak():
    grid = torch.zeros(4, 4)
    grid[0, 0] = 0.5
    grid[2, 2] = 0.1  # 25 vs cut int(0.4 * 127) = 50: dropped
    grid[1, 2] = 0.3  # 76 > 50: kept
    assert _boxes_of(grid) == {(0, 0, 1, 1), (2, 1, 3, 2)}


def test_an_empty_map_gives_no_box_and_an_empty_mask():
    owner, boxes = component_boxes(quantised_masks(torch.zeros(2, 4, 4), 0.4))
    assert len(owner) == 0 and boxes.shape == (0, 4)
    assert torch.equal(box_masks(torch.zeros(1, 4, 4), 0.4), torch.zeros(1, 4, 4))


def test_boxes_of_stacked_maps_never_connect_across_maps():
    maps = torch.zeros(3, 4, 4)
    maps[0, 1:3, 1:3] = 1.0
    maps[2, 1:3, 1:3] = 1.0  # same place in another map: a separate component
    owner, boxes = component_boxes(quantised_masks(maps, 0.4))
    assert sorted(owner.tolist()) == [0, 2]
    assert {tuple(b) for b in boxes.tolist()} == {(1, 1, 3, 3)}
    masks = box_masks(maps, 0.4)
    assert masks[1].sum() == 0 and masks[0].sum() == 4 and torch.equal(masks[0], masks[2])


# ----------------------------------------------------------------------- refinement


def test_affinity_transition_is_symmetric_non_negative_and_nearly_stochastic():
    generator = torch.Generator().manual_seed(0)
    attention = torch.randn(2, 12, 12, generator=generator).softmax(-1)
    trans = affinity_transition(attention)
    assert trans.shape == (2, 12, 12)
    assert torch.allclose(trans, trans.transpose(-1, -2), atol=1e-6)
    assert (trans >= 0).all()
    assert torch.allclose(trans.sum(-1), torch.ones(2, 12), atol=1e-2)


def test_affinity_transition_keeps_a_block_structure():
    # Attention that only links patches of the same region stays within regions.
    region = torch.tensor([0] * 4 + [1] * 6)
    same = (region[:, None] == region[None]).float()
    trans = affinity_transition((same / same.sum(-1, keepdim=True))[None])[0]
    assert torch.allclose(trans, same / same.sum(-1, keepdim=True), atol=1e-6)


def test_refined_maps_are_min_max_normalised_per_class():
    generator = torch.Generator().manual_seed(3)
    maps = global_minmax(torch.rand(2, 3, 5, 5, generator=generator))
    trans = affinity_transition(torch.rand(2, 25, 25, generator=generator).softmax(-1))
    refined = refine(maps, trans, 0.4)
    assert refined.shape == (2, 3, 5, 5)
    flat = refined.flatten(2)
    assert torch.allclose(flat.min(-1).values, torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(flat.max(-1).values, torch.ones(2, 3), atol=1e-6)


def test_refine_with_identity_transition_is_the_box_masked_map_rescaled():
    maps = torch.zeros(1, 2, 6, 6)
    maps[0, 0, 1:4, 1:4] = torch.linspace(0.5, 1.0, 9).reshape(3, 3)
    maps[0, 0, 5, 5] = 0.2          # below 0.4 * max: outside every box, so it is masked away
    maps[0, 1, 2, 2] = 1.0
    refined = refine(maps, torch.eye(36)[None], 0.4)
    expected = maps[0, 0].clone()
    expected[5, 5] = 0.0
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert torch.allclose(refined[0, 0], expected, atol=1e-6)
    assert refined[0, 1, 2, 2] == 1.0 and refined[0, 1].sum() == 1.0
