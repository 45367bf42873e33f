"""The README's first command: the ``samples`` vocabulary and the descriptions shipped for it,
which a segment run encodes when its store has none of its own, so AP scores crops against
descriptions offline. Real store folders, tiny CLIP with random weights."""

from __future__ import annotations

import warnings

import torch

from freecp.clip.text import average_embeddings
from freecp.encoding import ensure_encoded, load_embeddings, shipped_descriptions
from freecp.build import build_segmenter
from freecp.jobs import ClipModel, SegmentJob
from freecp.settings import settings_for
from freecp.stores.embeddings import EmbeddingStore
from freecp.vocab import load_vocabulary
from tests.fixtures_clip import one_torch_thread

SAMPLES = load_vocabulary("samples")


def test_every_sample_class_has_shipped_descriptions_and_no_other_vocabulary_does(tmp_path) -> None:
    shipped = shipped_descriptions(SAMPLES)
    assert set(shipped) == {SAMPLES.classes[k].name for k in SAMPLES.foreground_indices}
    assert all(texts and all(text.strip() for text in texts) for texts in shipped.values())
    assert shipped_descriptions(load_vocabulary("voc21")) is None
    lookalike = tmp_path / "samples.txt"  # a user's file of the same name is not the shipped vocabulary
    lookalike.write_text("cat\ndog\n")
    assert load_vocabulary(str(lookalike)).name == "samples"
    assert shipped_descriptions(load_vocabulary(str(lookalike))) is None


def _segmenter(store: str):
    with warnings.catch_warnings(), one_torch_thread():
        warnings.simplefilter("ignore", UserWarning)  # random weights, as asked
        return build_segmenter(SAMPLES, SegmentJob(ClipModel("freecp-tiny", pretrained="none"), store=store),
                               settings_for("samples"))


def test_a_segment_run_encodes_the_shipped_descriptions_into_a_store_that_has_none(tmp_path) -> None:
    segmenter = _segmenter(str(tmp_path / "store"))
    assert segmenter.ap_targets == "descriptions"
    coverage = EmbeddingStore(str(tmp_path / "store")).inspect(SAMPLES, segmenter.backbone.text_key)
    assert coverage.described == len(SAMPLES.foreground_indices)


def test_a_store_with_descriptions_of_its_own_keeps_them(tmp_path, tiny_backbone) -> None:
    url = str(tmp_path / "store")
    own = {"cat": ["a striped tabby with green eyes"]}
    with one_torch_thread():
        ensure_encoded(EmbeddingStore(url), SAMPLES, tiny_backbone, own)
        expected = average_embeddings(tiny_backbone.encode_texts(own["cat"]))
    segmenter = _segmenter(url)
    assert segmenter.fallback_classes == [name for name in SAMPLES.class_names[1:] if name != "cat"]
    cat = SAMPLES.class_names.index("cat")
    assert torch.equal(load_embeddings(EmbeddingStore(url), SAMPLES, tiny_backbone).descriptions[cat], expected)
