"""A real Prefect server for the flow tests: ``prefect server start`` on 127.0.0.1, one per session.

The server keeps its SQLite database in a temporary ``PREFECT_HOME``, so tests never touch a
user's profile or database. Child processes (``prefect deploy``, the worker, the flow runs it
starts) get ``prefect_env``; in-process flow calls use the ``prefect_api`` fixture, which points
this process's Prefect settings at the same server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from freecp.describe.serve import free_port
from freecp.resources import sample_images
from tests.processes import stop_process

SERVER_START_TIMEOUT = 180  # seconds; the first start runs the database migrations


def _quiet_prefect_env(home: Path) -> dict[str, str]:
    """Settings shared by the server and every Prefect client process the tests start."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "DO_NOT_TRACK": "1",
    }


def _wait_healthy(api_url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"prefect server did not become healthy; its log:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``prefect server start`` with a temporary PREFECT_HOME; yield its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    log = home / "server.log"
    env = {**os.environ, **_quiet_prefect_env(home), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)  # the server itself must not act as a client of another one
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    _wait_healthy(api_url, proc, log)
    yield api_url
    stop_process(proc)


@pytest.fixture(scope="session")
def prefect_env(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for child processes that act as clients of the test server."""
    home = tmp_path_factory.mktemp("prefect-client-home")
    return {**os.environ, **_quiet_prefect_env(home), "PREFECT_API_URL": prefect_server}


@pytest.fixture
def prefect_api(prefect_server: str, tmp_path: Path) -> Iterator[str]:
    """Point this process's Prefect settings at the test server for one test (flows called in-process)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server, PREFECT_HOME: tmp_path / "prefect"}):
        yield prefect_server
        # Send the test's logs and events now: once the session server is gone, the exit-time
        # flush would retry against a closed port for a minute.
        APILogWorker.drain_all(timeout=30, at_exit=False)
        EventsWorker.drain_all(timeout=30, at_exit=False)


@pytest.fixture(scope="session")
def deployed(prefect_env: dict[str, str]) -> str:
    """The ``freecp`` process work pool and every deployment of the project's ``prefect.yaml``,
    made with the real CLI from the project root; returns the pool's name."""
    created = prefect_cli(["work-pool", "create", POOL, "--type", "process"], prefect_env)
    assert created.returncode == 0, created.stdout + created.stderr
    done = prefect_cli(["--no-prompt", "deploy", "--all"], prefect_env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return POOL


def prefect_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``prefect`` command, run from the project root (where ``prefect.yaml`` is)."""
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=PROJECT,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- shared by the flow tests
PROJECT = Path(__file__).resolve().parents[1]
POOL = "freecp"
SAMPLES = sample_images()  # three shipped photos: the flow tests need no ../shared


def copy_samples(folder: Path) -> list[str]:
    """Copy the shipped sample photos (not their README) into a new ``folder``; their stems, sorted."""
    folder.mkdir(parents=True)
    for photo in SAMPLES.glob("*.jpg"):
        shutil.copy(photo, folder / photo.name)
    return sorted(p.stem for p in folder.iterdir())
FLOW_VOCAB = ["background: sky, wall", "cat, kitten", "person"]  # small: few texts to encode and describe
TINY_CLIP = {"model": "freecp-tiny", "pretrained": "none"}  # random weights: outputs are plumbing, not meaning


def flow_run_artifacts(flow_run_id) -> dict:
    """A flow run's artifacts by key, read back through the Prefect API (needs ``prefect_api``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found}
