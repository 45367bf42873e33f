"""Redundancy and ambiguity purification on constructed maps, then the Segmenter end to end on
the tiny random-weight backbone (plumbing, shapes, batching and threshold extremes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from freecp.cam import class_maps, global_minmax, query_softmax
from freecp.clip.text import ClassEmbeddings
from freecp.purify import (
    AmbiguityGroup,
    ambiguity_groups,
    pairwise_soft_iou,
    plan_ambiguity,
    resolve_groups,
    self_consistency,
)
from freecp.refine import affinity_transition, refine
from freecp.segmenter import Segmenter
from freecp.settings import settings_for
from freecp.vocab import load_vocabulary

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# ------------------------------------------------------------ self-consistency (RP)


def test_half_dice_and_soft_iou_on_hand_computed_values():
    cam = torch.tensor([[0.5, 1.0, 0.0, 0.25]])
    refined = torch.tensor([[1.0, 0.5, 0.5, 0.0]])
    # sum XY = 1.0, sum X = 1.75, sum Y = 2.0
    assert self_consistency(cam, refined, "half-dice").item() == pytest.approx(1.0 / 3.75)
    assert self_consistency(cam, refined, "soft-iou").item() == pytest.approx(1.0 / 2.75)


def test_identical_binary_maps_score_one_half_and_one():
    same = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert self_consistency(same, same, "half-dice").item() == pytest.approx(0.5)
    assert self_consistency(same, same, "soft-iou").item() == pytest.approx(1.0)


def test_half_dice_never_exceeds_one_half():
    generator = torch.Generator().manual_seed(0)
    cam = torch.rand(500, 64, generator=generator)
    refined = torch.rand(500, 64, generator=generator)
    scores = self_consistency(torch.cat([cam, cam]), torch.cat([refined, cam]), "half-dice")
    assert scores.max() <= 0.5
    assert scores.max() > 0.3  # the identical pairs come close to the bound


def test_unknown_self_consistency_formula_is_refused():
    with pytest.raises(ValueError, match="unknown self-consistency formula 'dice'"):
        self_consistency(torch.ones(1, 2), torch.ones(1, 2), "dice")


def _regions_attention(region: torch.Tensor) -> torch.Tensor:
    """Attention that spreads each patch over its own region (as object-coherent attention does)."""
    same = (region[:, None] == region[None]).float() + 1e-3
    return (same / same.sum(-1, keepdim=True))[None]


def test_a_shaped_map_survives_rp_and_scattered_noise_does_not():
    # 8 x 8 patches: an object in rows/cols 2..5 on a background.
    region = torch.zeros(8, 8, dtype=torch.long)
    region[2:6, 2:6] = 1
    cams = torch.full((1, 2, 8, 8), 0.02)
    cams[0, 0][region == 1] = 0.9                      # class 0 follows the object
    for y, x in [(0, 1), (3, 3), (1, 5), (5, 0), (6, 6)]:
        cams[0, 1, y, x] = 0.9                         # class 1: isolated patches all over
    trans = affinity_transition(_regions_attention(region.flatten()))
    refined = refine(global_minmax(cams), trans, 0.4)
    scores = self_consistency(cams.flatten(2), refined.flatten(2))[0]
    assert scores[0] > 0.4
    assert scores[1] < 0.1
    assert (scores > settings_for("voc21").rp_threshold).tolist() == [True, False]


def test_without_coherent_attention_rp_cannot_tell_noise_from_shape():
    # The identity transition keeps every map as it is, so noise looks self-consistent too:
    # what RP measures is agreement with the attention's structure.
    cams = torch.full((1, 2, 8, 8), 0.02)
    cams[0, 0, 2:6, 2:6] = 0.9
    for y, x in [(0, 1), (3, 3), (1, 5), (5, 0), (6, 6)]:
        cams[0, 1, y, x] = 0.9
    refined = refine(global_minmax(cams), torch.eye(64)[None], 0.4)
    scores = self_consistency(cams.flatten(2), refined.flatten(2))[0]
    assert (scores > 0.4).all()


# -------------------------------------------------------------- ambiguity groups (AP)


def test_pairwise_soft_iou_on_hand_computed_values():
    maps = torch.tensor([[0.5, 1.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    overlap = pairwise_soft_iou(maps)
    assert overlap[0, 1].item() == pytest.approx(1.0 / 2.0)
    assert overlap[0, 2].item() == 0.0
    assert torch.allclose(overlap.diagonal(), torch.ones(3))
    assert torch.allclose(overlap, overlap.T)


def _strip(start: int, length: int = 10, size: int = 40) -> torch.Tensor:
    out = torch.zeros(size)
    out[start:start + length] = 1.0
    return out


def test_identical_maps_form_one_group_and_disjoint_maps_none():
    maps = torch.stack([_strip(0), _strip(0), _strip(20)])
    assert ambiguity_groups(pairwise_soft_iou(maps), 0.8) == [[0, 1]]
    assert ambiguity_groups(pairwise_soft_iou(torch.stack([_strip(0), _strip(20)])), 0.8) == []


def test_ambiguity_groups_are_connected_components():
    # A~B (8/12), B~C (8/12) but not A~C (6/14): still one group of three; D stays alone.
    maps = torch.stack([_strip(0), _strip(2), _strip(4), _strip(25)])
    overlap = pairwise_soft_iou(maps)
    assert overlap[0, 2] < 0.6 <= overlap[0, 1]
    assert ambiguity_groups(overlap, 0.6) == [[0, 1, 2]]


def test_plan_ambiguity_names_vocabulary_classes_and_boxes_the_group_mean():
    refined = torch.zeros(6, 8, 8)
    refined[2, 1:4, 1:5] = 1.0
    refined[4, 1:4, 1:5] = 0.9
    refined[5, 5:7, 5:7] = 1.0          # survives but overlaps nobody
    groups = plan_ambiguity(refined, [2, 4, 5], ap_threshold=0.8, box_threshold=0.4, scope=3)
    assert len(groups) == 1
    assert groups[0].members == [2, 4]
    assert groups[0].boxes == [(1, 1, 5, 4)]
    assert groups[0].scope == 3


def test_ap_threshold_above_one_makes_no_groups_and_fewer_than_two_classes_none_either():
    refined = torch.zeros(3, 4, 4)
    refined[:, 1:3, 1:3] = 1.0          # three identical maps
    assert plan_ambiguity(refined, [0, 1, 2], 1.01, 0.4) == []
    assert plan_ambiguity(refined, [1], 0.0, 0.4) == []
    assert len(plan_ambiguity(refined, [0, 1, 2], 1.0, 0.4)) == 1


def test_a_group_whose_mean_map_is_empty_gets_one_degenerate_box_and_is_kept_whole():
    groups = plan_ambiguity(torch.zeros(3, 4, 4), [0, 1, 2], ap_threshold=0.0, box_threshold=0.4)
    assert [g.boxes for g in groups] == [[(0, 0, 0, 0)]]
    assert groups[0].valid_boxes == [] and groups[0].has_degenerate_box
    [resolved] = resolve_groups(groups, torch.zeros(0, 4), torch.eye(4)[:3], 100.0)
    assert resolved.winners == [0, 1, 2]


# ------------------------------------------------------------------ crop classifier


def _unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def test_the_crop_classifier_keeps_the_class_whose_description_matches_the_crop():
    targets = torch.eye(4)                     # class k's description embedding is e_k
    crop = _unit(0.1, 0.2, 0.9, 0.1)           # looks like class 2
    group = AmbiguityGroup(members=[1, 2], boxes=[(0, 0, 3, 3)])
    [resolved] = resolve_groups([group], crop[None], targets, 100.0)
    assert resolved.winners == [2]
    assert group.winners == [] and group.crop_winners == []  # the planned group is left as it was


def test_each_box_keeps_its_own_winner_and_crops_are_consumed_in_group_order():
    targets = torch.eye(5)
    first = AmbiguityGroup(members=[1, 2], boxes=[(0, 0, 2, 2), (3, 3, 5, 5)])
    second = AmbiguityGroup(members=[3, 4], boxes=[(0, 0, 2, 2)])
    crops = torch.stack([_unit(0, 1, 0.2, 0, 0), _unit(0, 0.2, 1, 0, 0), _unit(0, 0, 0, 0.3, 1)])
    resolved = resolve_groups([first, second], crops, targets, 100.0)
    assert [g.winners for g in resolved] == [[1, 2], [4]]
    assert [g.crop_winners for g in resolved] == [[1, 2], [4]]


def test_a_degenerate_box_keeps_the_whole_group_even_next_to_a_valid_one():
    group = AmbiguityGroup(members=[1, 2], boxes=[(1, 1, 4, 3), (0, 5, 2, 5)])
    assert group.valid_boxes == [(1, 1, 4, 3)]
    [resolved] = resolve_groups([group], _unit(0, 1, 0)[None], torch.eye(3), 100.0)
    assert resolved.winners == [1, 2]


def test_crop_targets_are_descriptions_where_present_and_class_names_elsewhere():
    # The crop matches class 1's NAME but class 2's DESCRIPTION: the description decides.
    names = torch.eye(6)[:3]
    descriptions = torch.stack([torch.zeros(6), torch.eye(6)[3], torch.eye(6)[4]])
    embeddings = ClassEmbeddings(queries=names, query_class=torch.arange(3), descriptions=descriptions,
                                 described=torch.tensor([False, True, True]), source="test")
    crop = _unit(0, 0.8, 0, 0, 0.6, 0)
    group = AmbiguityGroup(members=[1, 2], boxes=[(0, 0, 1, 1)])
    [resolved] = resolve_groups([group], crop[None], embeddings.crop_targets(3), 100.0)
    assert resolved.winners == [2]
    # Without class 2's description it falls back to its name (e_2), which the crop does not show.
    fallback = ClassEmbeddings(queries=names, query_class=torch.arange(3), descriptions=descriptions,
                               described=torch.tensor([False, True, False]), source="test")
    assert torch.equal(fallback.crop_targets(3)[2], names[2])


# ============================================= the Segmenter on the tiny random backbone

VOC21 = load_vocabulary("voc21")
LOW = {"rp_threshold": 0.02, "ap_threshold": 0.3}  # random weights: let several classes through


class CountingBackbone:
    """Delegates to a real backbone and counts ``encode_crops`` calls (and crops per call)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.crop_batches: list[int] = []

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        self.crop_batches.append(len(crops))
        return self._inner.encode_crops(crops)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[: height // 2, : width // 2] = (200, 30, 30)  # some structure for the attention to follow
    return image


@pytest.fixture(scope="module")
def segment(tiny_backbone, tiny_voc21_embeddings):
    def run(image: np.ndarray, backbone=None, **overrides):
        settings = settings_for("voc21", **overrides)
        return Segmenter(backbone or tiny_backbone, VOC21, tiny_voc21_embeddings, settings).segment(image)
    return run


@pytest.mark.parametrize("shape,overrides", [
    ((333, 517), {}),
    ((100, 700), {}),                     # resized height 293 < window 384
    ((50, 40), {"short_side": 224}),     # the whole image is smaller than one window
])
def test_label_map_has_the_input_size_and_valid_labels(segment, shape, overrides):
    result = segment(_image(*shape), **overrides)
    assert result.labels.shape == shape
    assert result.labels.dtype == np.int32
    assert result.labels.min() >= 0 and result.labels.max() < len(VOC21)
    assert result.class_scores.shape == (len(VOC21),)
    assert {"input", "backbone", "cam", "refine", "rp", "compose"} <= set(result.timings)


def test_segmenting_twice_gives_the_same_result(segment):
    image = _image(200, 300, seed=1)
    first, second = segment(image, **LOW), segment(image, **LOW)
    assert first.report.groups  # AP ran too
    assert np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.class_scores, second.class_scores)
    assert first.report == second.report


