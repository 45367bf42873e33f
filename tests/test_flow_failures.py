"""The segment flow stopped by a full output disk (issue 15, item 6) or by SIGTERM (issue 19) ends
with the index of what was done, as ``freecp segment`` does. Real Prefect server, a real small
tmpfs disk, a real process and signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from freecp.flows.segment import segment_images
from tests.fixtures_prefect import FLOW_VOCAB as VOCAB
from tests.fixtures_prefect import TINY_CLIP as TINY
from tests.mounts import tmpfs

ROOT = Path(__file__).resolve().parent.parent


def _image(path: Path, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)


def test_a_full_disk_ends_the_flow_disk_full_with_the_index(prefect_api: str, tmp_path: Path) -> None:
    images, store, disk = tmp_path / "images", tmp_path / "store", tmp_path / "disk"
    _image(images / "a_small.png", 40)
    _image(images / "b_big.png", 1200)  # its noise overlay does not fit what is left
    with tmpfs(disk, "512k"):
        out = disk / "out"
        state = segment_images(images=str(images), vocab=VOCAB, out=str(out), store=str(store), threads=1,
                               return_state=True, **TINY)
        assert state.is_failed() and state.name == "Disk full", state.message
        assert "disk is full" in state.message and "1 done" in state.message and "index" in state.message
        rows = {r["path"]: r for r in pq.read_table(out / "records.parquet").to_pylist()}
        assert list(rows) == ["a_small.png"] and rows["a_small.png"]["status"] == "done"
        left = [p.name for p in out.rglob("*") if p.is_file() and p.name.startswith(("b_big", ".tmp-"))]
        assert not left, left


def test_sigterm_to_the_flow_process_writes_the_index_first(prefect_env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM (a cancellation, a worker shut down) to the process running the flow: Prefect turns
    it into its termination exception, and the flow writes the index of what was done before the
    process ends."""
    images, out, store = tmp_path / "images", tmp_path / "out", tmp_path / "store"
    for side in range(200, 230):
        _image(images / f"{side}.png", side)
    script = ("import sys\n"
              "from freecp.flows.segment import segment_images\n"
              "segment_images(images=sys.argv[1], vocab=['cat', 'dog'], out=sys.argv[2], store=sys.argv[3],\n"
              "               threads=1, model='freecp-tiny', pretrained='none')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(images), str(out), str(store)],
                            env={**prefect_env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / ".records").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, stderr
    done = sorted(p.name.removesuffix(".json") for p in (out / ".records").glob("*.json"))
    rows = pq.read_table(out / "records.parquet").to_pylist()
    indexed = sorted(r["path"] for r in rows)
    # the one task under way may still write its record while the index is written
    assert 1 <= len(indexed) < 30 and set(indexed) <= set(done) and len(done) - len(indexed) <= 1, (indexed, done)
    assert {r["status"] for r in rows} == {"done"}
