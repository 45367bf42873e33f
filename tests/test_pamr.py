"""PAMR (freecp.pamr) against the reference module's outputs, and what must hold in any case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from freecp.pamr import local_affinity, pamr
from tests.shared_data import PARITY

FIXTURES = PARITY / "fixtures" / "pamr"
STEMS = ("2011_000003", "2011_000006", "2011_000025")


def _fixture(stem: str) -> dict[str, np.ndarray]:
    path = FIXTURES / f"{stem}.npz"
    if not path.exists():
        pytest.skip(f"PAMR fixture {path} is absent (CI has the shared data as ../shared beside the checkout)")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _reference_inputs(fixture: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The image as the reference normalises it, and the logits resized as its module does."""
    rgb = torch.from_numpy(fixture["image_rgb"]).float()
    image = ((rgb - torch.from_numpy(fixture["mean"])) / torch.from_numpy(fixture["std"])).permute(2, 0, 1)
    logits = F.interpolate(torch.from_numpy(fixture["logits"]), size=image.shape[-2:], mode="bilinear",
                           align_corners=True)[0]
    return image.contiguous(), logits


@pytest.mark.parametrize(("stem", "budget"), [(stem, None) for stem in STEMS] + [(STEMS[0], 3 * 2**20)],
                         ids=[*STEMS, "bands-and-chunks"])
def test_matches_the_reference_module(stem: str, budget: int | None) -> None:
    """Same labels everywhere and the same float16 values, whole or in small bands and chunks."""
    fixture = _fixture(stem)
    image, logits = _reference_inputs(fixture)
    options = {} if budget is None else {"budget": budget}
    refined = pamr(image, logits, int(fixture["num_iter"]), tuple(fixture["dilations"].tolist()), **options)
    assert np.array_equal(refined.argmax(dim=0).numpy(), fixture["labels"])
    assert np.array_equal(refined.numpy().astype(np.float16), fixture["refined"])


def test_zero_maps_stay_zero_and_constants_stay_constant() -> None:
    """Each step is a convex combination: a purged class stays purged, a flat map stays flat."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(3, 40, 50, generator=generator)
    scores = torch.stack([torch.zeros(40, 50), torch.full((40, 50), 0.25), torch.rand(40, 50, generator=generator)])
    refined = pamr(image, scores, steps=5, dilations=(1, 2))
    assert torch.equal(refined[0], torch.zeros(40, 50))
    assert torch.allclose(refined[1], torch.full((40, 50), 0.25))
    assert refined[2].min() >= scores[2].min() and refined[2].max() <= scores[2].max()


def test_affinities_are_weights_that_follow_edges() -> None:
    """Weights sum to one per pixel, and across a colour edge they are far below those along it."""
    image = torch.zeros(3, 20, 20)
    image[:, :, 10:] = 3.0
    image += 0.01 * torch.randn(3, 20, 20, generator=torch.Generator().manual_seed(1))
    weights = local_affinity(image, (1,))
    assert torch.allclose(weights.sum(dim=0), torch.ones(20, 20))
    left, right = 3, 4  # neighbour (0, -1) and (0, +1) in row-major order without the centre
    assert (weights[right, :, 9] < 1e-3 * weights[left, :, 9]).all()


def test_mismatched_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        pamr(torch.zeros(3, 8, 8), torch.zeros(2, 8, 9), steps=1, dilations=(1,))