@pytest.mark.parametrize("scope", ["window", "image"])
def test_all_crops_of_an_image_go_to_the_backbone_in_one_call(segment, tiny_backbone, scope):
    counting = CountingBackbone(tiny_backbone)
    result = segment(_image(333, 517), backbone=counting, scope=scope, **LOW)
    assert result.report.groups, "thresholds too strict: no ambiguity group to test batching with"
    boxes = sum(len(g["boxes"]) for g in result.report.groups)
    assert len(counting.crop_batches) == 1
    assert 1 <= counting.crop_batches[0] <= boxes
    if scope == "image":
        assert {g["window"] for g in result.report.groups} == {0}
    assert result.labels.shape == (333, 517)
    assert result.report.ap_targets == "class names (no description embeddings)"


def test_rp_threshold_minus_one_without_ap_is_refinement_without_purification(segment):
    image = _image(240, 320, seed=2)
    lenient = segment(image, rp_threshold=-1.0, ambiguity=False)
    unpurified = segment(image, redundancy=False, ambiguity=False)
    assert lenient.report.kept == VOC21.class_names[1:]
    assert np.array_equal(lenient.labels, unpurified.labels)
    assert np.array_equal(lenient.class_scores, unpurified.class_scores)
    assert lenient.report.groups == []


def test_rp_threshold_one_drops_every_class_and_leaves_background(segment):
    result = segment(_image(240, 320, seed=3), rp_threshold=1.0)
    assert (result.labels == 0).all()
    assert result.report.kept == []
    assert result.report.removed == VOC21.class_names[1:]
    assert (result.class_scores[1:] == 0).all() and result.class_scores[0] == 1.0


