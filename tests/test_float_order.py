"""The float-order switch: ``fast`` (the default) and ``reference`` compute the same functions
in different float32 summation orders, so on the tiny model they agree to rounding and make the
same decisions, while the settings hash and the store's text key keep them apart, and vectors
stored before the switch existed are never served as either."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from typer.testing import CliRunner

from freecp.cli import app
from freecp.clip import ClipBackbone, embed_vocabulary
from freecp.clip.keys import weights_request
from freecp.encoding import encode, ensure_encoded, load_embeddings
from freecp.refine import propagate
from freecp.segmenter import Segmenter
from freecp.jobs import ClipModel, EncodeJob
from freecp.settings import SegmentSettings
from freecp.stores.embeddings import EmbeddingStore, MissingEmbeddingsError
from freecp.text_keys import float_order_of, model_key_of, text_key
from freecp.vocab import load_vocabulary
from tests.fixtures_clip import one_torch_thread

# A few classes, so both orders' embeddings are cheap; background names included as in voc21.
TINY = ClipModel("freecp-tiny", pretrained="none")
CLASSES = ["background; sky; wall", "cat", "dog", "person", "bottle", "chair"]
DESCRIPTIONS = {"cat": ["a small furry pet with whiskers", "a feline curled up asleep"],
                "dog": ["a loyal four-legged companion that barks"]}


def _reference(backbone: ClipBackbone) -> ClipBackbone:
    """The same weights with the reference text path."""
    return ClipBackbone(backbone.model, backbone.tokenizer, backbone.model_name, backbone.model_key,
                        variant=backbone.variant, protocol=backbone.protocol, float_order="reference")


def test_fast_is_the_default_and_each_order_has_its_own_settings_hash() -> None:
    fast, reference = SegmentSettings(), SegmentSettings(float_order="reference")
    assert fast.float_order == "fast"
    assert fast.content_hash != reference.content_hash
    with pytest.raises(ValueError, match="unknown float order 'exact'; choose one of fast, reference"):
        SegmentSettings(float_order="exact")


def test_each_order_files_its_text_vectors_under_its_own_key(tiny_backbone) -> None:
    reference = _reference(tiny_backbone)
    assert tiny_backbone.text_key == text_key(tiny_backbone.model_key, "fast") != reference.text_key
    assert [float_order_of(b.text_key) for b in (tiny_backbone, reference)] == ["fast", "reference"]
    assert model_key_of(reference.text_key) == tiny_backbone.model_key
    # A key written before float orders were recorded names neither, and is its own model key.
    assert float_order_of(tiny_backbone.model_key) is None
    assert model_key_of(tiny_backbone.model_key) == tiny_backbone.model_key
    assert weights_request(TINY) != weights_request(TINY, float_order="reference")


def test_the_two_text_paths_agree_to_rounding_but_take_different_sums(tiny_backbone) -> None:
    texts = ["a photo of a cat.", "a bad photo of the dog.", "a feline curled up asleep on a warm windowsill"]
    with one_torch_thread():
        fast = tiny_backbone.encode_texts(texts)
        reference = _reference(tiny_backbone).encode_texts(texts)
    cosines = (fast * reference).sum(dim=-1)
    assert bool((cosines > 0.99999).all()), cosines
    assert not torch.equal(fast, reference)  # the switch reaches the text tower


def test_batched_and_per_class_refinement_are_the_same_sums_in_another_order() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 5, 6, 7, generator=generator)
    transition = torch.rand(2, 42, 42, generator=generator)
    batched = propagate(maps, transition, 0.4)
    per_class = propagate(maps, transition, 0.4, reference_order=True)
    assert torch.allclose(batched, per_class, rtol=1e-5, atol=1e-6)


def test_fast_and_reference_make_the_same_decisions_on_the_tiny_model(tiny_backbone) -> None:
    vocab = load_vocabulary(CLASSES)
    image = np.random.default_rng(7).integers(0, 256, size=(80, 112, 3), dtype=np.uint8)
    geometry = dict(short_side=64, window=48, stride=16, rp_threshold=0.05, ap_threshold=0.3)
    results = {}
    with one_torch_thread():
        for backbone in (tiny_backbone, _reference(tiny_backbone)):
            settings = SegmentSettings(float_order=backbone.float_order, **geometry)
            embeddings = embed_vocabulary(backbone, vocab, DESCRIPTIONS)
            results[backbone.float_order] = Segmenter(backbone, vocab, embeddings, settings).segment(image)
    fast, reference = results["fast"].report, results["reference"].report
    assert fast.groups, "the settings must exercise ambiguity purification"
    assert (fast.kept, fast.removed, fast.groups) == (reference.kept, reference.removed, reference.groups)
    assert fast.rp_scores.keys() == reference.rp_scores.keys()
    assert all(fast.rp_scores[c] == pytest.approx(reference.rp_scores[c], abs=1e-5) for c in fast.rp_scores)
    assert np.array_equal(results["fast"].labels, results["reference"].labels)


def test_a_segmenter_refuses_a_backbone_of_the_other_order(tiny_backbone, tiny_voc21_embeddings) -> None:
    with pytest.raises(ValueError, match="float order 'fast', the settings ask for 'reference'"):
        Segmenter(tiny_backbone, load_vocabulary("voc21"), tiny_voc21_embeddings,
                  SegmentSettings(float_order="reference"))


class _UnrecordedTower:
    """What the store was given before float orders existed: vectors filed under the bare model
    key (here from the reference path, as the last such version computed them)."""

    def __init__(self, backbone: ClipBackbone) -> None:
        self.backbone, self.text_key, self.embed_dim = backbone, backbone.model_key, backbone.embed_dim

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        return self.backbone.encode_texts(texts, batch_size)


def test_a_store_written_before_float_orders_is_named_by_store_check_and_encoded_once_more(
        tmp_path, tiny_backbone, caplog) -> None:
    vocab = load_vocabulary(["background: sky", "cat, kitten", "dog"])
    url = str(tmp_path / "store")
    with one_torch_thread():
        ensure_encoded(EmbeddingStore(url), vocab, _UnrecordedTower(_reference(tiny_backbone)))
    old_request = weights_request(TINY).replace("|float_order=fast", "")
    EmbeddingStore(url).remember_key(old_request, tiny_backbone.model_key)

    check = CliRunner().invoke(app, ["store", "check", url])
    assert check.exit_code == 0, check.output
    assert f"unrecorded text path {tiny_backbone.model_key}:" in check.output
    with pytest.raises(MissingEmbeddingsError, match=r"nobody recorded.*not reused as 'fast'.*--float-order fast"):
        load_embeddings(EmbeddingStore(url), vocab, tiny_backbone)

    with one_torch_thread(), caplog.at_level("WARNING", logger="freecp.encoding"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights, as asked
        first = encode(vocab, EncodeJob(TINY, store=url))
        second = encode(vocab, EncodeJob(TINY, store=url))
        fresh = embed_vocabulary(tiny_backbone, vocab).queries
    lines = [r.getMessage() for r in caplog.records if "nobody recorded" in r.getMessage()]
    assert len(lines) == 1 and "encoding inline once under float order 'fast'" in lines[0]
    assert first.model_loaded and first.classes_encoded == len(set(vocab.queries))
    assert not second.model_loaded and second.classes_encoded == 0
    assert torch.equal(load_embeddings(EmbeddingStore(url), vocab, tiny_backbone).queries, fresh)
    legacy = load_embeddings(EmbeddingStore(url), vocab, tiny_backbone.model_key).queries
    assert not torch.equal(legacy, fresh)  # the old vectors are still there, and never served as 'fast'
