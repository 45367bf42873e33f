"""Images whose resized side is shorter than a patch (extreme aspect ratios) are segmented, not refused.

The long side is capped at 2048 before the short side is honoured, so a 20000 x 20 image resizes to
2 x 2048 pixels: less than one 16-pixel patch. The segmenter pads such a side to one patch and
crops the padding off again when composing, so the label map keeps the image's own size.
"""

from __future__ import annotations

import numpy as np
import pytest

from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.vocab import load_vocabulary
from tests.fixtures_clip import one_torch_thread


@pytest.mark.parametrize("scope", ["window", "image"])
@pytest.mark.parametrize("shape", [(20, 20000), (20000, 20), (1, 5000), (1, 1)])
def test_extreme_aspect_ratios_give_a_full_size_label_map(tiny_backbone, tiny_voc21_embeddings, shape, scope):
    vocab = load_vocabulary("voc21")
    segmenter = Segmenter(tiny_backbone, vocab, tiny_voc21_embeddings, SegmentSettings(scope=scope))
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    with one_torch_thread():
        result = segmenter.segment(image)
    assert result.labels.shape == shape
    assert 0 <= result.labels.min() and result.labels.max() < len(vocab)
    for group in result.report.groups:  # boxes stay inside the original image
        for x0, y0, x1, y1 in group["boxes"]:
            assert 0 <= x0 <= x1 <= shape[1] and 0 <= y0 <= y1 <= shape[0]
