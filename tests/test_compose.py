"""Window composition: the separable matrix form equals the step-by-step reference procedure."""

import torch
import torch.nn.functional as F

from freecp.compose import canvas
from freecp.windows import Windows, starts


def step_by_step(maps, windows: Windows, size):
    """ALGORITHM.md s.6 literally: upsample each window, paste, divide by the count, resize."""
    height, width = windows.size
    wh, ww = windows.pixels.shape[-2:]
    up = F.interpolate(maps, size=(wh, ww), mode="bilinear", align_corners=False)
    canvas = torch.zeros(maps.shape[1], height, width)
    count = torch.zeros(height, width)
    for b, (y, x) in enumerate(windows.origins):
        canvas[:, y:y + wh, x:x + ww] += up[b]
        count[y:y + wh, x:x + ww] += 1
    canvas /= count
    return F.interpolate(canvas[None], size=size, mode="bilinear", align_corners=False)[0]


def test_matrix_composition_matches_the_reference_procedure():
    torch.manual_seed(0)
    for (height, width), window, stride, original in [((448, 663), 384, 112, (338, 500)),
                                                      ((448, 448), 384, 112, (448, 448)),
                                                      ((448, 300), 384, 112, (640, 429))]:
        wh, ww = min(window, height), min(window, width)
        rows, cols = starts(height, wh, stride), starts(width, ww, stride)
        windows = Windows(torch.zeros(3, height, width), torch.zeros(len(rows) * len(cols), 3, wh, ww), rows, cols,
                           (height, width))
        maps = torch.rand(len(rows) * len(cols), 5, wh // 16, ww // 16)
        fast = canvas(maps, windows, original)
        assert fast.shape == (5, *original)
        assert torch.allclose(fast, step_by_step(maps, windows, original), atol=1e-5)


def test_window_starts_cover_the_image_and_end_at_the_border():
    assert starts(448, 384, 112) == [0, 64]
    assert starts(663, 384, 112) == [0, 112, 224, 279]
    assert starts(300, 300, 112) == [0]
