"""A real S3-compatible server for the tests: moto in server mode, on 127.0.0.1, one per session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from freecp.describe.serve import free_port
from tests.processes import stop_process


@contextmanager
def _moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``moto_server`` as a separate process, wait until it answers, stop it after."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The session's S3 server (any credentials accepted)."""
    with _moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint_checking_credentials() -> Iterator[str]:
    """An S3 server that checks credentials from the first request (moto's IAM mode), so wrong
    keys are refused as a real S3 refuses them."""
    with _moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        yield url


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket; the standard AWS variables point every client at the moto server.

    Returns the bucket's ``s3://`` URL. The credentials are moto's dummies, not secrets.
    """
    import boto3

    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = f"freecp-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


def aws_env(s3_endpoint: str) -> dict[str, str]:
    """The environment a child process needs to reach the moto server."""
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
