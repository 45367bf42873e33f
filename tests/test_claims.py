"""Runs sharing one output folder across processes, pid namespaces (containers) and restarts
(issue 19, case 2; issue 15, item 6): no image is segmented twice, none is left out.

Real processes (``tests.segment_worker`` and the ``freecp`` CLI); containers are real pid
namespaces made with ``unshare --pid --fork --mount-proc``, where every run is pid 1 on the same
host name. The tiny random-weight model and a three-class vocabulary keep them quick.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from freecp import claims
from freecp.claims import claim

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = ["--model", "freecp-tiny", "--pretrained", "none"]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _can_unshare(), reason="unshare --pid needs root or CAP_SYS_ADMIN")
IN_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _folder(tmp_path: Path, count: int, size: int) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\ndog\nsky\n")
    return images, vocab


def _foreign_claim(path: Path, age: float) -> None:
    """A claim as a run in another pid namespace of this host writes it: pid 1, same host name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = claims.owner()
    path.write_text(json.dumps({**mine, "token": "other", "pid": 1, "pidns": "pid:[1]", "start": "5"}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_a_live_claim_from_another_namespace_is_respected_and_a_silent_one_taken_over(tmp_path):
    target = tmp_path / "a.png.claim"
    _foreign_claim(target, age=1)
    with claim(target) as mine:
        assert not mine  # its heartbeat is fresh: another container is working on it
    _foreign_claim(target, age=claims.STALE_SECONDS + 5)
    with claim(target) as mine:
        assert mine and json.loads(target.read_text())["token"] == claims.owner()["token"]
    assert not target.exists()


def test_a_claim_of_a_dead_process_in_this_namespace_is_taken_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "a.png.claim"
    target.write_text(json.dumps({**claims.owner(), "token": "gone", "pid": dead.pid, "start": "1"}))
    with claim(target) as mine:
        assert mine


def test_a_held_claim_is_kept_alive_by_its_heartbeat(tmp_path):
    target = tmp_path / "a.png.claim"
    with claim(target) as mine:
        assert mine
        old = time.time() - 1000
        os.utime(target, (old, old))
        deadline = time.monotonic() + claims.HEARTBEAT_SECONDS + 5
        while target.stat().st_mtime < old + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert target.stat().st_mtime > time.time() - claims.HEARTBEAT_SECONDS - 5


def test_releasing_leaves_a_claim_another_run_took_over(tmp_path):
    target = tmp_path / "a.png.claim"
    with claim(target) as mine:
        assert mine
        target.write_text(json.dumps({"token": "the-run-that-took-it"}))
    assert json.loads(target.read_text())["token"] == "the-run-that-took-it"


def _start_worker(images: Path, out: Path, vocab: Path, sync: Path, tag: str, namespace: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.segment_worker", str(images), str(out), str(vocab), str(sync), tag]
    return subprocess.Popen((IN_NAMESPACE if namespace else []) + command, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)


@pytest.mark.parametrize("namespaces", [False, pytest.param(True, marks=needs_namespaces)],
                         ids=["processes", "pid-namespaces"])
def test_two_runs_share_one_folder_none_twice_none_lost(tmp_path, namespaces):
    """Two processes (in their own pid namespaces: both pid 1 on one host name) start one folder
    together; every image is done by exactly one of them and all are recorded."""
    images, vocab = _folder(tmp_path, 16, 64)
    out, sync = tmp_path / "out", tmp_path / "sync"
    sync.mkdir()
    workers = [_start_worker(images, out, vocab, sync, tag, namespaces) for tag in "ab"]
    deadline = time.monotonic() + 300
    while len(list(sync.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
        time.sleep(0.1)
    (sync / "go").touch()
    statuses = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
        statuses.append(json.loads(stdout.strip().splitlines()[-1]))
    done = [path for run in statuses for path, status in run.items() if status == "done"]
    assert sorted(done) == [f"{i:02d}.png" for i in range(16)]  # each exactly once
    assert all(status in ("done", "skipped") for run in statuses for status in run.values())
    index = pd.read_parquet(out / "records.parquet")
    assert len(index) == 16 and set(index["status"]) == {"done"}
    assert not list((out / ".claims").rglob("*.claim"))


@needs_namespaces
def test_a_run_killed_in_a_container_is_finished_by_the_next_container(tmp_path):
    """kill -9 of a run that is pid 1 in its namespace leaves its claims; the next run, again pid 1
    on the same host name, takes them over once their heartbeat is older than the limit (the
    test ages them rather than wait the minute) and records every image, exit 0."""
    images, vocab = _folder(tmp_path, 16, 128)
    out, store = tmp_path / "out", tmp_path / "store"
    command = [sys.executable, "-m", "freecp", "segment", str(images), "--vocab", str(vocab), "--out", str(out),
               "--store", str(store), *TINY]
    first = subprocess.Popen(IN_NAMESPACE + command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((out / ".records").glob("*.json")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    left = list((out / ".claims").rglob("*.claim"))
    assert left, "the run ended before it could be killed holding claims"
    aged = time.time() - claims.STALE_SECONDS - 5
    for path in left:
        os.utime(path, (aged, aged))
    second = subprocess.run(IN_NAMESPACE + command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert second.returncode == 0, second.stderr
    index = pd.read_parquet(out / "records.parquet")
    assert sorted(index["path"]) == [f"{i:02d}.png" for i in range(16)] and set(index["status"]) == {"done"}
    assert all((out / mask).is_file() for mask in index["mask"])
    assert not list((out / ".claims").rglob("*.claim"))
