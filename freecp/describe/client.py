"""An asynchronous client for any OpenAI-compatible chat-completions server (vLLM, transformers serve, ...).

Many requests are kept in flight (up to ``concurrency``) so that a batching server stays busy.
Each request has a deadline for the whole exchange (a server that drips its answer a byte at a
time is cut off like a silent one); connection errors, timeouts, 429 and 5xx answers are retried with
exponential backoff (honouring ``Retry-After``). A server that cannot be reached at all, or that
does not serve the requested model, raises ``LLMUnavailableError``: nothing can be done without
it. A request that still fails after its retries raises ``LLMRequestError``, which a run records
against its class and moves on. Against vLLM the answer is constrained to a JSON list of strings
(its JSON-schema ``response_format``); other servers get free text, which the cleaner parses.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

API_KEY_ENV = "FREECP_LLM_API_KEY"
DESCRIPTIONS_SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


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
        backoff: float = 1.0,
        structured: bool | None = None,
        api_key: str | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base = api_base(url)
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.structured = structured
        self.requests = 0  # requests sent (each counted once)
        self.attempts = 0  # HTTP attempts, retries included
        self._slots = asyncio.Semaphore(concurrency)
        key = api_key or os.environ.get(API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, trust_env=False)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    @property
    def server(self) -> str:
        return public_url(self.base)

    async def check(self) -> None:
        """Fail early and clearly: is the server there, and does it serve ``model``?

        Also decides ``structured`` when it was left to auto-detection (vLLM says it owns its
        models in ``/v1/models``).
        """
        try:
            response = await self._http.get(f"{self.base}/models", timeout=min(self.timeout, 30.0))
        except httpx.HTTPError as err:
            raise LLMUnavailableError(f"cannot reach the LLM server at {self.server}: {_describe(err)}") from None
        if response.status_code == 404:
            return  # a server without a model list; a wrong model name shows on the first request
        if response.status_code in (401, 403):
            raise LLMUnavailableError(
                f"the LLM server at {self.server} refused access (HTTP {response.status_code}); "
                f"set {API_KEY_ENV} to its API key"
            )
        try:
            listed = response.json()["data"]
            models = {m["id"]: m for m in listed}
        except (ValueError, KeyError, TypeError):
            raise LLMUnavailableError(
                f"{self.server}/models did not answer like an OpenAI-compatible server "
                f"(HTTP {response.status_code}): {response.text[:200]}"
            ) from None
        if self.model not in models:
            raise LLMUnavailableError(
                f"the LLM server at {self.server} does not serve model {self.model!r}; "
                f"it serves: {', '.join(sorted(models)) or 'nothing'}"
            )
        if self.structured is None:
            self.structured = str(models[self.model].get("owned_by", "")).lower() == "vllm"

    async def complete(self, request: ChatRequest) -> ChatAnswer:
        """Send one request (waiting for a free slot), retrying transient failures."""
        body = chat_body(self.model, request, bool(self.structured))
        async with self._slots:
            self.requests += 1
            failure, hint = "", None
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(hint if hint is not None else self._backoff_delay(attempt))
                self.attempts += 1
                try:  # the deadline covers the whole request: httpx's timeout bounds each read only
                    response = await asyncio.wait_for(
                        self._http.post(f"{self.base}/chat/completions", json=body), self.timeout)
                except (httpx.TimeoutException, asyncio.TimeoutError):
                    failure, hint = f"no answer within {self.timeout:g} s", None
                    continue
                except httpx.TransportError as err:
                    failure, hint = f"connection failed: {_describe(err)}", None
                    if attempt == self.retries:
                        raise LLMUnavailableError(f"lost the LLM server at {self.server}: {failure}") from None
                    continue
                if response.status_code in _RETRY_STATUS:
                    failure, hint = f"HTTP {response.status_code}", _retry_after(response)
                    continue
                return self._answer(response)
            raise LLMRequestError(f"gave up after {self.retries + 1} attempts: {failure}")

    def _answer(self, response: httpx.Response) -> ChatAnswer:
        if response.status_code in (400, 404) and self.model in response.text and "model" in response.text.lower():
            raise LLMUnavailableError(f"the LLM server at {self.server} rejected model {self.model!r}: "
                                      f"{response.text[:200]}")
        if response.status_code >= 400:
            raise LLMRequestError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError:
            raise LLMRequestError(f"malformed answer (not JSON): {response.text[:200]!r}") from None
        return answer_from_body(body)

    def _backoff_delay(self, attempt: int) -> float:
        return self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(60.0, max(0.0, float(response.headers.get("retry-after", ""))))
    except ValueError:
        return None


def _describe(err: Exception) -> str:
    return str(err) or type(err).__name__
