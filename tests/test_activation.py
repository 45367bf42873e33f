"""A checkpoint file gets the activation its weights need (freecp.clip.activation's rules).

The rules matter for names open_clip defines with both activations (``ViT-B-16`` and
``ViT-B-16-quickgelu``); a ViT-B-16 takes long to build, so these tests register a tiny pair of
the same kind, ``freecp-twin`` (GELU) and ``freecp-twin-quickgelu``, from the tiny config.
The parity weights with the default ``ViT-B-16`` are covered in test_gem_parity.py.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from typer.testing import CliRunner

import freecp.clip.activation as activation
from freecp.cli import app
from freecp.clip import WeightsUnavailableError
from freecp.build import create_backbone
from freecp.jobs import ClipModel
from freecp.clip.activation import AmbiguousActivationError, content_digest, tag_activation
from freecp.clip.model import ClipBackbone

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TWIN = "freecp-twin"


@pytest.fixture(scope="module")
def twin_checkpoint(tmp_path_factory) -> Path:
    """A bare state dict of a random ``freecp-twin`` (nothing in it names an activation)."""
    configs = tmp_path_factory.mktemp("configs")
    tiny = open_clip.get_model_config("freecp-tiny")
    for name, quick in ((TWIN, False), (TWIN + "-quickgelu", True)):
        (configs / f"{name}.json").write_text(json.dumps({**tiny, "quick_gelu": quick}))
    open_clip.add_model_config(configs)
    path = tmp_path_factory.mktemp("weights") / "twin.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TWIN).state_dict(), path)
    return path


def _uses_quick_gelu(backbone: ClipBackbone) -> bool:
    return isinstance(backbone.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def _same_weights(a: ClipBackbone, b: ClipBackbone) -> bool:
    left, right = a.model.state_dict(), b.model.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_a_bare_state_dict_for_a_name_with_both_activations_is_refused_with_the_options(twin_checkpoint):
    with pytest.raises(AmbiguousActivationError) as refused:
        create_backbone(ClipModel(TWIN, clip_checkpoint=twin_checkpoint))
    message = str(refused.value)
    assert str(twin_checkpoint) in message
    assert all(option in message for option in ("--quick-gelu", "--no-quick-gelu", f"--model {TWIN}-quickgelu",
                                                "open_clip_config.json"))


def test_an_explicit_choice_builds_that_activation_under_its_own_key(twin_checkpoint):
    quick = create_backbone(ClipModel(TWIN, clip_checkpoint=twin_checkpoint, quick_gelu=True))
    plain = create_backbone(ClipModel(TWIN, clip_checkpoint=twin_checkpoint, quick_gelu=False))
    assert (quick.architecture, _uses_quick_gelu(quick)) == (f"{TWIN}-quickgelu", True)
    assert (plain.architecture, _uses_quick_gelu(plain)) == (TWIN, False)
    digest = hashlib.sha256(twin_checkpoint.read_bytes()).hexdigest()[:16]
    assert quick.model_key == f"{TWIN}-quickgelu/file-{digest}" and plain.model_key == f"{TWIN}/file-{digest}"
    assert _same_weights(quick, plain)
    windows = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(quick.dense_forward(windows).features, plain.dense_forward(windows).features, atol=1e-4)


def test_a_name_that_states_its_activation_needs_no_other_rule(twin_checkpoint, tiny_backbone, tmp_path):
    assert _uses_quick_gelu(create_backbone(ClipModel(f"{TWIN}-quickgelu", clip_checkpoint=twin_checkpoint)))
    path = tmp_path / "tiny.pt"  # freecp-tiny has no GELU twin: its QuickGELU config is the only one
    torch.save(tiny_backbone.model.state_dict(), path)
    tiny = create_backbone(ClipModel("freecp-tiny", clip_checkpoint=path))
    assert tiny.architecture == "freecp-tiny" and _uses_quick_gelu(tiny)


def test_an_openai_style_torchscript_archive_builds_quickgelu_with_its_weights(twin_checkpoint, tmp_path):
    reference = create_backbone(ClipModel(TWIN, clip_checkpoint=twin_checkpoint, quick_gelu=True))
    images, texts = torch.randn(1, 3, 224, 224), reference.tokenizer(["a cat"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(reference.model, (images, texts), check_trace=False, strict=False)
    archive = tmp_path / "ViT-twin.pt"
    traced.save(str(archive))
    loaded = create_backbone(ClipModel(TWIN, clip_checkpoint=archive))
    assert loaded.architecture == f"{TWIN}-quickgelu" and _uses_quick_gelu(loaded)
    assert _same_weights(loaded, reference)


@pytest.mark.parametrize("stated", [True, False])
def test_open_clip_config_beside_the_file_decides(twin_checkpoint, tmp_path, stated):
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "open_clip_pytorch_model.bin").write_bytes(twin_checkpoint.read_bytes())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": stated}}))
    loaded = create_backbone(ClipModel(TWIN, clip_checkpoint=folder / "open_clip_pytorch_model.bin"))
    assert _uses_quick_gelu(loaded) is stated


def test_a_known_checkpoint_is_recognised_by_its_content(twin_checkpoint, monkeypatch):
    digest = content_digest(torch.load(twin_checkpoint))
    monkeypatch.setitem(activation.KNOWN_CHECKPOINTS, digest, (True, "the twin test weights"))
    loaded = create_backbone(ClipModel(TWIN, clip_checkpoint=twin_checkpoint))
    assert loaded.architecture == f"{TWIN}-quickgelu" and _uses_quick_gelu(loaded)


def test_the_content_digest_ignores_the_file_name_but_not_a_changed_value(twin_checkpoint, tmp_path):
    state = torch.load(twin_checkpoint)
    torch.save(state, tmp_path / "other-name.pt")
    assert hashlib.sha256((tmp_path / "other-name.pt").read_bytes()).digest() != \
        hashlib.sha256(twin_checkpoint.read_bytes()).digest()
    again = torch.load(tmp_path / "other-name.pt")
    assert content_digest(again) == content_digest(state)
    again["logit_scale"] = again["logit_scale"] + 1e-3
    assert content_digest(again) != content_digest(state)


def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot read checkpoint"):
        create_backbone(ClipModel("ViT-B-16", clip_checkpoint=broken))


def test_pretrained_tags_take_their_activation_from_open_clips_registry():
    openai = tag_activation("ViT-B-16", "openai", None)
    assert (openai.quick_gelu, openai.architecture) == (True, "ViT-B-16-quickgelu")
    laion = tag_activation("ViT-B-16", "laion2b_s34b_b88k", None)
    assert (laion.quick_gelu, laion.architecture) == (False, "ViT-B-16")
    with pytest.raises(ValueError, match="trained with QuickGELU"):
        tag_activation("ViT-B-16", "openai", False)


def test_encode_cli_refuses_an_ambiguous_checkpoint_and_obeys_quick_gelu(twin_checkpoint, tmp_path):
    vocab = tmp_path / "pets.txt"
    vocab.write_text("cat\ndog\n", encoding="utf-8")
    args = ["encode", str(vocab), "--store", str(tmp_path / "store"), "--model", TWIN,
            "--clip-checkpoint", str(twin_checkpoint), "--no-progress"]
    refused = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert refused.exit_code == 1 and "--no-quick-gelu" in refused.output
    assert "Traceback" not in refused.output
    done = CliRunner().invoke(app, [*args, "--quick-gelu"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    listed = CliRunner().invoke(app, ["store", "ls", str(tmp_path / "store")], env={"COLUMNS": "200"})
    assert f"{TWIN}-quickgelu/file-" in listed.output
