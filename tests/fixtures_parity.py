"""Session fixture for the parity fixtures' CLIP weights (``../shared/parity``).

``parity_weights`` regenerates the random ViT-B/16 weights the reference's outputs were made
with, once, under ``<repo>/.ci-cache/parity/`` (CI caches that folder), and reuses them while the
digest ``make_weights.py`` printed is recorded beside them. Tests that need them skip with a
message naming the missing path when ``../shared/parity`` is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.shared_data import PARITY

WEIGHTS_DIGEST = "dbbfd9b5336b0806c969bdb8dd3e2b89ad345f4a114e1578471884f3b9ccfabe"
CACHE = Path(__file__).resolve().parents[1] / ".ci-cache" / "parity"
WEIGHTS = CACHE / "rand_b16_seed0.pt"
DIGEST_FILE = WEIGHTS.with_name(WEIGHTS.name + ".digest")


def require_parity() -> Path:
    """The parity folder, or skip the test with a message that names the missing path."""
    if not (PARITY / "fixtures").is_dir():
        pytest.skip(f"parity fixtures not found: {PARITY / 'fixtures'} is missing")
    return PARITY


@pytest.fixture(scope="session")
def parity_weights() -> Path:
    """The parity weights file (open_clip ``ViT-B-16-quickgelu`` state dict), made at most once."""
    return make_parity_weights(require_parity())


def make_parity_weights(parity: Path = PARITY) -> Path:
    """Regenerate the weights with ``parity/make_weights.py`` unless the cache holds them already."""
    if WEIGHTS.is_file() and DIGEST_FILE.is_file() and DIGEST_FILE.read_text().strip() == WEIGHTS_DIGEST:
        return WEIGHTS
    CACHE.mkdir(parents=True, exist_ok=True)
    # Write in a private folder under the file's own name, then rename: other test sessions may
    # share the cache, and the archive inside a torch file is named after the file.
    with tempfile.TemporaryDirectory(dir=CACHE) as private:
        made = Path(private) / WEIGHTS.name
        done = subprocess.run([sys.executable, str(parity / "make_weights.py"), str(made), "--seed", "0"],
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"make_weights.py failed:\n{done.stderr[-2000:]}")
        digest = done.stdout.strip().splitlines()[-1]
        if digest != WEIGHTS_DIGEST:
            raise RuntimeError(
                f"make_weights.py made weights with digest {digest}, not the fixtures' {WEIGHTS_DIGEST}: "
                "its torch / open_clip_torch versions differ from those in ../shared/parity/README.md")
        os.replace(made, WEIGHTS)
        (Path(private) / "digest").write_text(digest + "\n")
        os.replace(Path(private) / "digest", DIGEST_FILE)
    return WEIGHTS
