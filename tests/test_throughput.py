"""Throughput machinery changes speed only: batching, read-ahead and write-behind give the same
outputs as one image at a time; the thread policy, device choice and precision option behave.

The model is the tiny real architecture with random weights (``tests.fixtures_clip``).
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freecp.build import build_segmenter
from freecp.flows.segmenters import device_for_worker
from freecp.jobs import ClipModel, SegmentJob
from freecp.pipeline import segment_folder
from freecp.prefetch import WriteBehind, WriteStopped, read_ahead
from freecp.segmenter import Segmenter
from freecp.settings import settings_for
from freecp.threads import apply_thread_policy, plan_threads
from freecp.vocab import load_vocabulary
from tests.run_outputs import run_outputs

VOC21 = load_vocabulary("voc21")
# Small windows, and a window batch that makes windows of different images share calls.
FAST = dict(short_side=224, window=224, stride=112, window_batch=4, rp_threshold=0.02, ap_threshold=0.3)
SHAPES = [(333, 517), (60, 1000), (200, 300), (224, 224)]  # (60, 1000) gives 128 x 224 windows

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class CountingBackbone:
    """Delegates to a real backbone and counts its dense and crop calls."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.dense_calls: list[int] = []
        self.crop_calls: list[int] = []

    def dense_forward(self, windows: torch.Tensor):
        self.dense_calls.append(len(windows))
        return self._inner.dense_forward(windows)

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        self.crop_calls.append(len(crops))
        return self._inner.encode_crops(crops)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[: height // 2, : width // 3] = (30, 200, 60)  # structure for the attention to follow
    return image


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [_image(h, w, seed) for seed, (h, w) in enumerate(SHAPES)]


@pytest.mark.parametrize("scope", ["window", "image"])
def test_segment_batch_equals_one_image_at_a_time(tiny_backbone, tiny_voc21_embeddings, images, scope):
    settings = settings_for("voc21", scope=scope, **FAST)
    alone = [Segmenter(tiny_backbone, VOC21, tiny_voc21_embeddings, settings).segment(im) for im in images]
    counting = CountingBackbone(tiny_backbone)
    together = Segmenter(counting, VOC21, tiny_voc21_embeddings, settings).segment_batch(images)

    assert any(r.report.groups for r in alone), "no ambiguity group: AP batching untested"
    for one, batched in zip(alone, together, strict=True):
        assert np.array_equal(one.labels, batched.labels)
        assert np.array_equal(one.class_scores, batched.class_scores)
        assert one.report == batched.report
    assert len(counting.crop_calls) == 1  # the crops of all four images in one call
    assert max(counting.dense_calls) == FAST["window_batch"]
    shapes = {r.labels.shape for r in together}
    assert shapes == set(SHAPES)


def _write_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for seed, (h, w) in enumerate(SHAPES):
        target = root / ("sub" if seed % 2 else "") / f"image{seed}.{'png' if seed % 2 else 'jpg'}"
        Image.fromarray(_image(h, w, seed)).save(target)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_read_ahead_and_batching_write_the_same_files(tmp_path):
    """Each mode's segmenter comes from the builder, which splits torch's threads between its
    ``workers`` (the run summary reports the split)."""
    folder = tmp_path / "images"
    _write_folder(folder)
    runs, before = {}, torch.get_num_threads()
    modes = [("in turn", 0, 1, 1), ("read ahead", 2, 1, 1), ("batched", 2, 3, 1), ("two workers", 1, 1, 2),
             ("batched workers", 0, 2, 3)]
    job = SegmentJob(ClipModel("freecp-tiny", pretrained="none"), store=None)
    try:
        for name, prefetch, batch, workers in modes:
            settings = settings_for("voc21", prefetch=prefetch, batch_images=batch, workers=workers, **FAST)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # random weights, as asked
                segmenter = build_segmenter(VOC21, job, settings)
            summary = segment_folder(segmenter, folder, tmp_path / name)
            assert [r.status for r in summary.records] == ["failed", "done", "done", "done", "done"]
            assert summary.threads.segmenters == workers
            runs[name] = run_outputs(tmp_path / name)
    finally:
        torch.set_num_threads(before)
    # masks and overlays of 4 images, 5 records, the layout marker
    assert len(runs["in turn"]) == 2 * 4 + 5 + 1
    for name, *_ in modes[1:]:
        assert runs[name] == runs["in turn"], name


def test_read_ahead_keeps_order_is_bounded_and_passes_errors_on():
    loaded: list[int] = []

    def load(item: int) -> int:
        loaded.append(item)
        if item == 7:
            raise ValueError("seven")
        return item * 10

    stream = read_ahead(range(10), load, depth=2)
    assert [next(stream) for _ in range(3)] == [0, 10, 20]
    time.sleep(0.2)
    assert len(loaded) <= 3 + 2 + 1  # consumed, waiting, and at most one being loaded
    assert [next(stream) for _ in range(4)] == [30, 40, 50, 60]
    with pytest.raises(ValueError, match="seven"):
        next(stream)
    assert list(read_ahead(range(3), load, depth=0)) == [0, 10, 20]


def test_read_ahead_in_several_threads_runs_them_side_by_side_and_keeps_order():
    both_running = threading.Barrier(2, timeout=10)  # passes only when two loads run at once

    def load(item: int) -> int:
        if item < 2:
            both_running.wait()
        time.sleep(0.01 * (5 - item % 5))  # later items finish first
        return item

    assert list(read_ahead(range(10), load, depth=3, threads=2)) == list(range(10))


def test_write_behind_runs_jobs_in_order_and_blocks_when_full():
    gate, done = threading.Event(), []

    def job(n: int) -> int:
        gate.wait()
        done.append(n)
        return n

    with WriteBehind(depth=2) as writer:
        futures = [writer.submit(job, 0), writer.submit(job, 1)]
        blocked = threading.Thread(target=lambda: futures.append(writer.submit(job, 2)))
        blocked.start()
        blocked.join(timeout=0.2)
        assert blocked.is_alive()  # a third job waits for a free slot
        gate.set()
        blocked.join()
    assert done == [0, 1, 2] and [f.result() for f in futures] == [0, 1, 2]


def test_write_behind_runs_nothing_after_a_failed_job():
    done = []

    def job(n: int) -> int:
        if n == 1:
            raise OSError("disk full")
        done.append(n)
        return n

    with WriteBehind(depth=4) as writer:
        futures = [writer.submit(job, n) for n in range(3)]
    assert done == [0] and futures[0].result() == 0
    with pytest.raises(OSError, match="disk full"):
        futures[1].result()
    with pytest.raises(WriteStopped):
        futures[2].result()


def test_thread_policy_never_oversubscribes_and_is_applied(monkeypatch):
    assert plan_threads(1, cores=2).torch_threads == 2
    assert plan_threads(2, cores=2).torch_threads == 1
    assert plan_threads(3, cores=2).torch_threads == 1  # never zero
    assert plan_threads(2, cores=16).torch_threads == 8
    before = torch.get_num_threads()
    try:
        policy = apply_thread_policy(segmenters=2, cores=4)
        assert torch.get_num_threads() == 2
        assert policy.line() == "2 torch threads for 2 concurrent segmenters on 4 cores"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("device, worker, gpus, expected", [
    ("cuda", "3", 4, "cuda:3"),
    ("cuda", "5", 4, "cuda:1"),
    ("cuda", "tcp://127.0.0.1:4000-2", 4, "cuda:2"),   # dask worker --nworkers
    ("cuda", "0", 1, "cuda"),                          # one visible GPU (dask-cuda): keep it
    ("cuda", None, 4, "cuda"),                         # not in a Dask worker
    ("cuda:1", "3", 4, "cuda:1"),                      # an explicit device is kept
    ("cpu", "3", 4, "cpu"),
])
def test_each_dask_worker_gets_its_own_gpu(device, worker, gpus, expected):
    assert device_for_worker(device, worker, gpus) == expected


def test_workers_named_alike_spread_over_the_gpus():
    devices = {device_for_worker("cuda", f"gpu-worker-{i}", 4) for i in range(4)}
    assert devices == {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}
    assert device_for_worker("cuda", "alpha", 4) == device_for_worker("cuda", "alpha", 4)


def test_bf16_autocast_runs_on_the_cpu_and_fp32_stays_the_default(tiny_backbone, tiny_voc21_embeddings, images):
    assert settings_for("voc21").precision == "fp32"
    half = settings_for("voc21", precision="bf16", **FAST)
    assert half.content_hash != settings_for("voc21", **FAST).content_hash  # other outputs, other key
    result = Segmenter(tiny_backbone, VOC21, tiny_voc21_embeddings, half).segment(images[0])
    assert result.labels.shape == SHAPES[0]
    assert 0 <= result.labels.min() and result.labels.max() < len(VOC21)
    with pytest.raises(ValueError, match="unknown precision"):
        settings_for("voc21", precision="fp64")


def test_run_only_settings_leave_the_settings_hash_alone():
    plain = settings_for("voc21")
    assert plain.replace(batch_images=8, prefetch=0, window_batch=2, workers=3).content_hash == plain.content_hash
    with pytest.raises(ValueError, match="workers"):
        settings_for("voc21", workers=0)
    with pytest.raises(ValueError, match="batch-images"):
        settings_for("voc21", batch_images=0)
    with pytest.raises(ValueError, match="prefetch"):
        settings_for("voc21", prefetch=-1)


def test_the_cli_takes_the_throughput_options_and_reports_its_threads(tmp_path):
    from typer.testing import CliRunner

    from freecp.cli import app

    folder, vocab = tmp_path / "images", tmp_path / "pets.txt"
    folder.mkdir()
    for seed, (h, w) in enumerate(SHAPES[:3]):
        Image.fromarray(_image(h, w, seed)).save(folder / f"image{seed}.png")
    vocab.write_text("background: sky\ncat\ndog\n", encoding="utf-8")
    common = ["segment", folder, "--vocab", vocab, "--store", tmp_path / "store", "--model", "freecp-tiny",
              "--pretrained", "none", "--short-side", "224", "--window", "224", "--stride", "112"]
    before = torch.get_num_threads()
    try:
        refused = CliRunner().invoke(app, [str(a) for a in [*common, "--out", tmp_path / "x", "--precision", "fp64"]])
        assert refused.exit_code == 2 and "'fp64' is not one" in refused.output  # Typer: a Literal
        done = CliRunner().invoke(app, [str(a) for a in [*common, "--out", tmp_path / "out",
                                                          "--batch-images", "2", "--prefetch", "1",
                                                          "--workers", "2"]])
    finally:
        torch.set_num_threads(before)
    assert done.exit_code == 0, done.output
    assert "threads: " in done.output and "for 2 concurrent segmenters on" in done.output
    assert len(list((tmp_path / "out" / "masks").iterdir())) == 3
