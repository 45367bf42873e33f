"""``freecp segment`` end to end: voc-mini, odd and broken files, resuming, clear errors.

The CLIP model is the tiny real architecture with random weights, so these tests check
plumbing (files, sizes, records, exit codes), never the quality of the masks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from freecp.cli import app
from freecp.io import read_label_map
from freecp.resources import sample_images

TINY = ["--model", "freecp-tiny", "--pretrained", "none"]
SAMPLES = sample_images()  # the three shipped photos


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("store"))


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_sample_photos_give_masks_overlays_with_legends_and_records(tmp_path, store):
    out = tmp_path / "out"
    result = run("segment", SAMPLES, "--vocab", "voc21", "--out", out, "--store", store,
                 *TINY, "--rp-threshold", "0.03", "--ap-threshold", "0.5")
    assert result.exit_code == 0, result.output
    records = pd.read_parquet(out / "records.parquet")
    assert sorted(records.path) == ["astronaut.jpg", "cat.jpg", "coffee.jpg"]
    assert set(records.status) == {"done"}
    for row in records.itertuples():
        source = Image.open(SAMPLES / row.path)
        mask = Image.open(out / row.mask)
        assert mask.mode == "P" and mask.size == source.size == (row.width, row.height)
        labels = read_label_map(out / row.mask)
        assert labels.max() < 21
        names = load_names()
        assert sorted(row.classes_present) == sorted(names[i] for i in np.unique(labels))
        overlay = Image.open(out / row.overlay)  # the image, then a legend strip under it
        assert overlay.width == source.width and overlay.height > source.height
        assert len(dict(row.rp_scores)) == 20  # every foreground class has a score
        assert set(row.removed_classes).isdisjoint(row.classes_present)
    assert "classes found most often" in result.output


def load_names():
    from freecp.vocab import load_vocabulary

    return load_vocabulary("voc21").class_names


def test_rerun_does_nothing_and_a_lost_output_is_redone(tmp_path, store):
    out = tmp_path / "out"
    images = tmp_path / "images"
    shutil.copytree(SAMPLES, images)
    args = ("segment", images, "--vocab", "voc21", "--out", out, "--store", store, *TINY)
    assert run(*args).exit_code == 0
    first = pd.read_parquet(out / "records.parquet")
    again = run(*args)
    assert again.exit_code == 0
    assert set(pd.read_parquet(out / "records.parquet").status) == {"done"}
    assert "│ 3      │ 0    │ 3" in again.output  # 3 images, 0 done, 3 skipped
    # a run killed halfway: one record and its mask never written; the new image is done too
    (out / ".records" / "cat.jpg.json").unlink()
    shutil.copy(images / "astronaut.jpg", images / "copy.jpg")
    third = run(*args)
    assert third.exit_code == 0
    assert "│ 4      │ 2    │ 2" in third.output
    final = pd.read_parquet(out / "records.parquet")
    assert len(final) == 4
    same = final.set_index("path").loc["astronaut.jpg", "content_hash"]
    assert same == first.set_index("path").loc["astronaut.jpg", "content_hash"]
    # changed settings make every image out of date
    changed = run(*args, "--scope", "image")
    assert "│ 4      │ 4    │ 0" in changed.output


def _write_odd_images(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Odd-but-valid images (expected mask size) and broken files (None)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray((rng.integers(0, 65535, (90, 130))).astype(np.uint16)).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a viewer shows it 90 wide, 130 high
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif)
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(rgb).save(folder / "nested" / "deeper" / "x.webp")
    Image.fromarray(rgb).save(folder / "big.bmp")
    good = folder / "full.jpg"
    Image.fromarray(rgb).save(good)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image at all")
    return {"gray.png": (130, 90), "rgba.png": (130, 90), "palette.png": (130, 90),
            "sixteen.png": (130, 90), "rotated.jpg": (90, 130), "nested/deeper/x.webp": (130, 90),
            "full.jpg": (130, 90), "big.bmp": None, "truncated.jpg": None, "empty.png": None,
            "notes.jpg": None}


def test_odd_images_work_and_bad_ones_are_recorded_while_the_run_goes_on(tmp_path, store):
    expected = _write_odd_images(tmp_path / "odd")
    # big.bmp is fine as an image; a pixel limit below its size makes it a refused input
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(tmp_path / "odd" / "big.bmp")
    out = tmp_path / "out"
    result = run("segment", tmp_path / "odd", "--vocab", "voc20", "--out", out, "--store", store,
                 *TINY, "--max-pixels", "50000")
    assert result.exit_code == 1, result.output  # some images failed
    records = pd.read_parquet(out / "records.parquet").set_index("path")
    assert set(records.index) == set(expected)
    for path, size in expected.items():
        row = records.loc[path]
        if size is None:
            assert row.status == "failed" and row.error, path
            assert not (out / "masks" / f"{path}.png").exists()
        else:
            assert row.status == "done", (path, row.error)
            assert Image.open(out / row["mask"]).size == size, path
    assert "pixels" in records.loc["big.bmp", "error"]
    assert "failed" in result.output and "truncated.jpg" in result.output


def test_symlinks_leading_out_are_not_followed_unless_asked_and_outputs_stay_inside(tmp_path, store):
    outside = tmp_path / "outside.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(outside)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(images / "own.png")
    (images / "link.jpg").symlink_to(outside)
    (images / "inside.png").symlink_to(images / "own.png")  # a link within the folder is just a file
    out = tmp_path / "out"
    default = run("segment", images, "--vocab", "voc20", "--out", out, "--store", store, *TINY)
    assert default.exit_code == 0, default.output
    assert sorted(pd.read_parquet(out / "records.parquet").path) == ["inside.png", "own.png"]
    assert "1 symlinks lead outside" in default.output and "link.jpg" in default.output
    followed = run("segment", images, "--vocab", "voc20", "--out", out, "--store", store, *TINY, "--follow-symlinks")
    assert followed.exit_code == 0, followed.output
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()} - {outside.resolve()}
    assert all(out.resolve() in p.parents or images.resolve() in p.parents
               or Path(store).resolve() in p.parents for p in written)
    assert (out / "masks" / "link.jpg.png").is_file()


def test_user_errors_are_one_clear_line(tmp_path, store):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("segment", empty, "--vocab", "voc20", "--out", tmp_path / "o", "--store", store, *TINY)
    assert result.exit_code == 2 and "no images" in result.output
    bad_vocab = tmp_path / "v.txt"
    bad_vocab.write_text("cat\n\ndog\n")
    result = run("segment", empty, "--vocab", bad_vocab, "--out", tmp_path / "o", "--store", store, *TINY)
    assert result.exit_code == 2 and "line 2: blank line" in result.output
    result = run("segment", SAMPLES, "--vocab", "voc20", "--out", tmp_path / "o",
                 "--store", tmp_path / "fresh-store", "--no-encode", *TINY)
    assert result.exit_code == 2 and "freecp encode" in result.output


def test_the_variant_is_set_by_variant_and_for_one_release_by_backbone_with_a_notice(tmp_path, store):
    image = tmp_path / "in" / "one.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    keys = {}
    for flag in ("--variant", "--backbone", None):
        out = tmp_path / (flag or "default").strip("-")
        result = run("segment", image, "--vocab", "voc20", "--out", out, "--store", store, "--short-side", "48",
                     *TINY, *([flag, "gem"] if flag else []))
        assert result.exit_code == 0, result.output
        assert ("--backbone is deprecated" in result.output) == (flag == "--backbone")
        keys[flag] = pd.read_parquet(out / "records.parquet").run_key.tolist()
    assert keys["--variant"] == keys["--backbone"] != keys[None]  # both spellings run GEM, the default SCLIP
    for flag in ("--variant", "--backbone"):
        refused = run("segment", image, "--vocab", "voc20", "--out", tmp_path / "x", flag, "sam", *TINY)
        assert refused.exit_code == 2 and f"Invalid value for '{flag}'" in refused.output and "'sam' is not one" in refused.output


def test_offline_default_weights_fail_with_one_message_and_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "freecp", "segment", str(SAMPLES),
                           "--vocab", "voc21", "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "--clip-checkpoint" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))] == []
