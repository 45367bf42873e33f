"""WHEEL SMOKE TEST: the built wheel, installed in a new venv, works from a folder outside the checkout.

What runs: ``pip wheel`` builds the wheel from this checkout; a new venv gets it with
``pip install --no-deps``; then, with the checkout off ``sys.path`` (no PYTHONPATH, the current
directory a temporary folder), the venv's Python loads a shipped vocabulary, renders a shipped
prompt and finds the shipped ``freecp-tiny`` model config, the venv's ``freecp`` segments one
shipped sample photo with ``--pretrained none`` and the sample vocabulary (AP on the descriptions
shipped for it), and one ``segment-images`` flow run goes
through the session's real Prefect server.

The venv is made with ``--system-site-packages`` (and no pip of its own) so that it reuses this
machine's torch, open_clip, prefect, ... (copying a CUDA torch into a venv costs minutes and
gigabytes); the wheel's own requirements are checked against them with ``pip install --dry-run
--no-index``,
and the test asserts that ``freecp`` itself is imported from the venv, never from the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.fixtures_prefect import FLOW_VOCAB, TINY_CLIP

pytestmark = pytest.mark.wheel

PROJECT = Path(__file__).resolve().parents[1]
SMALL = ["--short-side", "224", "--window", "224", "--stride", "112"]

PROBE = """
import json, open_clip
import freecp, freecp.clip, freecp.flows.segment
from freecp.describe.prompts import render_prompts
from freecp.resources import sample_images
from freecp.vocab import load_vocabulary
vocab = load_vocabulary("voc21")
prompts = render_prompts(vocab.classes[8])
print(json.dumps({"freecp": freecp.__file__, "flows": freecp.flows.segment.__file__, "classes": len(vocab),
                  "prompt": prompts[0].user, "tiny": "freecp-tiny" in open_clip.list_models(),
                  "samples": sorted(p.name for p in sample_images().glob("*.jpg"))}))
"""

FLOW = """
import json, sys
from freecp.flows.segment import segment_images
state = segment_images(**json.loads(sys.argv[1]), return_state=True)
print("STATE", state.type.value, state.message)
"""


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A new venv holding the freshly built wheel, and an environment that keeps the checkout out."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(root / "dist"), str(PROJECT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("freecp-*.whl")
    venv = root / "venv"
    # Without a pip of its own: the venv's bundled setuptools would hide the machine's newer one.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    checked = subprocess.run([*pip, "--dry-run", "--no-index", str(wheel)],
                             capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # every core requirement is satisfied
    installed = subprocess.run([*pip, "--no-deps", "-q", str(wheel)],
                               capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    work = root / "elsewhere"
    work.mkdir()
    return venv, {**env, "FREECP_STORE": str(work / "store")}


def _run(venv: Path, args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    cwd = Path(env["FREECP_STORE"]).parent
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def test_installed_wheel_ships_vocabularies_prompts_configs_samples_and_flows(wheel_venv):
    venv, env = wheel_venv
    done = _run(venv, [str(venv / "bin" / "python"), "-c", PROBE], env)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["freecp"].startswith(str(venv)) and found["flows"].startswith(str(venv))
    assert found["classes"] == 21 and found["tiny"]
    assert '"cat"' in found["prompt"]
    assert found["samples"] == ["astronaut.jpg", "cat.jpg", "coffee.jpg"]


def test_installed_freecp_segments_a_shipped_sample(wheel_venv):
    venv, env = wheel_venv
    freecp = str(venv / "bin" / "freecp")
    samples = Path(_run(venv, [freecp, "samples"], env).stdout.strip())
    assert samples.is_relative_to(venv)
    out = Path(env["FREECP_STORE"]).parent / "out"
    done = _run(venv, [freecp, "segment", str(samples / "cat.jpg"), "--vocab", "samples", "--out", str(out),
                       "--model", "freecp-tiny", "--pretrained", "none", *SMALL], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "masks" / "cat.jpg.png").is_file() and (out / "records.parquet").is_file()
    # AP scores crops against the descriptions shipped for the sample vocabulary, read from the wheel.
    (record,) = pq.read_table(out / "records.parquet").to_pylist()
    assert record["ap_targets"] == "descriptions"


def test_installed_flow_runs_against_a_real_prefect_server(wheel_venv, prefect_env: dict[str, str]):
    venv, env = wheel_venv
    images = Path(env["FREECP_STORE"]).parent / "flow-images"
    images.mkdir()
    (images / "cat.jpg").write_bytes((PROJECT / "samples" / "cat.jpg").read_bytes())
    params = {"images": str(images), "vocab": FLOW_VOCAB, "out": str(images.parent / "flow-out"),
              "short_side": 224, "window": 224, "stride": 112, **TINY_CLIP}
    flow_env = {**env, **{k: v for k, v in prefect_env.items() if k.startswith("PREFECT_")}}
    done = _run(venv, [str(venv / "bin" / "python"), "-c", FLOW, json.dumps(params)], flow_env, timeout=400)
    assert "STATE COMPLETED" in done.stdout, done.stdout + done.stderr
    assert (images.parent / "flow-out" / "masks" / "cat.jpg.png").is_file()
