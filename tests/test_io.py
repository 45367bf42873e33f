"""Image reading on odd and broken files, mask writing, and output-path confinement."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freecp.io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    palette,
    read_image,
    read_label_map,
    safe_output_path,
    write_mask,
    write_overlay,
)
from freecp.files import TEMP_PREFIX
from tests.shared_data import VOC_MINI, needs_voc_mini

VOC_GT = VOC_MINI / "SegmentationClass"
LIMIT = 10_000_000


def _rgb(height: int = 24, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png_with_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height but whose pixel data is a few bytes:
    decoding it would fail as truncated, so a size refusal proves nothing was decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_is_read_exactly(tmp_path: Path) -> None:
    pixels = _rgb()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", LIMIT)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_listed_format_is_readable(tmp_path: Path, suffix: str) -> None:
    pixels = np.zeros((16, 24, 3), dtype=np.uint8)
    pixels[:, 12:] = (30, 160, 220)
    Image.fromarray(pixels).save(tmp_path / f"f{suffix}")
    out = read_image(tmp_path / f"f{suffix}", LIMIT)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert out[8, 2].tolist() == pytest.approx([0, 0, 0], abs=12)
    assert out[8, 20].tolist() == pytest.approx([30, 160, 220], abs=12)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png", LIMIT)
    assert out.shape == (24, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 50, 0)  # transparent: black, whatever colour hides under it
    rgba[0, 2] = (200, 100, 50, 128)  # half: colour * 128 / 255, rounded
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = read_image(tmp_path / "t.png", LIMIT)
    assert out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[0, 2].tolist() == [100, 50, 25]


def test_palette_image_gives_palette_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices)
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png", LIMIT)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [40, 50, 60]
    assert out[1, 0].tolist() == [70, 80, 90]


def test_palette_transparency_is_composited_on_black(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8))
    image.putpalette([10, 20, 30, 40, 50, 60])
    image.save(tmp_path / "pt.png", transparency=1)
    out = read_image(tmp_path / "pt.png", LIMIT)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [0, 0, 0]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = read_image(tmp_path / "d.png", LIMIT)
    expected = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255 is a factor of 257
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) == 256  # the whole range survives, no plateau from clipping


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    out = read_image(tmp_path / "c.jpg", LIMIT)
    assert out.shape == (8, 16, 3)
    red, green, blue = out.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50


def test_exif_orientation_six_is_applied(tmp_path: Path) -> None:
    stored = np.full((20, 40, 3), 128, dtype=np.uint8)  # 40 wide, 20 high as stored
    stored[:8, :8] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "r.jpg", LIMIT)
    assert out.shape == (40, 20, 3)
    assert out[3, 16].tolist() == pytest.approx([255, 0, 0], abs=40)  # now at the top-right
    assert out[3, 3].tolist() == pytest.approx([128, 128, 128], abs=40)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "cut.jpg", LIMIT)


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "cut.png", LIMIT)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(tmp_path / "empty.jpg", LIMIT)


def test_text_named_jpg_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(tmp_path / "notes.jpg", LIMIT)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nothing.png", LIMIT)


def test_image_over_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    _png_with_header_only(tmp_path / "big.png", 5000, 4000)
    with pytest.raises(ImageReadError, match="exceeds the limit of 19999999"):
        read_image(tmp_path / "big.png", 19_999_999)
    # the same file under a limit it fits: now it is decoded, and its data is found missing
    with pytest.raises(ImageReadError, match="truncated|corrupt"):
        read_image(tmp_path / "big.png", 20_000_000)


def test_decompression_bomb_beyond_pillow_ceiling_is_refused(tmp_path: Path) -> None:
    _png_with_header_only(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ImageReadError, match="too large|exceeds"):
        read_image(tmp_path / "bomb.png", 10**10)


def test_image_at_the_limit_is_accepted(tmp_path: Path) -> None:
    Image.fromarray(_rgb(10, 10)).save(tmp_path / "ok.png")
    assert read_image(tmp_path / "ok.png", 100).shape == (10, 10, 3)
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "ok.png", 99)


@needs_voc_mini
def test_palette_matches_the_one_in_voc_annotations() -> None:
    colours = palette(256)
    with Image.open(VOC_GT / "2011_000003.png") as gt:
        assert gt.mode == "P"
        voc = np.array(gt.getpalette()[: 256 * 3], dtype=np.uint8).reshape(256, 3)
    np.testing.assert_array_equal(colours, voc)
    assert palette(21).shape == (21, 3) and palette(21).dtype == np.uint8
    assert len({tuple(c) for c in palette(1000)}) == 1000


@needs_voc_mini
def test_read_label_map_gives_indices_not_colours() -> None:
    labels = read_label_map(VOC_GT / "2011_000003.png")
    assert labels.shape == (338, 500)
    assert sorted(np.unique(labels).tolist()) == [0, 5, 15, 255]


def test_read_label_map_refuses_colour_images(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "colour.png")
    with pytest.raises(ImageReadError, match="class indices"):
        read_label_map(tmp_path / "colour.png")


def test_write_mask_round_trips_as_palette_png(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 21, size=(30, 40))
    target = tmp_path / "deep" / "er" / "mask.png"
    write_mask(target, labels, 21)
    with Image.open(target) as written:
        assert written.format == "PNG" and written.mode == "P"
        assert written.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_label_map(target), labels)
    assert [p.name for p in target.parent.iterdir()] == ["mask.png"]  # no temporary left behind


def test_write_mask_uses_sixteen_bits_above_256_classes(tmp_path: Path) -> None:
    labels = np.random.default_rng(2).integers(0, 1000, size=(30, 40))
    labels[0, 0] = 999
    write_mask(tmp_path / "m.png", labels, 1000)
    with Image.open(tmp_path / "m.png") as written:
        assert written.mode.startswith("I")
    np.testing.assert_array_equal(read_label_map(tmp_path / "m.png"), labels)


def test_write_mask_refuses_labels_out_of_range_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        write_mask(tmp_path / "bad.png", np.array([[0, 21]]), 21)
    assert list(tmp_path.iterdir()) == []


def test_write_mask_replaces_an_existing_file(tmp_path: Path) -> None:
    write_mask(tmp_path / "m.png", np.zeros((4, 4), dtype=np.int64), 3)
    write_mask(tmp_path / "m.png", np.full((4, 4), 2), 3)
    assert read_label_map(tmp_path / "m.png").tolist() == [[2] * 4] * 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_write_overlay_blends_image_and_class_colours(tmp_path: Path) -> None:
    image = np.full((16, 16, 3), 200, dtype=np.uint8)
    labels = np.zeros((16, 16), dtype=np.int64)
    labels[:, 8:] = 1  # class 1 is (128, 0, 0)
    write_overlay(tmp_path / "o" / "x.jpg", image, labels, 21, alpha=0.5)
    with Image.open(tmp_path / "o" / "x.jpg") as written:
        assert written.format == "JPEG"
        out = np.asarray(written.convert("RGB")).astype(int)
    assert out[8, 2].tolist() == pytest.approx([100, 100, 100], abs=8)
    assert out[8, 13].tolist() == pytest.approx([164, 100, 100], abs=8)


def test_overlay_legend_shows_the_colour_of_each_class_present(tmp_path: Path) -> None:
    image = np.full((40, 200, 3), 200, dtype=np.uint8)
    labels = np.zeros((40, 200), dtype=np.int64)
    labels[:, 100:] = 15  # person: (192, 128, 128); classes 1..14 are absent
    names = ["background", *[f"absent {i}" for i in range(1, 15)], "person"]
    write_overlay(tmp_path / "x.jpg", image, labels, 21, alpha=0.5, class_names=names + ["x"] * 5)
    with Image.open(tmp_path / "x.jpg") as written:
        out = np.asarray(written.convert("RGB")).astype(int)
    assert out.shape[0] > 40 and out.shape[1] == 200  # the legend is a strip under the image
    legend = out[40:]
    colours = palette(21)

    def shows(colour: np.ndarray) -> bool:  # a swatch: a block of pixels of that colour (JPEG-close)
        return int((np.abs(legend - colour.astype(int)).max(axis=2) <= 12).sum()) >= 50

    assert shows(colours[0]) and shows(colours[15])
    assert not shows(colours[1]) and not shows(colours[14])
    plain = tmp_path / "plain.jpg"
    write_overlay(plain, image, labels, 21, alpha=0.5)
    with Image.open(plain) as written:
        assert written.size == (200, 40)  # no names, no legend


def test_write_overlay_refuses_mismatched_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not match"):
        write_overlay(tmp_path / "x.jpg", _rgb(8, 8), np.zeros((8, 9), dtype=np.int64), 2)


def test_safe_output_path_keeps_the_whole_name(tmp_path: Path) -> None:
    assert safe_output_path(tmp_path, "a/b/photo.jpeg", ".png") == tmp_path / "a" / "b" / "photo.jpeg.png"
    assert safe_output_path(tmp_path, Path("x.tif"), ".jpg") == tmp_path / "x.tif.jpg"
    # a.jpg and a.png in one folder: distinct inputs, distinct outputs
    assert safe_output_path(tmp_path, "a.jpg", ".png") != safe_output_path(tmp_path, "a.png", ".png")


@pytest.mark.parametrize("relative", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "/tmp/x.png", ".."])
def test_safe_output_path_refuses_escapes(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError):
        safe_output_path(tmp_path / "out", relative, ".png")


def test_safe_output_path_refuses_symlinks_leading_out(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        safe_output_path(out, "link/x.jpg", ".png")
    (out / "inner").mkdir()
    (out / "ok").symlink_to(out / "inner", target_is_directory=True)
    assert safe_output_path(out, "ok/x.jpg", ".png") == out / "ok" / "x.jpg.png"
