"""Describe a vocabulary: ask the LLM for whatever the description cache lacks, and save it as it comes.

Classes are worked on concurrently (a wave of requests per class at a time, see ``plan``), with
at most ``concurrency`` requests in flight overall. Answers are appended to the cache in small
shards while the run goes on (at least every ``FLUSH_SECONDS``), so a run that is killed or loses
its server keeps what it got and a re-run sends only the missing requests. A class whose
answers gave no usable description (refusals, empty answers) is asked again by the next run; its
answers are kept but do not count as had. No server is contacted (or started) when the cache
already holds every answer the plans need. Without a URL the local vLLM is started for the run
(``freecp.describe.serve``); the summary names the server (engine and version) and the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from freecp.jobs import DescribeJob, LlmEndpoint
from freecp.progress import ProgressCallback
from freecp.describe.client import ChatClient, LLMRequestError, LLMUnavailableError
from freecp.describe.plan import ClassPlan, PlannedRequest, build_plans, make_entry
from freecp.defaults import DEFAULT_VLLM_MODEL
from freecp.describe.serve import LocalServer, default_model, find_vllm, served_name, server_command
from freecp.stores.descriptions import SOURCE_SERVER, CacheEntry, DescriptionCache
from freecp.vocab import Vocabulary

FLUSH_EVERY = 16     # answers; a burst is written at once
FLUSH_SECONDS = 1.0  # and nothing waits longer: kill -9 loses at most about a second of answers

log = logging.getLogger(__name__)


@dataclass
class DescribeSummary:
    """What a run did; ``short`` maps class name -> (descriptions it has, why it is short)."""

    vocabulary: str
    llm_model: str
    cache: str
    classes_total: int
    classes_done: int = 0
    requests_sent: int = 0
    cache_hits: int = 0
    answers_saved: int = 0
    short: dict[str, tuple[int, str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    server: str = ""
    engine: str = ""  # what answered: "vLLM 0.32.0 (CPU build)", "vLLM 0.11.0", ...

    @property
    def ok(self) -> bool:
        """True when no request failed for good (short classes alone are not a failure)."""
        return not self.failed


class DescribeAborted(LLMUnavailableError):
    """The server went away (or never was there) mid-run; ``summary`` counts what was saved."""

    def __init__(self, message: str, summary: DescribeSummary):
        super().__init__(message)
        self.summary = summary


def model_to_ask(llm_url: str | None, llm_model: str | None, vllm_env: str | None = None) -> str:
    """The model named, else the default: Vicuna from a server given by URL or the GPU build,
    the bundled SmolLM2 from the CPU build (``freecp.describe.serve.default_model``)."""
    if llm_model or llm_url:
        return llm_model or DEFAULT_VLLM_MODEL
    try:
        return default_model(find_vllm(vllm_env))
    except LLMUnavailableError:
        return DEFAULT_VLLM_MODEL  # the start will say how to install vLLM, if a request is needed


def describe(vocab: Vocabulary, job: DescribeJob, on_progress: ProgressCallback | None = None,
             cache: DescriptionCache | None = None) -> DescribeSummary:
    """``describe_vocabulary`` for a ``DescribeJob`` (the CLI, the flows and Python callers alike);
    ``cache`` is the job's description cache when already open."""
    llm = job.llm
    if job.run_batch:
        from freecp.describe.batch import describe_offline  # it builds on this module

        store = cache or DescriptionCache(job.cache)
        return describe_offline(vocab, cache=store, llm_model=llm.llm_model, vllm_env=llm.vllm_env,
                                structured=llm.structured is not False, **job.plan_options())
    return describe_vocabulary(vocab, llm_url=llm.llm_url, llm_model=llm.llm_model, cache=cache or job.cache,
                               concurrency=llm.concurrency, timeout=llm.timeout, retries=llm.retries,
                               structured=llm.structured, vllm_env=llm.vllm_env, on_progress=on_progress,
                               **job.plan_options())


def describe_vocabulary(
    vocab: Vocabulary,
    *,
    llm_url: str | None,
    llm_model: str | None,
    cache: str | DescriptionCache,
    per_class: int = DescribeJob.per_class,
    concurrency: int = LlmEndpoint.concurrency,
    temperature: float = DescribeJob.temperature,
    max_tokens: int = DescribeJob.max_tokens,
    on_progress: ProgressCallback | None = None,
    timeout: float = LlmEndpoint.timeout,
    retries: int = LlmEndpoint.retries,
    max_requests: int | None = None,
    structured: bool | None = None,
    prompt_set: str = DescribeJob.prompt_set,
    vllm_env: str | None = None,
) -> DescribeSummary:
    """Fill the description cache for every foreground class of ``vocab``; ``on_progress``
    hears of every class finished ("describing classes", done, total).

    With ``llm_url`` None the local vLLM (from ``vllm_env``, see ``freecp.describe.serve``) is
    started for the run when (and only if) a request must be sent, and stopped afterwards;
    ``llm_model`` None asks the default model (``model_to_ask``). ``structured`` None asks for
    JSON-schema output only from vLLM. Raises ``LLMUnavailableError`` (``DescribeAborted`` once
    requests were under way) when the server cannot be reached or does not serve the model.
    """
    store = cache if isinstance(cache, DescriptionCache) else DescriptionCache(cache)
    llm_model = model_to_ask(llm_url, llm_model, vllm_env)
    model = llm_model if llm_url else served_name(llm_model)
    plans = build_plans(vocab, llm_model=model, per_class=per_class, temperature=temperature,
                        max_tokens=max_tokens, max_requests=max_requests, prompt_set=prompt_set)
    reviewed = store.reviewed_classes()
    todo = [plan for plan in plans if plan.entry.name not in reviewed]
    summary = DescribeSummary(vocabulary=vocab.name, llm_model=model, cache=store.url, classes_total=len(plans),
                              classes_done=len(plans) - len(todo))
    connector = _Connector(llm_url, llm_model, model, concurrency=concurrency, timeout=timeout, retries=retries,
                           structured=structured, vllm_env=vllm_env)
    runner = _Runner(store, todo, connector, summary, on_progress)
    try:
        asyncio.run(runner.run())
    except LLMUnavailableError as err:
        if summary.requests_sent == 0:
            raise
        raise DescribeAborted(f"{err}\n{summary.answers_saved} answers of this run were saved; "
                              f"run again to send only the missing requests", summary) from None
    finally:
        runner.finish()
        connector.close()
    return summary


