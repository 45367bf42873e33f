"""Stage-by-stage parity with the published FreeCP reference (``../shared/parity``).

The shared folder's ``make_weights.py`` regenerates the random ViT-B/16 weights the reference
ran on; they are cached under ``.ci-cache/parity/`` and reused while their content digest
matches. The reference's outputs exist once per kind of CPU (``fixtures*/``); a canary (the
first image's float32 RP scores under ``sclip_low``) picks the set this CPU reproduces bit for
bit. Each test runs one fixture image through ``--protocol freecp --scope window --float-order
reference`` with the chosen set's text embeddings and fails with the first stage and window that
differ from that set (tests/parity_harness.py says what is compared: everything bit for bit at
the fixtures' precision, labels on 99.9 % of the pixels). On a CPU that reproduces no set, one warning line
says so and every set is compared within ``parity.TOLERANCES`` instead. A fresh spot check of
the text tower guards the stored text embeddings. Adding a fixture folder is one entry in
``CONFIGURATIONS``; adding a CPU's set is one more ``fixtures-<cpu>/`` folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from freecp.clip import ClipBackbone
from freecp.vocab import Vocabulary
from tests import parity_harness as parity

MISSING = parity.missing_material()
needs_fixtures = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


class ParityFixtureWarning(UserWarning):
    """This CPU reproduces no fixture set bit for bit: the suite compares within tolerances."""


@pytest.fixture(scope="session")
def parity_vocab() -> Vocabulary:
    return parity.reference_vocabulary()


@pytest.fixture(scope="session")
def parity_backbone(parity_weights: Path) -> ClipBackbone:
    return parity.load_parity_backbone(parity_weights)


@pytest.fixture(scope="session")
def parity_runs(parity_backbone, parity_vocab) -> parity.ParityRuns:
    return parity.ParityRuns(parity_backbone, parity_vocab)


@pytest.fixture(scope="session")
def parity_choice(parity_runs) -> parity.Choice:
    """The canary's choice; where no set matches, one warning line in the test output says so."""
    choice = parity_runs.choose(parity.fixture_sets())
    if choice.chosen is None:
        warnings.warn(ParityFixtureWarning(choice.line()), stacklevel=1)
    return choice


def _tolerances(choice: parity.Choice) -> parity.Tolerances | None:
    return None if choice.chosen else parity.TOLERANCES


@needs_fixtures
def test_the_weights_are_the_fixtures_and_the_logit_scale_is_theirs(parity_backbone):
    assert parity_backbone.logit_scale == pytest.approx(100.0299, abs=1e-4)


@needs_fixtures
def test_every_sets_text_embeddings_are_the_fixture_vocabularys(parity_vocab):
    """The stored vectors the suite segments with belong to the vocabulary's queries, row for row,
    and are unit vectors (the reference's own output; the spot check below re-encodes some)."""
    foreground = len(parity_vocab.foreground_indices)
    for fixture_set in parity.fixture_sets():
        stored = fixture_set.text()
        assert list(stored["query_names"]) == parity_vocab.queries, fixture_set.name
        assert int(stored["num_bkg_prompts"]) == len(parity_vocab.queries) - foreground
        for key in ("query_features", "query_featuresLLM"):
            vectors = stored[key][int(stored["num_bkg_prompts"]):] if key == "query_featuresLLM" else stored[key]
            assert vectors.dtype == np.float32 and vectors.shape[1] == 512
            assert np.abs(np.linalg.norm(vectors, axis=1) - 1).max() < 1e-6, (fixture_set.name, key)


@needs_fixtures
def test_freshly_encoded_texts_are_the_chosen_sets_bit_for_bit(parity_backbone, parity_vocab, parity_choice):
    """Today's text tower must still give the chosen set's bits (within the cosine tolerance of
    every set where none was chosen), whatever the stored vectors say."""
    sets = parity_choice.compared(parity.fixture_sets())
    differences = parity.spot_check_texts(parity_backbone, parity_vocab, sets, _tolerances(parity_choice))
    assert not differences, differences[0].describe("text", parity.TEXT_FIXTURE)


@needs_fixtures
@pytest.mark.parametrize("image", parity.IMAGES)
@pytest.mark.parametrize("name", parity.CONFIGURATIONS)
def test_every_stage_matches_the_reference(name: str, image: str, parity_runs, parity_choice, parity_vocab):
    config = parity.configuration(name)
    for fixture_set in parity_choice.compared(parity.fixture_sets()):
        labels, trace = parity_runs.run(config, fixture_set, image)
        differences, agreement = parity.compare_image(config, fixture_set, image, labels, trace, parity_vocab,
                                                      _tolerances(parity_choice))
        assert not differences, (f"against {fixture_set.name!r}: {differences[0].describe(name, image)} "
                                 f"(+{len(differences) - 1} more; {agreement.summary()})")


