"""PAMR and the AP text controls as settings: the CLI, the records, the run key, the fallbacks.

Tiny CLIP with random weights: these tests check what is run and recorded, not mask quality
(``tests/test_pamr.py`` checks PAMR's numbers, ``tests/test_simulated_benchmark.py`` its effect).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from freecp import compose
from freecp.ap_texts import RANDOM_WORDS, for_ap_texts, random_descriptors
from freecp.cli import app
from freecp.clip import embed_vocabulary
from freecp.jobs import SettingsOverrides
from freecp.pipeline import run_key
from freecp.segmenter import Segmenter
from freecp.settings import SegmentSettings
from freecp.vocab import load_vocabulary
from tests.fixtures_clip import one_torch_thread

TINY = ["--model", "freecp-tiny", "--pretrained", "none"]
CHEAP = ["--short-side", "64", "--window", "64", "--stride", "64"]


def _images(folder, count: int = 2) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.zeros((48, 64, 3), np.uint8)
        pixels[:, 32:] = 200
        pixels = np.clip(pixels + rng.integers(0, 20, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")


def test_cli_records_pamr_and_ap_texts_and_a_change_redoes_the_images(tmp_path) -> None:
    images, out, store = tmp_path / "images", tmp_path / "out", tmp_path / "store"
    _images(images)
    vocab = tmp_path / "pets.txt"  # three classes: little to encode
    vocab.write_text("background: wall\ncat\ndog\n")
    common = ["segment", str(images), "--vocab", str(vocab), "--out", str(out), "--store", str(store), *TINY, *CHEAP,
              "--rp-threshold", "0.0"]
    runner = CliRunner()
    with one_torch_thread():
        first = runner.invoke(app, [*common, "--pamr", "--pamr-steps", "2", "--pamr-dilations", "1,2",
                                    "--ap-texts", "names"])
        assert first.exit_code == 0, first.output
        records = pd.read_parquet(out / "records.parquet")
        assert set(records.status) == {"done"}
        assert set(records.pamr) == {"applied"} and set(records.ap_texts) == {"names"}
        assert set(records.ap_targets) == {"class names (ap-texts names)"}
        again = runner.invoke(app, [*common, "--no-pamr", "--ap-texts", "random"])
        assert again.exit_code == 0, again.output
    redone = pd.read_parquet(out / "records.parquet")
    assert set(redone.status) == {"done"} and set(redone.pamr) == {"off"}  # another run key: segmented anew
    assert set(redone.run_key).isdisjoint(records.run_key)
    record = json.loads((out / ".records" / "im0.png.json").read_text())
    assert record["pamr"] == "off" and record["ap_texts"] == "random"
    assert record["ap_targets"] == "class names (no random-word descriptor embeddings)"  # the store has none


@pytest.mark.parametrize(("args", "message"), [
    (["--pamr-dilations", "8,x"], "pamr-dilations must be comma-separated whole numbers"),
    (["--pamr-dilations", "0"], "pamr-dilations must be whole numbers of at least 1"),
    (["--ap-texts", "llm"], "'llm' is not one"),  # refused by Typer: the option is a Literal
])
def test_bad_values_are_one_line_before_any_model(tmp_path, args, message) -> None:
    _images(tmp_path / "images", 1)
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "images"), "--vocab", "voc21",
                                      "--out", str(tmp_path / "out"), *TINY, *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_settings_hash_and_overrides() -> None:
    base = SegmentSettings()
    assert base.pamr is False and base.pamr_steps == 10 and base.pamr_dilations == (8, 16)
    assert base.ap_texts == "descriptions"
    hashes = {base.content_hash, base.replace(pamr=True).content_hash, base.replace(pamr_steps=3).content_hash,
              base.replace(pamr_dilations=(1, 2)).content_hash, base.replace(ap_texts="random").content_hash}
    assert len(hashes) == 5
    settings = SettingsOverrides(pamr=True, pamr_dilations="4,8", ap_texts="names").settings("voc21")
    assert (settings.pamr, settings.pamr_dilations, settings.ap_texts) == (True, (4, 8), "names")
    assert SettingsOverrides().settings("voc21").pamr_dilations == (8, 16)


def test_random_descriptors_are_seeded_per_class_and_shaped_like_waffleclip() -> None:
    first = random_descriptors("cat", 5)
    assert first == random_descriptors("cat", 5) and first != random_descriptors("dog", 5)
    assert len(first) == 5 and len(set(first)) > 1
    for text in first:
        assert text.startswith("a photo of a cat, which has ") and text.endswith(".")
        assert all(word in RANDOM_WORDS for word in text[len("a photo of a cat, which has "):-1].split())


def test_each_control_gives_its_own_crop_targets_and_run_key(tiny_backbone) -> None:
    vocab = load_vocabulary("voc21")
    descriptions = {"cat": ["a small furry pet.", "whiskers and a tail.", "a cat on a sofa."],
                    "dog": ["a loyal pet that barks."]}
    with one_torch_thread():
        embeddings = embed_vocabulary(tiny_backbone, vocab, descriptions)
        segmenters = {choice: Segmenter(tiny_backbone, vocab, embeddings, SegmentSettings(ap_texts=choice))
                      for choice in ("descriptions", "names", "random")}
        random_control = for_ap_texts(embeddings, vocab, "random", tiny_backbone)
    cat, dog = vocab.class_names.index("cat"), vocab.class_names.index("dog")
    names = embeddings.class_name_embeddings(len(vocab))
    assert torch.equal(segmenters["names"].crop_targets, names)
    assert not torch.equal(segmenters["descriptions"].crop_targets[cat], names[cat])
    assert random_control.described.nonzero().flatten().tolist() == sorted([cat, dog])
    with one_torch_thread():
        expected = tiny_backbone.encode_texts(random_descriptors("cat", 3))
    assert torch.allclose(segmenters["random"].crop_targets[cat],
                          torch.nn.functional.normalize(expected.mean(dim=0), dim=-1))
    assert segmenters["random"].ap_targets == "random-word descriptors; class names for 18 classes without any"
    assert len({run_key(s) for s in segmenters.values()}) == 3
    unknown_counts = dataclasses.replace(embeddings, description_counts=None)
    with pytest.raises(ValueError, match="number of descriptions per class"):
        for_ap_texts(unknown_counts, vocab, "random", tiny_backbone)


def test_pamr_out_of_memory_keeps_the_image_and_says_so(tiny_backbone, tiny_voc21_embeddings, monkeypatch) -> None:
    """An allocation failure cannot be provoked safely on a shared machine, so PAMR is replaced by
    a stand-in that raises what torch's CPU allocator raises; the image is composed without it."""
    vocab = load_vocabulary("voc21")
    settings = SegmentSettings(short_side=64, window=64, stride=64, rp_threshold=0.0)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3)).astype(np.uint8)

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    with one_torch_thread():
        plain = Segmenter(tiny_backbone, vocab, tiny_voc21_embeddings, settings).segment(image)
        monkeypatch.setattr(compose, "propagate", exhausted)
        refused = Segmenter(tiny_backbone, vocab, tiny_voc21_embeddings, settings.replace(pamr=True)).segment(image)
    assert plain.pamr == "off" and refused.pamr == "skipped: out of memory"
    assert np.array_equal(plain.labels, refused.labels)


def test_random_control_counts_the_descriptions_the_store_holds(tmp_path, tiny_backbone) -> None:
    from freecp.encoding import ensure_encoded, load_embeddings
    from freecp.stores.embeddings import EmbeddingStore

    vocab = load_vocabulary(["background: wall", "cat", "dog", "bird"])
    store = EmbeddingStore(str(tmp_path / "store"))
    with one_torch_thread():
        ensure_encoded(store, vocab, tiny_backbone, {"cat": ["a pet.", "a tail.", "whiskers."], "dog": ["barks."]})
        plain = load_embeddings(store, vocab, tiny_backbone)
        counted = load_embeddings(store, vocab, tiny_backbone, description_counts=True)
        control = Segmenter(tiny_backbone, vocab, counted, SegmentSettings(ap_texts="random"))
    assert plain.description_counts is None
    assert counted.description_counts.tolist() == [0, 3, 1, 0]
    assert control.embeddings.described.tolist() == [False, True, True, False]
    assert control.ap_targets == "random-word descriptors; class names for 1 classes without any"