class _Connector:
    """Opens the client on first need: starts the local server if there is no URL, checks the model."""

    def __init__(self, llm_url: str | None, llm_model: str, served: str, *, vllm_env: str | None, **client_options):
        self.llm_url, self.llm_model, self.served, self.vllm_env = llm_url, llm_model, served, vllm_env
        self.client_options = client_options
        self.client: ChatClient | None = None
        self.server: LocalServer | None = None
        self._lock = asyncio.Lock()

    async def get(self, say) -> ChatClient:
        async with self._lock:
            if self.client is None:
                url = self.llm_url
                if url is None:
                    command = await asyncio.to_thread(server_command, self.llm_model, vllm_env=self.vllm_env)
                    self.server = LocalServer(command)
                    say(f"starting {command.engine} for {self.llm_model} (log: {self.server.log_path}) ...")
                    await asyncio.to_thread(self.server.start)
                    url = self.server.url
                    say(f"local LLM server ready at {url} ({command.engine}, model {command.model}, "
                        f"pid {self.server.pid})")
                client = ChatClient(url, self.served, **self.client_options)
                try:
                    await client.check()
                except BaseException:
                    await client.__aexit__(None, None, None)
                    raise
                self.client = client
            return self.client

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.__aexit__(None, None, None)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _say(text: str) -> None:
    """What the run is doing besides asking (starting a local server): a library log line."""
    log.info("%s", text)


class _Runner:
    def __init__(self, store: DescriptionCache, plans: list[ClassPlan], connector: _Connector,
                 summary: DescribeSummary, on_progress: ProgressCallback | None):
        self.store, self.plans, self.connector, self.summary = store, plans, connector, summary
        self.on_progress = on_progress
        self.classes_closed = 0
        self.pending: list[CacheEntry] = []
        self.last_flush = time.monotonic()

    async def run(self) -> None:
        self._report()
        tasks = [asyncio.create_task(self._describe(plan)) for plan in self.plans]
        flusher = asyncio.create_task(self._flush_every_second())
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # re-raises the first error
        finally:
            for task in (*tasks, flusher):
                task.cancel()
            await asyncio.gather(*tasks, flusher, return_exceptions=True)
            await self.connector.aclose()
            if self.connector.client is not None:
                self.summary.server = self.connector.client.server
                self.summary.engine = (self.connector.server.command.engine if self.connector.server
                                       else self.connector.client.engine)

    async def _describe(self, plan: ClassPlan) -> None:
        described = any(self._usable(p.key) for p in plan.candidates)
        while wave := plan.next_wave():
            # a class the cache has no description for at all asks again for its empty answers
            misses = [p for p in wave if p.key not in self.store or not (described or self._usable(p.key))]
            saved: dict[str, CacheEntry | BaseException] = {}
            if misses:
                client = await self.connector.get(_say)
                results = await asyncio.gather(*(self._ask(client, p) for p in misses), return_exceptions=True)
                saved = {p.key: r for p, r in zip(misses, results, strict=True)}
            for planned in wave:  # recorded in plan order, so a re-run from the cache decides alike
                result = saved.get(planned.key) or self.store.get(planned.key)
                if isinstance(result, LLMRequestError):
                    plan.fail(str(result))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self.summary.cache_hits += planned.key not in saved
                    plan.record(result.descriptions)
        self._close_class(plan)

    def _usable(self, key: str) -> bool:
        """Whether a cached answer gave descriptions. When none of a class's answers did (refusals,
        empty answers), they are kept (their raw text shows why) but asked again, within the
        class's request budget."""
        entry = self.store.get(key)
        return entry is not None and bool(entry.descriptions)

    async def _ask(self, client: ChatClient, planned: PlannedRequest) -> CacheEntry:
        """Send one request and queue its answer for the cache the moment it arrives."""
        try:
            answer = await client.complete(planned.request)
        finally:
            self.summary.requests_sent = client.requests
        entry = make_entry(planned, answer, source=SOURCE_SERVER, server=client.server)
        self.pending.append(entry)
        if len(self.pending) >= FLUSH_EVERY or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self._flush()
        return entry

    async def _flush_every_second(self) -> None:
        """Write answers that arrived since the last flush, even while no new answer comes."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS / 2)
            if self.pending and time.monotonic() - self.last_flush >= FLUSH_SECONDS:
                self._flush()

    def _flush(self) -> None:
        self.store.append(self.pending)  # on a store error the answers stay pending for the final flush
        self.summary.answers_saved += len(self.pending)
        self.pending = []
        self.last_flush = time.monotonic()

    def _close_class(self, plan: ClassPlan) -> None:
        name = plan.entry.name
        if plan.failure:
            self.summary.failed[name] = plan.failure
        if plan.done:
            self.summary.classes_done += 1
        else:
            self.summary.short[name] = (len(plan.descriptions), plan.shortfall())
        self.classes_closed += 1
        self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress("describing classes", self.classes_closed, len(self.plans))

    def finish(self) -> None:
        """Save whatever answers are still buffered (also after an error or an interrupt)."""
        if self.pending:
            self._flush()
