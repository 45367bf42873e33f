"""Stage-by-stage parity with the published FreeCP reference (``../shared/parity``).

The shared folder's ``make_weights.py`` regenerates the random ViT-B/16 weights the reference
ran on; they are cached under ``.ci-cache/parity/`` and reused while their content digest
matches. Each test runs one fixture image through ``--protocol freecp --scope window`` and fails
with the first stage and window that differ from the reference (tests/parity_harness.py says
what is compared: everything bit for bit at the fixtures' precision, labels on 99.9 % of the
pixels). The fixture vocabulary's text embeddings are cached beside the weights
(``parity_embeddings``); a fresh spot check guards the cache. Adding a fixture folder is one
entry in ``CONFIGURATIONS``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from freecp.clip import ClassEmbeddings, ClipBackbone
from freecp.segmenter import Segmenter
from freecp.vocab import Vocabulary
from tests import parity_harness as parity

MISSING = parity.missing_material()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

@pytest.fixture(scope="session")
def parity_vocab() -> Vocabulary:
    return parity.reference_vocabulary()


@pytest.fixture(scope="session")
def parity_backbone(parity_weights: Path) -> ClipBackbone:
    return parity.load_parity_backbone(parity_weights)


@pytest.fixture(scope="session")
def parity_text(parity_backbone: ClipBackbone, parity_vocab: Vocabulary) -> ClassEmbeddings:
    return parity.parity_embeddings(parity_backbone, parity_vocab)


@pytest.fixture(scope="session")
def parity_segmenters(parity_backbone, parity_vocab, parity_text) -> dict[str, Segmenter]:
    """One segmenter per configuration; configurations of one variant share a backbone."""
    backbones: dict[str, ClipBackbone] = {}
    segmenters = {}
    for name in parity.CONFIGURATIONS:
        config = parity.configuration(name)
        backbone = backbones.setdefault(config.variant, parity.backbone_for(parity_backbone, config.variant))
        segmenters[name] = Segmenter(backbone, parity_vocab, parity_text, config.settings())
    return segmenters


def test_the_weights_are_the_fixtures_and_the_logit_scale_is_theirs(parity_backbone):
    assert parity_backbone.logit_scale == pytest.approx(100.0299, abs=1e-4)


def test_class_name_and_description_embeddings_are_the_references_bit_for_bit(parity_text, parity_vocab):
    differences = parity.compare_text(parity_text, parity_vocab)
    assert not differences, differences[0].describe("text", parity.TEXT_FIXTURE)


def test_freshly_encoded_texts_are_the_references_bit_for_bit(parity_backbone, parity_vocab):
    """Whatever the embeddings cache holds, today's text tower must still give the reference's bits."""
    differences = parity.spot_check_texts(parity_backbone, parity_vocab)
    assert not differences, differences[0].describe("text", parity.TEXT_FIXTURE)


@pytest.mark.parametrize("image", parity.IMAGES)
@pytest.mark.parametrize("name", parity.CONFIGURATIONS)
def test_every_stage_matches_the_reference(name: str, image: str, parity_segmenters, parity_vocab):
    segmenter = parity_segmenters[name]
    labels, trace = parity.run_image(segmenter, image)
    differences, agreement = parity.compare_image(parity.configuration(name), image, labels, trace, parity_vocab)
    assert not differences, (f"{differences[0].describe(name, image)} "
                             f"(+{len(differences) - 1} more; {agreement.summary()})")
