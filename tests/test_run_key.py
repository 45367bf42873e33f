"""The run key (what makes an image's outputs up to date) and the class-name length check.

Tiny CLIP with random weights: the test compares keys and warnings, not what masks show.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from freecp.clip import ClipBackbone
from freecp.build import names_cut_by_context
from freecp.pipeline import run_key, segment_one
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.vocab import load_vocabulary
from tests.fixtures_clip import one_torch_thread


def test_new_description_vectors_make_every_image_out_of_date(tmp_path, tiny_backbone, tiny_voc21_embeddings):
    vocab = load_vocabulary("voc21")
    before = Segmenter(tiny_backbone, vocab, tiny_voc21_embeddings, SegmentSettings())
    described = torch.zeros(len(vocab), dtype=torch.bool)
    described[1:] = True
    rng = torch.Generator().manual_seed(0)
    with_descriptions = dataclasses.replace(
        tiny_voc21_embeddings, descriptions=torch.nn.functional.normalize(
            torch.randn(len(vocab), tiny_voc21_embeddings.queries.shape[1], generator=rng), dim=-1),
        described=described)
    after = Segmenter(tiny_backbone, vocab, with_descriptions, SegmentSettings())
    # the same description string ("descriptions") for two different sets of vectors
    twice = dataclasses.replace(with_descriptions, descriptions=with_descriptions.descriptions.flip(0))
    again = Segmenter(tiny_backbone, vocab, twice, SegmentSettings())
    assert after.ap_targets == again.ap_targets == "descriptions"
    assert len({run_key(before), run_key(after), run_key(again)}) == 3
    image = tmp_path / "images" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    with one_torch_thread():
        assert segment_one(before, image, image.parent, tmp_path / "out").status == "done"
        assert segment_one(before, image, image.parent, tmp_path / "out").status == "skipped"
        assert segment_one(after, image, image.parent, tmp_path / "out").status == "done"
        assert segment_one(again, image, image.parent, tmp_path / "out").status == "done"


def test_names_longer_than_the_text_context_are_named():
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    long_a = "very " * 70 + "large red bus"
    long_b = "very " * 70 + "large red car"
    assert names_cut_by_context(tokenizer, ["cat", long_a, "person in a shirt", long_b]) == [long_a, long_b]


def _same_weights(backbone: ClipBackbone, **built: str) -> ClipBackbone:
    """The tiny model's weights behind another dense head or text path (``variant``, ``protocol``,
    ``float_order``), the rest as ``backbone`` has it."""
    chosen = {name: built.get(name, getattr(backbone, name)) for name in ("variant", "protocol", "float_order")}
    return ClipBackbone(backbone.model, backbone.tokenizer, backbone.model_name, backbone.model_key, **chosen)


def test_segmenters_that_differ_only_in_variant_or_float_order_have_different_run_keys(
        tiny_backbone, tiny_voc21_embeddings):
    vocab = load_vocabulary("voc21")
    keys = {run_key(Segmenter(_same_weights(tiny_backbone, **choice), vocab, tiny_voc21_embeddings,
                              SegmentSettings(**choice)))
            for choice in ({}, {"variant": "gem"}, {"float_order": "reference"}, {"protocol": "original"})}
    assert len(keys) == 4


@pytest.mark.parametrize("built, asked, message", [
    ({"variant": "gem"}, {}, "the backbone runs variant 'gem', the settings ask for 'sclip': create it with "
                             "variant='sclip'"),
    ({"protocol": "original"}, {"variant": "sclip"}, "protocol 'original', the settings ask for 'freecp'"),
    ({"variant": "gem"}, {"float_order": "reference"},
     "variant 'gem', the settings ask for 'sclip'; float order 'fast', the settings ask for 'reference': create "
     "it with variant='sclip', float_order='reference' (freecp.build.create_backbone)"),
])
def test_a_backbone_that_disagrees_with_the_settings_is_refused_in_one_line(
        tiny_backbone, tiny_voc21_embeddings, built, asked, message):
    with pytest.raises(ValueError) as refused:
        Segmenter(_same_weights(tiny_backbone, **built), load_vocabulary("voc21"), tiny_voc21_embeddings,
                  SegmentSettings(**asked))
    assert message in str(refused.value) and "\n" not in str(refused.value)
