"""Image reading and mask writing: the only place that turns files into arrays and back.

Reading is defensive because ``freecp segment`` walks folders it does not control: every file
either becomes an HxWx3 uint8 RGB array exactly as an image viewer shows it, or raises
``ImageReadError`` with a short reason that the per-image record keeps. Writing is atomic
(temporary name in the same directory, then ``os.replace``) so a crash never leaves a half mask
that a resumed run would take for finished work.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from freecp.files import atomic_write, contained
from freecp.legend import legend_strip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Pillow raises these for broken data; anything else is a bug and should surface as one.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageReadError(ValueError):
    """A file that cannot be used as an image; ``str()`` is a short reason for the record."""


def read_image(path: Path, max_pixels: int) -> np.ndarray:
    """Decode ``path`` to an HxWx3 uint8 RGB array, oriented as its EXIF tag says.

    Conversions: grayscale and palette images are expanded to RGB; images with transparency
    are composited on black (colour scaled by alpha) so hidden colour under fully transparent
    pixels cannot leak into the segmentation; CMYK goes through Pillow's conversion; 16-bit
    samples are rescaled from 0..65535 to 0..255 with rounding (not clipped); 32-bit integer
    images are read as 16-bit data (values clipped to 0..65535), floating-point ones are refused. Images whose
    header declares more than ``max_pixels`` pixels are refused before any pixel is decoded.
    Pillow's own decompression-bomb guard still applies on top (it refuses anything above
    ``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 Mpx); its warning is silenced because
    ``max_pixels`` is the limit that matters here.
    """
    with _open(path) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageReadError(
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
            )
        _decode(im)
        try:
            oriented = ImageOps.exif_transpose(im)
        except _DECODE_ERRORS as err:
            raise ImageReadError(f"unreadable EXIF orientation ({err})") from None
        return _to_rgb(oriented)


def read_label_map(path: Path) -> np.ndarray:
    """Class indices of a label image (palette index, 8-bit gray or 16-bit gray), never colours.

    No EXIF orientation is applied: label maps are stored in raw pixel order.
    """
    with _open(path) as im:
        _decode(im)
        if im.mode in ("P", "L", "1"):
            return np.asarray(im, dtype=np.uint8)
        if im.mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(im)
            if values.min() < 0 or values.max() > 65535:
                raise ImageReadError(f"label values outside 0..65535 in a {im.mode} image")
            return values.astype(np.uint16)
        raise ImageReadError(
            f"a label map must hold class indices (palette or grayscale), not {im.mode} pixels"
        )


def palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map: bits of the label index are dealt out to R, G and B in turn,
    from the most significant colour bit down, so neighbouring labels get distinct colours."""
    labels = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        shifted = labels >> (3 * bit)
        for channel in range(3):
            colours[:, channel] |= ((shifted >> channel) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def write_mask(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """Write a label map as PNG: palette PNG (pixel = class index, VOC colours) for up to 256
    classes, else 16-bit grayscale (up to 65536 classes)."""
    labels = _checked_labels(labels, num_classes)
    if num_classes <= 256:
        image = Image.fromarray(labels.astype(np.uint8))
        image.putpalette(palette(256).tobytes())
    elif num_classes <= 65536:
        image = Image.fromarray(labels.astype(np.uint16))
    else:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit PNG")
    _write_atomic(path, image, "PNG")


def write_overlay(
    path: Path, image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5,
    class_names: Sequence[str] | None = None,
) -> None:
    """Write a JPEG of the image blended with the colour of each pixel's class (``alpha`` = mask weight).

    With ``class_names`` (in label order) a legend under the image names the colour of every
    class present.
    """
    labels = _checked_labels(labels, num_classes)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} do not match")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, not {alpha}")
    colour_map = palette(num_classes)
    blend = np.rint((1.0 - alpha) * image.astype(np.float32) + alpha * colour_map[labels]).astype(np.uint8)
    if class_names is not None:
        present = np.unique(labels)
        strip = legend_strip(blend.shape[1], [class_names[i] for i in present], colour_map[present])
        blend = np.concatenate([blend, strip], axis=0)
    _write_atomic(path, Image.fromarray(blend), "JPEG", quality=90)


def safe_output_path(out_dir: Path, relative: Path | str, suffix: str) -> Path:
    """``out_dir / relative`` with ``suffix`` appended to the whole file name (``a.jpg`` ->
    ``a.jpg.png``), so two distinct inputs never share an output; refuses any result that would
    land outside ``out_dir`` (``freecp.files.contained``: absolute paths, ``..`` parts, symlinks)."""
    rel = PurePath(relative)
    if rel.name in ("", ".", ".."):
        raise ValueError(f"output name {str(relative)!r} has no file name")
    return contained(out_dir, rel.with_name(rel.name + suffix))


def _open(path: Path) -> Image.Image:
    """Open lazily (header only), turning every way a file can fail to be an image into a reason."""
    try:
        empty = os.path.getsize(path) == 0
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    if empty:
        raise ImageReadError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"too large to decode safely ({err})") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image (format not recognised)") from None
    except IsADirectoryError:
        raise ImageReadError("is a directory, not a file") from None
    except _DECODE_ERRORS as err:
        raise ImageReadError(f"cannot open ({err})") from None


def _decode(im: Image.Image) -> None:
    """Decode all pixel data now, so truncation is an error here and never a grey half image."""
    try:
        im.load()
    except _DECODE_ERRORS as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason:
            raise ImageReadError("truncated file") from None
        raise ImageReadError(f"corrupt image data ({reason})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any decoded Pillow mode -> HxWx3 uint8 RGB (see ``read_image`` for the rules)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ImageReadError("floating-point images are not supported")
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        premultiplied = (rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255
        return premultiplied.astype(np.uint8)
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except _DECODE_ERRORS:
            raise ImageReadError(f"unsupported colour mode {im.mode}") from None
    return np.array(im, dtype=np.uint8)


def _checked_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    if labels.ndim != 2:
        raise ValueError(f"labels must be HxW, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    return labels


def _write_atomic(path: Path, image: Image.Image, fmt: str, **options: object) -> None:
    """Encode in memory, then write the file atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    atomic_write(path, buffer.getvalue())
