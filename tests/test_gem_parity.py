"""GEM's dense features and refinement attention against the reference's (../shared/parity, gem_low).

The backbone is built the way a user would: the default ``ViT-B-16`` and only the parity weights
file, which must give the QuickGELU model. On the reference's own normalised window crops, the
softmax over its 46 query embeddings must match its GEM softmax maps to float16 precision (the
fixtures are float16: within 4 units in the last place of each stored value). The refined maps
are checked by running freecp's refinement on the reference's normalised maps with our attention:
head 0 matches the reference to refinement's own small differences (the same for SCLIP), the
head average does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freecp.clip import ClipBackbone, load_backbone
from freecp.refine import affinity_transition, refine
from tests.fixtures_parity import require_parity

IMAGES = ("2011_000003", "2011_000006", "2011_000025")
FLOAT16_ULPS = 4          # softmax maps: at most this many float16 steps from the stored value
REFINED_MAX = 0.05        # refined maps (refinement's own differences, not the attention's)
REFINED_MEAN = 2e-3
WRONG_ATTENTION_MAX = 0.3  # the head-averaged attention is at least this far off somewhere


@pytest.fixture(scope="module")
def fixtures():
    return require_parity() / "fixtures"


@pytest.fixture(scope="module")
def gem(parity_weights) -> ClipBackbone:
    return load_backbone("ViT-B-16", checkpoint=parity_weights, variant="gem", protocol="freecp")


@pytest.fixture(scope="module")
def queries(fixtures) -> tuple[torch.Tensor, float]:
    text = np.load(fixtures / "sclip_low" / "text_embeddings.npz")
    return torch.from_numpy(text["query_features"]), float(text["logit_scale"])


def _crops(fixtures, image: str) -> torch.Tensor:
    return torch.from_numpy(np.load(fixtures / f"{image}_input.npz")["crops"].astype(np.float32))


def _softmax_maps(features: torch.Tensor, queries: tuple[torch.Tensor, float]) -> np.ndarray:
    embeddings, scale = queries
    return (scale * features @ embeddings.T).softmax(dim=-1).permute(0, 3, 1, 2).numpy()


def _assert_float16_close(ours: np.ndarray, stored: np.ndarray, what: str) -> None:
    steps = np.abs(ours - stored.astype(np.float32)) / np.spacing(stored).astype(np.float32)
    worst = np.unravel_index(int(steps.argmax()), steps.shape)
    assert steps.max() <= FLOAT16_ULPS, (f"{what}: window {worst[0]}, query {worst[1]} is {steps.max():.1f} "
                                         f"float16 steps from the reference")


def _refined(normalized: np.ndarray, attention: torch.Tensor) -> np.ndarray:
    return refine(torch.from_numpy(normalized.astype(np.float32)), affinity_transition(attention), 0.4).numpy()


def _foreground(fixtures) -> slice:
    """The queries after the reference's background names (refinement covers the classes only)."""
    return slice(int(np.load(fixtures / "sclip_low" / "text_embeddings.npz")["num_bkg_prompts"]), None)


def test_the_default_model_name_with_the_parity_weights_builds_quickgelu(gem):
    assert gem.architecture == "ViT-B-16-quickgelu"
    assert gem.model_key.startswith("ViT-B-16-quickgelu/file-")
    assert abs(gem.logit_scale - 100.0299) < 1e-3


@pytest.mark.parametrize("image", IMAGES)
def test_gem_softmax_and_refined_maps_match_the_reference(gem, queries, fixtures, image):
    stored = np.load(fixtures / "gem_low" / f"{image}_windows.npz")
    out = gem.dense_forward(_crops(fixtures, image))
    _assert_float16_close(_softmax_maps(out.features, queries), stored["softmax_maps"], f"gem {image} softmax")
    classes = _foreground(fixtures)
    difference = np.abs(_refined(stored["normalized_maps"][:, classes], out.attention) - stored["refined"][:, classes])
    assert difference.max() <= REFINED_MAX and difference.mean() <= REFINED_MEAN, (
        f"gem {image} refined: max {difference.max():.4f}, mean {difference.mean():.5f}")


def test_head_averaged_attention_would_not_match_gems_refinement(gem, fixtures):
    averaged = ClipBackbone(gem.model, gem.tokenizer, gem.model_name, gem.model_key, variant="gem",
                            protocol="original")
    stored = np.load(fixtures / "gem_low" / f"{IMAGES[0]}_windows.npz")
    out = averaged.dense_forward(_crops(fixtures, IMAGES[0])[:1])
    classes = _foreground(fixtures)
    refined = _refined(stored["normalized_maps"][:1, classes], out.attention)
    assert np.abs(refined - stored["refined"][:1, classes]).max() > WRONG_ATTENTION_MAX


def test_the_harness_agrees_with_the_reference_for_sclip_too(gem, queries, fixtures):
    sclip = ClipBackbone(gem.model, gem.tokenizer, gem.model_name, gem.model_key, variant="sclip")
    stored = np.load(fixtures / "sclip_low" / f"{IMAGES[0]}_windows.npz")
    out = sclip.dense_forward(_crops(fixtures, IMAGES[0])[:2])
    _assert_float16_close(_softmax_maps(out.features, queries), stored["softmax_maps"][:2], "sclip softmax")
