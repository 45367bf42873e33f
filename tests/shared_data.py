"""Where the shared test data lives: ``../shared`` beside the checkout (as on CI)."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
VOC_MINI = SHARED / "data" / "voc-mini"
PARITY = SHARED / "parity"
