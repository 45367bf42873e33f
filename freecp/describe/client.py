"""An asynchronous client for any OpenAI-compatible chat-completions server (vLLM or any other).

The HTTP work is the ``openai`` package's ``AsyncOpenAI``: its timeouts, its retries (connection
errors, timeouts, 408/409/429/5xx, with exponential backoff that honours ``Retry-After``) and its
error classes. Each attempt has a deadline for the whole exchange (httpx's timeout bounds
each read only, so a server that drips its answer a byte at a time would otherwise live on).
What stays here is what that client does not know: a bound on requests in flight
(``concurrency``, so that a batching server stays busy without being flooded), a check before the
first request that the server is there and serves the model (and whether it is vLLM), and the
translation into two outcomes. A server that cannot be reached at all, or that does not serve the
requested model, raises ``LLMUnavailableError``: nothing can be done without it. A request that
still fails after its retries raises ``LLMRequestError``, which a run records against its class
and moves on. Answers are read as raw JSON (``answer_from_body``, shared with offline batch
files), so a server that sends HTML or a malformed body is a failed request, not a crash. Against
vLLM the answer is constrained to a JSON list of strings (its JSON-schema ``response_format``);
other servers get free text, which the cleaner parses, and so does a server that rejects
``response_format`` (said once in the log, then free text for the rest of the run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai

API_KEY_ENV = "FREECP_LLM_API_KEY"
DESCRIPTIONS_SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 1}
NO_API_KEY = "none"  # the openai client needs some key; servers started without --api-key ignore it
# A 400 answer whose text names these is a server refusing the JSON-schema request, not the request.
_SCHEMA_REFUSAL = re.compile(r"response_format|json_schema|structured|guided|grammar", re.IGNORECASE)

log = logging.getLogger(__name__)


class LLMError(RuntimeError):
    """Base of the describe step's LLM errors."""


class LLMUnavailableError(LLMError):
    """The server cannot be reached, or it does not serve the requested model."""


class LLMRequestError(LLMError):
    """One request failed for good (after retries); the message says why."""


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]
    temperature: float
    max_tokens: int
    seed: int


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    finish_reason: str


def api_base(url: str) -> str:
    """Normalise a server URL to its OpenAI API base (ending in ``/v1``)."""
    text = url.strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise LLMUnavailableError(f"LLM URL {url!r} must start with http:// or https://")
    return text if text.endswith("/v1") else f"{text}/v1"


def public_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to store and print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def chat_body(model: str, request: ChatRequest, structured: bool) -> dict:
    """The JSON body of one chat-completions request (also used for offline batch files)."""
    body: dict = {
        "model": model,
        "messages": [{"role": role, "content": content} for role, content in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
    }
    if structured:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "descriptions", "schema": DESCRIPTIONS_SCHEMA},
        }
    return body


def answer_from_body(body: object) -> ChatAnswer:
    """Extract the text of a chat-completion response body, or raise ``LLMRequestError``."""
    try:
        choice = body["choices"][0]  # type: ignore[index]
        text = choice["message"]["content"]
        finish = choice.get("finish_reason") or ""
    except (KeyError, IndexError, TypeError):
        raise LLMRequestError(f"malformed answer (no choices[0].message.content): {str(body)[:200]}") from None
    if not isinstance(text, str):
        raise LLMRequestError(f"malformed answer (content is {type(text).__name__}, not text)")
    return ChatAnswer(text=text, finish_reason=str(finish))


