"""The one builder (``freecp.build``): the backbone follows the settings, the job's overrides and
store are honoured, the thread policy is set there, and a request names what decides the vectors.

The model is the tiny real architecture with random weights, asked for explicitly.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from freecp.build import build_segmenter, create_backbone
from freecp.clip.keys import weights_request
from freecp.jobs import ClipModel, SegmentJob, SettingsOverrides
from freecp.pipeline import run_key
from freecp.settings import settings_for
from freecp.threads import available_cores, current_policy
from freecp.vocab import load_vocabulary
from tests.fixtures_clip import one_torch_thread

TINY = ClipModel("freecp-tiny", pretrained="none")
VOCAB = load_vocabulary(["background: sky", "cat", "dog", "person"])


def _build(job: SegmentJob, settings=None, **options):
    with warnings.catch_warnings(), one_torch_thread():
        warnings.simplefilter("ignore", UserWarning)  # random weights, as asked
        return build_segmenter(VOCAB, job, settings, **options)


def test_the_backbone_is_built_with_the_dense_head_the_settings_name(tmp_path) -> None:
    job = SegmentJob(TINY, store=str(tmp_path / "store"))
    plain = _build(job)
    other = _build(job, settings_for(VOCAB.name, variant="clearclip", protocol="original", float_order="reference"))
    assert (plain.backbone.variant, plain.backbone.protocol, plain.backbone.float_order) == ("sclip", "freecp", "fast")
    assert (other.backbone.variant, other.backbone.protocol, other.backbone.float_order) == \
        ("clearclip", "original", "reference")
    assert other.settings.variant == "clearclip"
    assert run_key(plain) != run_key(other)


def test_without_settings_the_job_overrides_apply_to_the_preset() -> None:
    job = SegmentJob(TINY, SettingsOverrides(variant="naclip", rp_threshold=0.3), store=None)
    segmenter = _build(job)
    assert segmenter.backbone.variant == segmenter.settings.variant == "naclip"
    assert segmenter.settings.rp_threshold == 0.3


def test_no_store_encodes_afresh_and_a_store_is_filled_once(tmp_path) -> None:
    fresh = _build(SegmentJob(TINY, store=None))
    assert fresh.embeddings.source != "store"
    stored = _build(SegmentJob(TINY, store=str(tmp_path / "store")))
    assert stored.embeddings.source == "store"
    assert torch.allclose(stored.embeddings.queries, fresh.embeddings.queries, atol=1e-6)
    assert (tmp_path / "store" / "models").is_dir()
    again = _build(SegmentJob(TINY, store=str(tmp_path / "store"), no_encode=True))  # reads, encodes nothing
    assert torch.equal(again.embeddings.queries, stored.embeddings.queries)


@pytest.mark.parametrize("concurrent, segmenters", [(None, 2), (1, 1)])
def test_the_builder_sets_the_thread_policy(concurrent, segmenters) -> None:
    """``concurrent`` wins over ``settings.workers`` (the flows pass their pool's size)."""
    before = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random weights, as asked
            build_segmenter(VOCAB, SegmentJob(TINY, store=None), settings_for(VOCAB.name, workers=2),
                            concurrent=concurrent)
        policy = current_policy()
        assert policy.segmenters == segmenters
        assert policy.torch_threads == max(1, available_cores() // segmenters) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_create_backbone_takes_the_clip_model_whole_and_the_seed_decides_random_weights() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        first, same, other = (create_backbone(TINY, seed=seed) for seed in (0, 0, 1))
    assert first.model_key == same.model_key == "freecp-tiny/random-seed0" != other.model_key
    assert torch.equal(first.model.visual.conv1.weight, same.model.visual.conv1.weight)
    assert not torch.equal(first.model.visual.conv1.weight, other.model.visual.conv1.weight)


def test_a_weights_request_names_model_weights_activation_and_float_order(tmp_path) -> None:
    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"not really weights, but hashed all the same")
    requests = {weights_request(TINY), weights_request(TINY, "reference"), weights_request(TINY, seed=1),
                weights_request(ClipModel("freecp-tiny", pretrained="openai")),
                weights_request(ClipModel("freecp-tiny", clip_checkpoint=str(checkpoint))),
                weights_request(ClipModel("freecp-tiny", pretrained="none", quick_gelu=True))}
    assert len(requests) == 6
    assert weights_request(ClipModel("freecp-tiny", pretrained="none", device="cuda")) == weights_request(TINY)
