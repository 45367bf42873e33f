"""The whole deployment cycle against real components, as a user runs it.

A real ``prefect server start`` (session fixture), ``prefect deploy --all`` from the project's
``prefect.yaml``, a process work pool and ``prefect worker start``, then ``prefect deployment run
--watch`` for a new vocabulary (the flow starts its own real vLLM, from the environment
``scripts/install-vllm.sh`` made, on the bundled SmolLM2; CLIP with random weights) and for a
folder of images (the shipped sample photos), through the checkout's ``nightly`` deployment and
the ``nightly-installed`` one that has no pull step (the worker runs outside the checkout). The
model has random weights: the test checks that every output exists and is consistent, never
what the masks show.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from datetime import timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.processes import stop_process
from tests.fixtures_prefect import FLOW_VOCAB as VOCAB
from tests.fixtures_prefect import TINY_CLIP as TINY
from tests.fixtures_prefect import copy_samples, flow_run_artifacts, prefect_cli

SMALL_WINDOWS = {"short_side": 224, "window": 224, "stride": 112}  # fewer windows: this test is about plumbing
RUN_TIMEOUT = 420
SCHEDULE_TIMEOUT = 60


@pytest.fixture(scope="module")
def worker(deployed: str, prefect_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """A process worker polling the pool that the project's deployments were deployed to."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**prefect_env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", deployed],
                                env=env, cwd=log.parent, stdout=sink, stderr=subprocess.STDOUT)
    yield log
    stop_process(proc)


def _run_deployment(name: str, params: dict, env: dict[str, str], worker_log: Path) -> tuple[uuid.UUID, int]:
    """``prefect deployment run NAME --params ... --watch``: the flow run's id and the exit code."""
    result = prefect_cli(["deployment", "run", name, "--params", json.dumps(params), "--watch",
                          "--watch-timeout", str(RUN_TIMEOUT)], env, timeout=RUN_TIMEOUT + 60)
    found = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
    assert found, result.stdout + result.stderr
    if result.returncode != 0:
        print(result.stdout, result.stderr, worker_log.read_text()[-6000:], sep="\n")
    return uuid.UUID(found.group(1)), result.returncode


