"""The reference behaviours the freecp protocol follows, each on a hand-made input (no shared data).

tests/test_parity.py checks them all together against the reference's own outputs; these say
what each one is, so a regression names its rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from freecp.cam import global_minmax
from freecp.clip import ClipBackbone
from freecp.purify import AmbiguityGroup, group_boxes, resolve_groups
from freecp.refine import refine
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.encoding import ensure_encoded, load_embeddings
from freecp.stores.descriptions import DescriptionCache
from freecp.stores.embeddings import EmbeddingStore
from freecp.trace import SegmentTrace
from freecp.vocab import load_vocabulary
from freecp.windows import CLIP_MEAN, CLIP_STD, preprocess

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _ring_map() -> torch.Tensor:
    """A square ring with a one-cell hole, plus a separate dot: 2 components, 3 contours."""
    grid = torch.zeros(8, 8)
    grid[1:5, 1:5] = 1.0
    grid[2:4, 2:4] = 0.0   # the hole
    grid[6, 6] = 1.0       # a dot of its own
    return grid


def test_contour_rule_boxes_every_contour_holes_included_and_components_rule_does_not():
    contours = group_boxes(_ring_map(), 0.4, "contours")
    components = group_boxes(_ring_map(), 0.4, "components")
    # the outer ring (1, 1, 5, 5), its hole's border (the ring's inner cells), and the dot
    assert sorted(contours) == [(1, 1, 5, 5), (1, 1, 5, 5), (6, 6, 7, 7)]
    assert sorted(components) == [(1, 1, 5, 5), (6, 6, 7, 7)]
    with pytest.raises(ValueError, match="box rule"):
        group_boxes(_ring_map(), 0.4, "blobs")


def test_contour_boxes_are_clipped_to_size_minus_one_and_an_empty_map_gives_one_empty_box():
    grid = torch.zeros(6, 6)
    grid[3:6, 5] = 1.0  # a column on the right border: its box has zero width after clipping
    assert group_boxes(grid, 0.4, "contours") == [(5, 3, 5, 5)]
    assert group_boxes(torch.zeros(4, 4), 0.4, "contours") == [(0, 0, 0, 0)]


def test_a_group_with_a_degenerate_box_keeps_all_members_but_its_valid_crops_still_get_winners():
    group = AmbiguityGroup(members=[1, 2], boxes=[(0, 0, 2, 2), (3, 1, 3, 2)])
    targets = torch.eye(3)
    [resolved] = resolve_groups([group], torch.tensor([[0.0, 0.0, 1.0]]), targets, 100.0, crop_counts=[1])
    assert resolved.crop_winners == [2] and resolved.winners == [1, 2]


def test_global_minmax_takes_its_bounds_from_all_queries():
    foreground = torch.tensor([[[[0.2, 0.4]]]])            # [B=1, K=1, 1, 2]
    all_queries = torch.tensor([[[[0.1, 0.2, 0.4, 0.5]]]])  # background names reach 0.1 and 0.5
    out = global_minmax(foreground, bounds_from=all_queries)
    assert torch.allclose(out, torch.tensor([[[[0.25, 0.75]]]]))


def test_refinement_min_max_adds_the_reference_epsilon_so_a_flat_map_stays_below_one():
    maps = torch.zeros(1, 1, 2, 2)
    maps[0, 0, 0, 0] = 1.0
    spread = 3e-8
    transition = torch.eye(4)[None] * spread + 0.25  # every refined value about 0.25, range 3e-8
    refined = refine(maps, transition, 0.0)
    assert refined.max().item() == pytest.approx(spread / (spread + 1e-8), rel=0.05)


def test_input_is_resized_by_opencv_on_the_8_bit_image_like_mmcv(tiny_backbone, tiny_voc21_embeddings):
    image = np.random.default_rng(3).integers(0, 256, size=(30, 47, 3), dtype=np.uint8)
    segmenter = Segmenter(tiny_backbone, load_vocabulary("voc21"), tiny_voc21_embeddings,
                          SegmentSettings(short_side=64, window=64, stride=32))
    # keep-ratio: factor min(2048 / 47, 64 / 30); sizes rounded half up
    resized = cv2.resize(image, (100, 64), interpolation=cv2.INTER_LINEAR)
    expected = (torch.from_numpy(resized).permute(2, 0, 1).float() - CLIP_MEAN) / CLIP_STD
    assert torch.equal(preprocess(image, segmenter.settings.short_side), expected)


def test_a_trace_records_every_stage_and_does_not_change_the_result(tiny_backbone, tiny_voc21_embeddings):
    vocab = load_vocabulary("voc21")
    settings = SegmentSettings(short_side=64, window=48, stride=16, rp_threshold=0.0, ap_threshold=0.0)
    segmenter = Segmenter(tiny_backbone, vocab, tiny_voc21_embeddings, settings)
    image = np.random.default_rng(5).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    trace = SegmentTrace()
    traced = segmenter.segment(image, trace=trace)
    plain = segmenter.segment(image)
    assert np.array_equal(traced.labels, plain.labels)
    windows, classes = len(trace.origins), len(vocab.foreground_indices)
    assert trace.windows.shape[0] == windows > 1
    assert trace.query_softmax.shape[:2] == (windows, len(vocab.queries))
    for stage in (trace.normalized, trace.refined, trace.after_rp, trace.after_ap):
        assert stage.shape[:2] == (windows, classes)
    assert torch.equal(trace.rp_keep, trace.rp_scores > 0)
    assert trace.groups, "threshold 0 makes every window one ambiguity group"
    # after AP, exactly the members that lost in every group of a window are zero
    for group in trace.groups:
        alive = trace.after_ap[group.scope].flatten(1).amax(dim=1) > 0
        for member in group.members:
            column = vocab.foreground_indices.index(member)
            assert bool(alive[column]) == (member in group.winners)


def test_imported_repeats_are_kept_and_weigh_in_the_description_mean(tmp_path: Path, tiny_backbone: ClipBackbone):
    vocab = load_vocabulary(["background: sky", "cat", "dog"])
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps({"cat": ["pointed ears", "whiskers", "pointed ears"], "dog": ["wet nose"]}))
    cache = DescriptionCache(tmp_path / "descriptions")
    cache.import_json(reviewed)
    texts = cache.descriptions_for(vocab)
    assert texts["cat"] == ["pointed ears", "whiskers", "pointed ears"]

    store = EmbeddingStore(str(tmp_path / "embeddings"))
    summary = ensure_encoded(store, vocab, tiny_backbone, texts)
    assert summary.descriptions_encoded == 3  # each distinct text is encoded once
    loaded = load_embeddings(store, vocab, tiny_backbone)
    ears, whiskers = tiny_backbone.encode_texts(["pointed ears", "whiskers"])
    weighted = torch.nn.functional.normalize(2 * ears + whiskers, dim=-1)
    assert torch.allclose(loaded.descriptions[1], weighted, atol=1e-6)
    assert not torch.allclose(loaded.descriptions[1], torch.nn.functional.normalize(ears + whiskers, dim=-1), atol=1e-4)
