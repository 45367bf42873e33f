"""A colour legend for overlays: which colour is which class, drawn under the image.

Only the classes present in the label map are listed (a swatch in the class's palette colour,
then its name), left to right, wrapping onto as many rows as the image's width needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROW_HEIGHT = 18
SWATCH = 12
PADDING = 4
GAP = 12  # between one entry's name and the next swatch
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def legend_strip(width: int, names: Sequence[str], colours: np.ndarray) -> np.ndarray:
    """An ``R x width x 3`` uint8 strip listing each ``names[i]`` beside a ``colours[i]`` swatch."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows: list[list[tuple[int, int]]] = [[]]  # per row: (entry index, x of its swatch)
    x = PADDING
    for index, name in enumerate(names):
        needed = SWATCH + PADDING + int(measure.textlength(name, font=font))
        if rows[-1] and x + needed > width - PADDING:
            rows.append([])
            x = PADDING
        rows[-1].append((index, x))
        x += needed + GAP
    strip = Image.new("RGB", (width, ROW_HEIGHT * len(rows) + PADDING), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for row, entries in enumerate(rows):
        top = PADDING + row * ROW_HEIGHT
        for index, left in entries:
            colour = tuple(int(c) for c in colours[index])
            draw.rectangle((left, top, left + SWATCH - 1, top + SWATCH - 1), fill=colour, outline=TEXT)
            draw.text((left + SWATCH + PADDING, top), names[index], fill=TEXT, font=font)
    return np.asarray(strip)