def _child_runs(parent: uuid.UUID) -> dict[str, uuid.UUID]:
    """Subflow runs of a flow run, by flow name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        return {client.read_flow(run.flow_id).name: run.id for run in runs}


def _table(artifact) -> list[dict]:
    return json.loads(artifact.data)


def test_deployments_end_to_end(worker: Path, prefect_env: dict[str, str], prefect_api: str,
                                vllm_install, tmp_path: Path) -> None:
    from freecp.stores.descriptions import DescriptionCache
    from freecp.stores.embeddings import EmbeddingStore
    from freecp.vocab import load_vocabulary

    cache, store, out, images = (tmp_path / n for n in ("cache", "store", "out", "images"))
    names = copy_samples(images)
    vocabulary = load_vocabulary(VOCAB)

    # --- a new vocabulary: described by the vLLM the flow starts itself (no llm_url: the CPU build's
    # default model, the bundled SmolLM2), encoded with CLIP (random weights)
    build_id, code = _run_deployment("build-vocabulary/on-demand", {
        "vocab": VOCAB, "cache": str(cache),
        "store": str(store), "per_class": 1, "max_requests": 1, "max_tokens": 32, "concurrency": 2, **TINY,
    }, prefect_env, worker)
    assert code == 0

    described = DescriptionCache(str(cache)).descriptions_for(vocabulary)
    asked = {entry.class_name for entry in DescriptionCache(str(cache)).entries()}
    assert asked == {c.name for c in vocabulary.classes[1:]}  # every foreground class, not the background
    embeddings = EmbeddingStore(str(store))
    (model,) = embeddings.list_models()
    assert model.model_key.startswith("freecp-tiny/")
    coverage = embeddings.inspect(vocabulary, model.model_key)
    assert coverage.complete
    assert coverage.described == len(described)

    children = _child_runs(build_id)
    assert set(children) == {"describe-vocabulary", "encode-vocabulary"}
    describe_md = flow_run_artifacts(children["describe-vocabulary"])["describe-vocabulary-summary"].data
    encode_md = flow_run_artifacts(children["encode-vocabulary"])["encode-vocabulary-summary"].data
    assert "describe-vocabulary: inline" in describe_md
    assert f"| engine | {vllm_install.label} |" in describe_md  # the report names the server and the model
    assert "| llm model | smollm2-135m-instruct |" in describe_md and "| server | http://127.0.0.1:" in describe_md
    escaped_key = model.model_key.replace("|", r"\|")  # the text key; a markdown cell escapes its pipe
    assert f"| model key | {escaped_key} |" in encode_md
    build_artifacts = flow_run_artifacts(build_id)  # the parent run carries both steps' summaries
    assert build_artifacts["describe-vocabulary-summary"].data == describe_md
    assert build_artifacts["encode-vocabulary-summary"].data == encode_md

    # --- the nightly deployment over a folder of images
    nightly = {"images": str(images), "vocab": VOCAB, "out": str(out), "store": str(store),
               "no_encode": True, **TINY, **SMALL_WINDOWS}
    first_id, code = _run_deployment("segment-images/nightly", nightly, prefect_env, worker)
    assert code == 0
    for name in names:
        mask = np.asarray(Image.open(out / "masks" / f"{name}.jpg.png"))
        assert mask.shape == np.asarray(Image.open(images / f"{name}.jpg")).shape[:2]
        assert mask.max() < len(vocabulary)
    records = pq.read_table(out / "records.parquet").to_pylist()
    assert sorted(Path(r["path"]).stem for r in records) == names
    assert {r["status"] for r in records} == {"done"}
    mask_times = {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}

    artifacts = flow_run_artifacts(first_id)
    summary = artifacts["segment-images-summary"].data
    assert "| 3 | 3 | 0 | 0 |" in summary
    assert "Classes removed by purification most often" in summary
    assert sorted(Path(row["path"]).stem for row in _table(artifacts["segment-images-records"])) == names

    # --- run again: nothing is redone
    second_id, code = _run_deployment("segment-images/nightly", nightly, prefect_env, worker)
    assert code == 0
    artifacts = flow_run_artifacts(second_id)
    assert "| 3 | 0 | 3 | 0 |" in artifacts["segment-images-summary"].data
    assert _table(artifacts["segment-images-records"]) == []
    assert {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == mask_times

    # --- a new image arrives: exactly that one is done, by the deployment that needs no checkout
    Image.open(images / f"{names[0]}.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "new_arrival.jpg")
    third_id, code = _run_deployment("segment-images/nightly-installed", nightly, prefect_env, worker)
    assert code == 0
    artifacts = flow_run_artifacts(third_id)
    assert "| 4 | 1 | 3 | 0 |" in artifacts["segment-images-summary"].data
    assert [Path(row["path"]).name for row in _table(artifacts["segment-images-records"])] == ["new_arrival.jpg"]
    assert (out / "masks" / "new_arrival.jpg.png").is_file()
    assert {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir() if p.name != "new_arrival.jpg.png"} == mask_times
    assert len(pq.read_table(out / "records.parquet")) == 4


def test_the_nightly_cron_schedule_creates_scheduled_runs(deployed: str, prefect_api: str) -> None:
    """The scheduler service of a real server turns the deployed cron into scheduled runs (with
    SQLAlchemy 2.1 Prefect 3.8's scheduler fails every loop and creates none: hence the cap)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("segment-images/nightly")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        deadline = time.monotonic() + SCHEDULE_TIMEOUT
        while True:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])))
            scheduled = [r for r in runs if r.state is not None and r.state.is_scheduled()]
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert scheduled, f"no scheduled runs of segment-images/nightly within {SCHEDULE_TIMEOUT} s"
    times = {r.expected_start_time.astimezone(timezone.utc) for r in scheduled}
    assert all((t.hour, t.minute) == (2, 0) for t in times) and len(times) == len(scheduled)