def test_ap_threshold_above_one_forms_no_group(segment, tiny_backbone):
    counting = CountingBackbone(tiny_backbone)
    result = segment(_image(333, 517), backbone=counting, rp_threshold=0.02, ap_threshold=1.01)
    assert len(result.report.kept) >= 2
    assert result.report.groups == []
    assert counting.crop_batches == []


def test_no_purify_baseline_is_the_argmax_over_all_classes(segment, tiny_backbone, tiny_voc21_embeddings):
    # One 224 x 224 window and no resizing, so the expected map can be computed directly.
    image = _image(224, 224, seed=4)
    result = segment(image, purify=False, short_side=224, window=224, stride=112)
    assert result.report is None
    mean, std = torch.tensor([122.771, 116.746, 104.094]), torch.tensor([68.501, 66.632, 70.323])
    pixels = (torch.from_numpy(image).permute(2, 0, 1).float() - mean[:, None, None]) / std[:, None, None]
    dense = tiny_backbone.dense_forward(pixels[None])
    probs = query_softmax(dense.features, tiny_voc21_embeddings.queries, tiny_backbone.logit_scale)
    maps = class_maps(probs, tiny_voc21_embeddings.query_class, len(VOC21))
    expected = F.interpolate(maps, size=(224, 224), mode="bilinear", align_corners=False)[0].argmax(0)
    assert np.array_equal(result.labels, expected.numpy())
    assert (result.class_scores > 0).all()  # every class, the background's own map included, took part
