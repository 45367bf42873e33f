"""``freecp segment`` over folders nobody watches: nothing lost, nothing crashes (issue 9).

Real files, real processes, the tiny CLIP architecture with random weights (outputs are plumbing,
not meaning). The full disk is a real tmpfs where this machine lets the test mount one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from freecp.cli import app
from freecp.layout import LAYOUT_FILE, prepare_output
from tests.cli_runs import in_one_interpreter
from tests.mounts import tmpfs

TINY = ["--model", "freecp-tiny", "--pretrained", "none"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("store"))


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _index(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in pd.read_parquet(out / "records.parquet").to_dict("records")}


def test_same_stem_extreme_shape_and_a_write_error_each_get_their_own_record(tmp_path, store):
    images, out = tmp_path / "images", tmp_path / "out"
    _image(images / "a.jpg", 40, 60, seed=1)
    _image(images / "a.png", 50, 30, seed=2)
    _image(images / "wide.png", 20, 20000)
    _image(images / "blocked.png", 40, 40)
    (out / "masks" / "blocked.png.png").mkdir(parents=True)  # a folder where its mask must go
    result = run("segment", images, "--vocab", "voc20", "--out", out, "--store", store, *TINY)
    assert result.exit_code == 1, result.output
    rows = _index(out)
    assert set(rows) == {"a.jpg", "a.png", "wide.png", "blocked.png"}
    assert rows["blocked.png"]["status"] == "failed" and "IsADirectoryError" in rows["blocked.png"]["error"]
    assert "blocked.png" in result.output
    for name, size in (("a.jpg", (60, 40)), ("a.png", (30, 50)), ("wide.png", (20000, 20))):
        assert rows[name]["status"] == "done", rows[name]["error"]
        assert Image.open(out / rows[name]["mask"]).size == size
        overlay_width, overlay_height = Image.open(out / rows[name]["overlay"]).size
        assert overlay_width == size[0] and overlay_height >= size[1]  # the colour legend goes under the image
    assert rows["a.jpg"]["mask"] != rows["a.png"]["mask"]
    assert json.loads((out / LAYOUT_FILE).read_text()) == {"naming": 2}
    again = run("segment", images, "--vocab", "voc20", "--out", out, "--store", store, *TINY)
    assert "│ 4      │ 0    │ 3       │ 1" in again.output  # 4 images, 0 done, 3 skipped, 1 failed


def test_outputs_in_the_images_folder_are_never_inputs(tmp_path, store):
    images = tmp_path / "images"
    _image(images / "only.jpg", 40, 40)
    for _ in range(2):
        result = run("segment", images, "--vocab", "voc20", "--out", images, "--store", store, *TINY)
        assert result.exit_code == 0, result.output
    assert list(_index(images)) == ["only.jpg"]
    assert not (images / "masks" / "masks").exists() and not list((images / "masks").glob("*.png.png"))


def test_a_240_byte_file_name_is_written(tmp_path, store):
    name = "n" * 236 + ".png"
    images, out = tmp_path / "images", tmp_path / "out"
    _image(images / name, 30, 30)
    result = run("segment", images, "--vocab", "voc20", "--out", out, "--store", store, *TINY)
    assert result.exit_code == 0, result.output
    assert _index(out)[name]["status"] == "done" and (out / "masks" / f"{name}.png").is_file()


CHECKS = [
    (["--window-batch", "0"], "window-batch must be a whole number of at least 1"),
    (["--short-side", "0"], "short-side must be a whole number of at least 1"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--stride", "999"], "stride must be positive and at most the window size"),
]


def test_bad_options_and_inputs_are_one_line_before_torch_is_imported(tmp_path):
    """Each case runs in a fresh interpreter that reports whether torch got imported."""
    images = tmp_path / "images"
    _image(images / "x.png", 20, 20)
    bad_vocab = tmp_path / "v.txt"
    bad_vocab.write_text("cat\n\ndog\n")
    out = str(tmp_path / "o")
    cases = [(["segment", str(images), "--vocab", "voc20", "--out", out, *extra], expected)
             for extra, expected in CHECKS]
    cases += [(["segment", str(images), "--vocab", str(bad_vocab), "--out", out], "line 2: blank line"),
              (["segment", str(tmp_path / "missing"), "--vocab", "voc20", "--out", out], "does not exist"),
              (["segment", str(images), "--vocab", "voc20", "--out", str(images / "x.png")], "is a file, not a folder")]
    results = in_one_interpreter([args for args, _ in cases], dict(os.environ))
    for (args, expected), (code, output, torch_loaded) in zip(cases, results, strict=True):
        assert code == 2 and expected in output, (args, output)
        assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
        assert not torch_loaded, args


def test_cuda_without_a_gpu_is_one_line(tmp_path, store):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, so --device cuda is valid here")
    _image(tmp_path / "images" / "x.png", 20, 20)
    result = run("segment", tmp_path / "images", "--vocab", "voc20", "--out", tmp_path / "o", "--store", store,
                 *TINY, "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA GPU" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_old_layout_is_migrated_and_collided_outputs_are_redone(tmp_path):
    out = tmp_path / "out"

    def old(path: str, mask: str) -> None:
        record = {"path": path, "status": "done", "mask": mask, "overlay": mask.replace("masks/", "overlays/")
                  .replace(".png", ".jpg")}
        (out / ".records" / f"{path}.json").parent.mkdir(parents=True, exist_ok=True)
        (out / ".records" / f"{path}.json").write_text(json.dumps(record))

    old("a.jpg", "masks/a.png")
    old("a.png", "masks/a.png")  # layout 1 wrote both to one mask
    old("sub/b.jpg", "masks/sub/b.png")
    for name in ("masks/a.png", "overlays/a.jpg", "masks/sub/b.png", "overlays/sub/b.jpg"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(name.encode())
    assert prepare_output(out) == 2
    assert not (out / ".records" / "a.jpg.json").exists() and not (out / ".records" / "a.png.json").exists()
    assert not (out / "masks" / "a.png").exists() and not (out / "overlays" / "a.jpg").exists()
    moved = json.loads((out / ".records" / "sub" / "b.jpg.json").read_text())
    assert moved["mask"] == "masks/sub/b.jpg.png" and moved["overlay"] == "overlays/sub/b.jpg.jpg"
    assert (out / moved["mask"]).read_bytes() == b"masks/sub/b.png"
    assert prepare_output(out) == 0  # the marker says it is current now
    (out / LAYOUT_FILE).write_text(json.dumps({"naming": 99}))
    with pytest.raises(ValueError, match="naming 99"):
        prepare_output(out)


def test_a_full_disk_stops_the_run_with_one_message_and_the_index(tmp_path, store):
    images, disk = tmp_path / "images", tmp_path / "disk"
    _image(images / "a_small.png", 40, 40)
    _image(images / "b_big.png", 1200, 1200)  # its noise overlay does not fit what is left
    _image(images / "c_small.png", 40, 40)
    with tmpfs(disk, "512k"):
        out = disk / "out"
        result = run("segment", images, "--vocab", "voc20", "--out", out, "--store", store, *TINY)
        assert result.exit_code == 3, result.output
        assert "disk is full" in result.output and "Traceback" not in result.output
        rows = _index(out)
        assert list(rows) == ["a_small.png"] and rows["a_small.png"]["status"] == "done"
        written = sorted(p.name for p in out.rglob("*") if p.is_file())
        assert not [n for n in written if n.startswith(("b_big", "c_small", ".tmp-"))], written


@pytest.mark.parametrize(("stop", "code", "said"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_keeps_finished_images_and_writes_the_index(tmp_path, store, stop, code, said):
    """SIGTERM (Kubernetes, systemd, Docker, Prefect cancellation) ends a run as Ctrl-C does."""
    images, out = tmp_path / "images", tmp_path / "out"
    for i in range(40):
        _image(images / f"{i:02d}.png", 300, 300, seed=i)
    proc = subprocess.Popen([sys.executable, "-m", "freecp", "segment", str(images), "--vocab", "voc20",
                             "--out", str(out), "--store", store, *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 240
    while not list((out / ".records").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert said in stderr and "Traceback" not in stderr
    rows = _index(out)
    assert 1 <= len(rows) < 40 and {r["status"] for r in rows.values()} == {"done"}


def test_a_simulated_full_disk_stops_the_run_and_keeps_the_index(tmp_path, monkeypatch, tiny_backbone,
                                                                  tiny_voc21_embeddings):
    """SIMULATED ENOSPC (the overlay writer raises it for the second image), for machines where the
    tmpfs test above cannot mount a real small disk; same expectations."""
    import errno

    from freecp import pipeline
    from freecp.segmenter import Segmenter
    from freecp.settings import SegmentSettings
    from freecp.vocab import load_vocabulary
    from tests.fixtures_clip import one_torch_thread

    images, out = tmp_path / "images", tmp_path / "out"
    for name in ("a.png", "b.png", "c.png"):
        _image(images / name, 40, 40)
    real_write = pipeline.write_overlay

    def full_at_b(path, *args, **kwargs):
        if path.name.startswith("b.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_overlay", full_at_b)
    segmenter = Segmenter(tiny_backbone, load_vocabulary("voc21"), tiny_voc21_embeddings, SegmentSettings())
    with one_torch_thread(), pytest.raises(pipeline.DiskFullError) as stopped:
        pipeline.segment_folder(segmenter, images, out)
    assert [r.path for r in stopped.value.summary.records] == ["a.png"]
    assert list(_index(out)) == ["a.png"]
    assert not (out / "masks" / "b.png.png").exists() and not (out / ".records" / "b.png.json").exists()


def test_claims_hold_their_owner_with_or_without_hard_links(tmp_path, monkeypatch):
    """A claim names its owner from the moment it exists; on a filesystem without hard links (faked
    here by making ``os.link`` refuse, as such a filesystem's ``link()`` does) it is created
    exclusively and then written, and a second claimant still loses."""
    import errno
    import json

    from freecp.claims import claim

    for refuse_links in (False, True):
        if refuse_links:
            def no_links(*_):
                raise OSError(errno.EPERM, "Operation not permitted")
            monkeypatch.setattr("os.link", no_links)
        target = tmp_path / str(refuse_links) / "a.jpg.claim"
        with claim(target) as mine:
            assert mine and json.loads(target.read_text())["pid"] == os.getpid()
            with claim(target) as theirs:
                assert not theirs
            assert not [p for p in target.parent.iterdir() if p != target]  # no temporary file left
        assert not target.exists()
