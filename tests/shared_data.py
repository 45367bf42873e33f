"""Where the shared test data lives: ``../shared`` beside the checkout (as on CI) or the folder
``FREECP_SHARED`` names (a checkout elsewhere, e.g. a git worktree), and a skip for its absence.

Only tests that need ground truth (VOC label maps) read it; tests that only need photos use the
shipped samples (``freecp.resources.sample_images()``), so a fresh clone passes without it.
"""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("FREECP_SHARED") or Path(__file__).resolve().parents[2] / "shared")
VOC_MINI = SHARED / "data" / "voc-mini"
PARITY = SHARED / "parity"

needs_voc_mini = pytest.mark.skipif(
    not VOC_MINI.is_dir(),
    reason=f"needs the VOC ground truth of the shared test data at {VOC_MINI}, which is absent "
           "(CI has it as ../shared beside the checkout)",
)
