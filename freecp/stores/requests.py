"""The store's ``requests/`` folder: which model key a weights request was built as.

``freecp encode`` on a fully encoded vocabulary must answer without building the model, so the
store remembers, per weights request (``freecp.clip.keys.weights_request``: model name, tag or
checkpoint digest, activation), the model key the first build produced. One small JSON file per
request, named by the request's hash; this module is the one place that knows the name and the
format, for the store that writes them and for ``freecp store check`` that verifies them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath

REQUESTS_DIR = "requests"


def request_path(request: str) -> str:
    """The file that records ``request``, relative to the store root."""
    return posixpath.join(REQUESTS_DIR, hashlib.sha256(request.encode("utf-8")).hexdigest()[:16] + ".json")


def encode_request(request: str, model_key: str) -> bytes:
    return json.dumps({"request": request, "model_key": model_key}).encode()


def decode_request(data: bytes) -> tuple[str, str]:
    """``(request, model_key)`` from a record's bytes; ValueError when it is not one."""
    record = json.loads(data)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    request, model_key = record.get("request"), record.get("model_key")
    if not isinstance(request, str) or not isinstance(model_key, str) or not model_key:
        raise ValueError("a JSON object without the string fields 'request' and 'model_key'")
    return request, model_key
