"""The dense CLIP backbone on the tiny random-weight config: shapes, batching, positions, loading."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings

import pytest
import torch

from freecp.clip import ClipBackbone, WeightsUnavailableError
from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.clip.model import LAST_BLOCK_PATHS, _interpolated_positions
from freecp.settings import PROTOCOLS, VARIANTS

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _windows(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def _quiet_load(clip: ClipModel, **head) -> ClipBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return create_backbone(clip, **head)


def test_every_protocol_names_every_variant():
    assert set(LAST_BLOCK_PATHS) == set(PROTOCOLS)
    assert all(set(paths) == set(VARIANTS) for paths in LAST_BLOCK_PATHS.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_forward_gives_unit_patch_features_and_patch_attention(tiny_backbone, variant, protocol):
    backbone = ClipBackbone(tiny_backbone.model, tiny_backbone.tokenizer, "freecp-tiny",
                            tiny_backbone.model_key, variant=variant, protocol=protocol)
    out = backbone.dense_forward(_windows(2, 96, 128))        # a 6 x 8 patch grid
    assert out.features.shape == (2, 6, 8, backbone.embed_dim)
    assert torch.allclose(out.features.norm(dim=-1), torch.ones(2, 6, 8), atol=1e-5)
    assert out.attention.shape == (2, 48, 48)
    assert (out.attention >= 0).all()
    rows = out.attention.sum(-1)                               # CLS column dropped: at most 1
    assert (rows > 0).all() and (rows <= 1 + 1e-5).all()


def test_variants_differ_in_their_features(tiny_backbone):
    windows = _windows(1, 128, 128)
    features = {
        variant: ClipBackbone(tiny_backbone.model, tiny_backbone.tokenizer, "freecp-tiny", "k",
                              variant=variant).dense_forward(windows).features
        for variant in VARIANTS
    }
    assert all(not torch.allclose(features["sclip"], features[v], atol=1e-4) for v in VARIANTS if v != "sclip")


def test_windows_in_one_batch_equal_windows_one_by_one(tiny_backbone):
    windows = _windows(3, 192, 192, seed=1)
    batched = tiny_backbone.dense_forward(windows)
    for i in range(3):
        single = tiny_backbone.dense_forward(windows[i:i + 1])
        assert torch.allclose(batched.features[i], single.features[0], atol=1e-5)
        assert torch.allclose(batched.attention[i], single.attention[0], atol=1e-6)


def test_crops_give_one_unit_embedding_each_independent_of_the_batch(tiny_backbone):
    crops = _windows(3, 112, 112, seed=2)
    together = tiny_backbone.encode_crops(crops)
    assert together.shape == (3, tiny_backbone.embed_dim)
    assert torch.allclose(together.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(together[1], tiny_backbone.encode_crops(crops[1:2])[0], atol=1e-5)


def test_positions_of_the_native_grid_are_unchanged_and_others_keep_the_cls_position(tiny_backbone):
    positions = tiny_backbone.model.visual.positional_embedding  # 1 + 14 * 14 rows
    assert positions.shape[0] == 1 + 14 * 14
    assert torch.equal(_interpolated_positions(positions, 14, 14), positions)
    resized = _interpolated_positions(positions, 10, 24)
    assert resized.shape == (1 + 10 * 24, positions.shape[1])
    assert torch.equal(resized[0], positions[0])


def test_interpolated_positions_follow_a_smooth_grid():
    # A linear ramp over the 14 x 14 grid stays monotonic after resizing to 20 x 9.
    ramp = torch.arange(14.0)[:, None].expand(14, 14).reshape(-1, 1).repeat(1, 2)
    positions = torch.cat([torch.full((1, 2), -5.0), ramp])
    resized = _interpolated_positions(positions, 20, 9)[1:, 0].reshape(20, 9)
    assert (resized[1:] - resized[:-1] > 0).all()
    assert torch.allclose(resized[:, 0], resized[:, -1], atol=1e-4)


def test_encode_texts_is_deterministic_normalised_and_batch_independent(tiny_backbone):
    texts = ["a photo of a cat.", "a dog", "zebra crossing"]
    first = tiny_backbone.encode_texts(texts)
    assert first.shape == (3, tiny_backbone.embed_dim) and first.dtype == torch.float32
    assert torch.equal(first, tiny_backbone.encode_texts(texts))
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(first, tiny_backbone.encode_texts(texts, batch_size=2), atol=1e-5)
    assert not torch.allclose(first[0], first[1])


def test_text_forward_equals_open_clips_forward(tiny_backbone):
    texts = ["a photo of a cat.", "itap of a television monitor.", "x", "a very long text " * 30]
    with torch.inference_mode():
        full = torch.nn.functional.normalize(
            tiny_backbone.model.encode_text(tiny_backbone.tokenizer(texts)).float(), dim=-1)
    assert torch.allclose(tiny_backbone.encode_texts(texts, batch_size=2), full, atol=1e-5)


def test_random_weights_depend_only_on_the_seed(tiny_backbone):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    again = _quiet_load(ClipModel("freecp-tiny", pretrained="none"), seed=0)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's random stream is left alone
    other = _quiet_load(ClipModel("freecp-tiny", pretrained="none"), seed=1)
    assert _same_weights(again.model, tiny_backbone.model)
    assert not _same_weights(other.model, tiny_backbone.model)
    assert again.model_key == "freecp-tiny/random-seed0" and other.model_key == "freecp-tiny/random-seed1"


def test_random_weights_warn_that_results_are_meaningless():
    with pytest.warns(UserWarning, match="RANDOM"):
        create_backbone(ClipModel("freecp-tiny", pretrained="none"))


def test_a_local_checkpoint_gives_the_same_weights_and_a_key_with_its_hash(tiny_backbone, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    loaded = create_backbone(ClipModel("freecp-tiny", clip_checkpoint=path))
    assert _same_weights(loaded.model, tiny_backbone.model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert loaded.model_key == f"freecp-tiny/file-{digest}"
    windows = _windows(1, 64, 64)
    assert torch.allclose(loaded.dense_forward(windows).features, tiny_backbone.dense_forward(windows).features)


def test_a_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_backbone(ClipModel("freecp-tiny", clip_checkpoint=tmp_path / "nothing.pt"))


def test_an_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="unknown CLIP model"):
        create_backbone(ClipModel("ViT-Imaginary-7", pretrained="none"))


def test_offline_pretrained_weights_fail_fast_and_point_at_a_local_checkpoint():
    script = (
        "from freecp.build import create_backbone\nfrom freecp.clip import WeightsUnavailableError\nfrom freecp.jobs import ClipModel\n"
        "try:\n"
        "    create_backbone(ClipModel('ViT-B-16', pretrained='openai'))\n"
        "except WeightsUnavailableError as err:\n"
        "    print('MESSAGE:', err)\n"
        "    raise SystemExit(3)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "--clip-checkpoint" in done.stdout
    assert "ViT-B-16/openai" in done.stdout
