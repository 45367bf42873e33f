"""The segment flow stopped by a full output disk ends readably, with the index of what was done
(issue 15, item 6), as ``freecp segment`` does. Real Prefect server, a real small tmpfs disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from freecp.flows.segment import segment_images
from tests.fixtures_prefect import FLOW_VOCAB as VOCAB
from tests.fixtures_prefect import TINY_CLIP as TINY
from tests.mounts import mount_tmpfs, unmount


def _image(path: Path, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)


def test_a_full_disk_ends_the_flow_disk_full_with_the_index(prefect_api: str, tmp_path: Path) -> None:
    images, store, disk = tmp_path / "images", tmp_path / "store", tmp_path / "disk"
    _image(images / "a_small.png", 40)
    _image(images / "b_big.png", 1200)  # its noise overlay does not fit what is left
    mount_tmpfs(disk, "512k")
    try:
        out = disk / "out"
        state = segment_images(images=str(images), vocab=VOCAB, out=str(out), store=str(store), threads=1,
                               return_state=True, **TINY)
        assert state.is_failed() and state.name == "Disk full", state.message
        assert "disk is full" in state.message and "1 done" in state.message and "index" in state.message
        rows = {r["path"]: r for r in pq.read_table(out / "records.parquet").to_pylist()}
        assert list(rows) == ["a_small.png"] and rows["a_small.png"]["status"] == "done"
        left = [p.name for p in out.rglob("*") if p.is_file() and p.name.startswith(("b_big", ".tmp-"))]
        assert not left, left
    finally:
        unmount(disk)