@needs_fixtures
@pytest.mark.parametrize("name", parity.CONFIGURATIONS)
def test_labels_agree_over_each_configurations_images(name: str, parity_runs, parity_choice):
    """Over the three images (each image's own floor is asserted above): the chosen set's share,
    or, where none was chosen, ``TOLERANCES.pixels`` against every set."""
    target = parity.PIXEL_TARGET if parity_choice.chosen else parity.TOLERANCES.pixels
    for fixture_set in parity_choice.compared(parity.fixture_sets()):
        share = parity_runs.pixel_agreement(parity.configuration(name), fixture_set)
        assert share >= target, f"{name}: labels agree with {fixture_set.name!r} on {100 * share:.3f} % of the pixels"


# ------------------------------------------------------- the choice itself, on constructed sets
def _constructed_sets(parent: Path, canaries: dict[str, np.ndarray]) -> tuple[parity.FixtureSet, ...]:
    """Fixture set folders holding only what the choice reads: the canary's stored RP scores,
    the text embeddings file that marks a folder as a set, and the AMD set's ``machine.txt``."""
    config, image = parity.CANARY
    for name, scores in canaries.items():
        for folder in (parent / name / config, parent / name / parity.TEXT_FIXTURE):
            folder.mkdir(parents=True, exist_ok=True)
        np.savez(parent / name / config / f"{image}_windows.npz", rp_scores=scores)
        np.savez(parent / name / parity.TEXT_FIXTURE / "text_embeddings.npz", query_names=np.array([]))
    (parent / "fixtures-amd-epyc-avx512" / "machine.txt").write_text("Model name: AMD EPYC\nthreads: 2\n")
    (parent / "fixtures-incomplete").mkdir()  # no text embeddings: not a set
    return parity.fixture_sets(parent)


def _canaries() -> dict[str, np.ndarray]:
    """Two sets' canaries one float32 step apart in one value, as two CPUs' are (or more)."""
    first = np.random.default_rng(0).random((8, 20), dtype=np.float32)
    second = first.copy()
    second[3, 7] = np.nextafter(second[3, 7], np.float32(1))
    return {"fixtures": first, "fixtures-amd-epyc-avx512": second}


def test_the_sets_are_the_fixtures_folders_first_set_first(tmp_path):
    sets = _constructed_sets(tmp_path, _canaries())
    assert [s.name for s in sets] == ["fixtures", "fixtures-amd-epyc-avx512"]
    assert [s.machine() for s in sets] == ["unrecorded", "AMD EPYC"]


def test_a_canary_equal_to_the_first_set_chooses_it_and_tries_no_other(tmp_path):
    canaries = _canaries()
    sets = _constructed_sets(tmp_path, canaries)
    asked = []
    choice = parity.choose_set(sets, lambda s: asked.append(s.name) or canaries["fixtures"].copy())
    assert choice.chosen == sets[0] and asked == ["fixtures"]
    assert choice.compared(sets) == [sets[0]]
    assert "reproduces fixture set 'fixtures'" in choice.line() and "exactly" in choice.line()


def test_a_canary_equal_to_the_second_set_chooses_it(tmp_path):
    canaries = _canaries()
    sets = _constructed_sets(tmp_path, canaries)
    choice = parity.choose_set(sets, lambda s: canaries["fixtures-amd-epyc-avx512"].copy())
    assert choice.chosen == sets[1]
    assert choice.tried["fixtures"].startswith("1/160 canary values differ")
    assert choice.tried["fixtures-amd-epyc-avx512"] == "canary bit-equal"
    assert "(AMD EPYC)" in choice.line()


def test_each_set_is_tried_with_its_own_inputs(tmp_path):
    """Ours is computed per set (with that set's text): a canary that equals one set only when
    computed with the other set's inputs chooses nothing."""
    canaries = _canaries()
    sets = _constructed_sets(tmp_path, canaries)
    swapped = {"fixtures": canaries["fixtures-amd-epyc-avx512"], "fixtures-amd-epyc-avx512": canaries["fixtures"]}
    assert parity.choose_set(sets, lambda s: swapped[s.name]).chosen is None


@pytest.mark.parametrize("change", ["one step", "negative zero", "float64", "one window fewer"])
def test_a_canary_equal_to_no_set_chooses_none_and_says_so_in_one_line(tmp_path, change):
    canaries = _canaries()
    ours = canaries["fixtures"].copy()
    if change == "one step":  # one step off the first set here, and off the second at [3, 7]
        ours[0, 0] = np.nextafter(ours[0, 0], np.float32(0))
    elif change == "negative zero":  # == calls 0.0 and -0.0 equal; their bits differ
        for scores in canaries.values():
            scores[0, 0] = 0.0
        ours[0, 0] = np.float32(-0.0)
    elif change == "float64":
        ours = ours.astype(np.float64)
    else:
        ours = ours[:-1]
    sets = _constructed_sets(tmp_path, canaries)
    choice = parity.choose_set(sets, lambda s: ours)
    assert choice.chosen is None
    assert choice.compared(sets) == list(sets)
    line = choice.line()
    assert "\n" not in line and "reproduces none of the fixture sets" in line
    assert "fixtures:" in line and "fixtures-amd-epyc-avx512:" in line and parity.TOLERANCES.describe() in line