class ChatClient:
    """Use as ``async with ChatClient(url, model) as client: await client.complete(request)``."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        concurrency: int = 8,
        timeout: float = 300.0,
        retries: int = 4,
        structured: bool | None = None,
        api_key: str | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base = api_base(url)
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.structured = structured
        self.requests = 0  # requests sent (each counted once, however often it was retried)
        self.engine = "an OpenAI-compatible server"  # "vLLM <version>" once ``check`` saw a vLLM
        self._slots = asyncio.Semaphore(concurrency)
        key = api_key or os.environ.get(API_KEY_ENV) or os.environ.get("OPENAI_API_KEY") or NO_API_KEY
        http = _DeadlineHttpClient(timeout, trust_env=False)  # no proxy variables between us and the server
        self._api = openai.AsyncOpenAI(base_url=self.base, api_key=key, timeout=timeout, max_retries=retries,
                                       http_client=http)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._api.close()

    @property
    def server(self) -> str:
        return public_url(self.base)

    async def check(self) -> None:
        """Fail early and clearly: is the server there, and does it serve ``model``?

        Also decides ``structured`` when it was left to auto-detection (vLLM says it owns its
        models in ``/v1/models``). Asked once, without retries: a server that is not there now
        will not be there in a second either.
        """
        quick = self._api.with_options(max_retries=0, timeout=min(self.timeout, 30.0))
        try:
            raw = await quick.models.with_raw_response.list()
        except openai.NotFoundError:
            return  # a server without a model list; a wrong model name shows on the first request
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise LLMUnavailableError(
                f"the LLM server at {self.server} refused access (HTTP {err.status_code}); "
                f"set {API_KEY_ENV} to its API key"
            ) from None
        except openai.APIConnectionError as err:
            raise LLMUnavailableError(f"cannot reach the LLM server at {self.server}: {_describe(err)}") from None
        except openai.APIStatusError as err:
            raise LLMUnavailableError(f"{self.server}/models answered HTTP {err.status_code}: "
                                      f"{err.response.text[:200]}") from None
        try:
            models = {m["id"]: m for m in json.loads(raw.text)["data"]}
        except (ValueError, KeyError, TypeError):
            raise LLMUnavailableError(
                f"{self.server}/models did not answer like an OpenAI-compatible server "
                f"(HTTP {raw.status_code}): {raw.text[:200]}"
            ) from None
        if self.model not in models:
            raise LLMUnavailableError(
                f"the LLM server at {self.server} does not serve model {self.model!r}; "
                f"it serves: {', '.join(sorted(models)) or 'nothing'}"
            )
        is_vllm = str(models[self.model].get("owned_by", "")).lower() == "vllm"
        if is_vllm:
            self.engine = await self._vllm_version(quick)
        if self.structured is None:
            self.structured = is_vllm

    async def _vllm_version(self, quick: openai.AsyncOpenAI) -> str:
        """vLLM's ``/version`` (next to ``/v1``), for the run summary."""
        root = self.base.removesuffix("/v1")
        try:
            answer = await quick.get(f"{root}/version", cast_to=httpx.Response)
            return f"vLLM {answer.json()['version']}"
        except (openai.APIError, ValueError, KeyError, TypeError):
            return "vLLM"

    async def complete(self, request: ChatRequest) -> ChatAnswer:
        """Send one request (waiting for a free slot); the openai client retries transient failures."""
        async with self._slots:
            self.requests += 1
            raw = await self._send(request)
        try:
            parsed = json.loads(raw.text)
        except ValueError:
            raise LLMRequestError(f"malformed answer (not JSON): {raw.text[:200]!r}") from None
        return answer_from_body(parsed)

    async def _send(self, request: ChatRequest) -> openai.APIResponse:
        structured = bool(self.structured)
        try:
            return await self._api.chat.completions.with_raw_response.create(
                **chat_body(self.model, request, structured))
        except openai.APITimeoutError:
            raise LLMRequestError(f"gave up after {self.retries + 1} attempts: "
                                  f"no answer within {self.timeout:g} s") from None
        except openai.APIConnectionError as err:
            raise LLMUnavailableError(f"lost the LLM server at {self.server}: "
                                      f"connection failed: {_describe(err)}") from None
        except openai.APIStatusError as err:
            if not (structured and err.status_code == 400 and _SCHEMA_REFUSAL.search(err.response.text)):
                raise self._refusal(err) from None
            if self.structured:  # the first request to hear it says so; the others just follow
                self.structured = False
                log.warning("the LLM server at %s rejected the JSON-schema response_format (%s); asking for "
                            "free text instead (the cleaner parses it)", self.server, err.response.text[:160])
        return await self._send(request)

    def _refusal(self, err: openai.APIStatusError) -> LLMError:
        """An HTTP error answer (after the client's retries) as one of our two outcomes."""
        text = err.response.text
        if err.status_code in (400, 404) and self.model in text and "model" in text.lower():
            return LLMUnavailableError(f"the LLM server at {self.server} rejected model {self.model!r}: {text[:200]}")
        retried = f"gave up after {self.retries + 1} attempts: " if err.status_code in (408, 409, 429) or \
            err.status_code >= 500 else ""
        return LLMRequestError(f"{retried}HTTP {err.status_code}: {text[:200]}")


class _DeadlineHttpClient(openai.DefaultAsyncHttpxClient):
    """openai's HTTP client with a deadline on each whole attempt, body included.

    A timeout raised here is httpx's own kind, so the openai client retries it like any other.
    """

    def __init__(self, deadline: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self._deadline = deadline

    async def send(self, request: httpx.Request, **kwargs) -> httpx.Response:
        try:
            return await asyncio.wait_for(super().send(request, **kwargs), self._deadline)
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout(f"no complete answer within {self._deadline:g} s", request=request) from None


def _describe(err: Exception) -> str:
    """The underlying reason (openai's connection errors say only "Connection error.")."""
    cause = err.__cause__ or err
    return str(cause) or type(cause).__name__
