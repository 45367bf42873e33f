"""Flows that prepare a vocabulary: describe its classes with an LLM, encode them with CLIP.

``build-vocabulary`` runs both, the way a team adds a new vocabulary. Parameters are named as
the ``freecp describe`` and ``freecp encode`` options are.

No Prefect task cache: the description cache and the embedding store are content-addressed
(class, prompt, LLM model and sampling; text and CLIP model), so a repeated run is already a
cheap lookup there, and a Prefect cache beside them could only disagree with them (a cleared
store would be "cached" as done). Retries are on: the LLM server and S3 fail transiently, and
the stores keep every answer and vector already saved, so a retry only redoes what is missing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from freecp.flows.hints import prefect_wording
from freecp.flows.logs import LIBRARY_LOG_HOOKS
from freecp.flows.report import publish_summary
from freecp.flows.retry import transient_failure
from freecp import encoding
from freecp.defaults import DEFAULT_CACHE, DEFAULT_MAX_TOKENS, DEFAULT_STORE, DEFAULT_TEMPERATURE, DEFAULT_VLLM_MODEL
from freecp.describe import run as describe_run
from freecp.stores.embeddings import EncodeSummary
from freecp.vocab import Vocabulary, load_vocabulary

VocabSource = str | list[str]


@task(name="load-vocabulary", cache_policy=NO_CACHE, persist_result=False)
def load_vocabulary_task(vocab: VocabSource) -> Vocabulary:
    vocabulary = load_vocabulary(vocab)
    get_run_logger().info("vocabulary %s: %d classes (hash %s)", vocabulary.name, len(vocabulary),
                          vocabulary.content_hash)
    return vocabulary


@task(name="describe", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient_failure,
      cache_policy=NO_CACHE, persist_result=False)
def describe_task(vocabulary: Vocabulary, llm_url: str | None, llm_model: str, cache: str, per_class: int,
                  concurrency: int, temperature: float, max_tokens: int,
                  max_requests: int | None) -> describe_run.DescribeSummary:
    summary = describe_run.describe_vocabulary(
        vocabulary, llm_url=llm_url, llm_model=llm_model, cache=cache, per_class=per_class,
        concurrency=concurrency, temperature=temperature, max_tokens=max_tokens, max_requests=max_requests,
        progress=False,
    )
    get_run_logger().info("%s: %d classes done, %d requests sent, %d cache hits, %d short, %d failed",
                          summary.vocabulary, summary.classes_done, summary.requests_sent, summary.cache_hits,
                          len(summary.short), len(summary.failed))
    return summary


@task(name="encode", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient_failure,
      cache_policy=NO_CACHE, persist_result=False)
def encode_task(vocabulary: Vocabulary, store: str, model: str, pretrained: str, clip_checkpoint: str | None,
                descriptions: str | None, device: str) -> EncodeSummary:
    with prefect_wording():
        summary = encoding.encode_vocabulary(
            vocabulary, store=store, model=model, pretrained=pretrained, clip_checkpoint=clip_checkpoint,
            descriptions=descriptions, device=device,
        )
    get_run_logger().info(summary.line())
    return summary


@flow(name="describe-vocabulary", **LIBRARY_LOG_HOOKS)
def describe_vocabulary(
    vocab: VocabSource,
    llm_url: str | None = None,
    llm_model: str = DEFAULT_VLLM_MODEL,
    cache: str = DEFAULT_CACHE,
    per_class: int = 20,
    concurrency: int = 8,
    temperature: float = DEFAULT_TEMPERATURE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_requests: int | None = None,
) -> State:
    """Ask the LLM for visual descriptions of every class the description cache lacks.

    Without ``llm_url`` a local server is started for the run. Ends Failed, naming the classes,
    if a request failed for good; classes short of descriptions are listed but not a failure.
    """
    vocabulary = load_vocabulary_task(vocab)
    summary = describe_task(vocabulary, llm_url, llm_model, cache, per_class, concurrency, temperature, max_tokens,
                            max_requests)
    publish_describe_summary(summary)
    message = (f"{summary.classes_done}/{summary.classes_total} classes, {summary.requests_sent} requests, "
               f"{summary.cache_hits} cache hits, {len(summary.short)} short")
    if summary.failed:
        failed = "; ".join(f"{name}: {reason}" for name, reason in summary.failed.items())
        return Failed(message=f"{message}; failed: {failed}")
    return Completed(message=message, data=summary)


@flow(name="encode-vocabulary", **LIBRARY_LOG_HOOKS)
def encode_vocabulary(
    vocab: VocabSource,
    store: str = DEFAULT_STORE,
    model: str = "ViT-B-16",
    pretrained: str = "openai",
    clip_checkpoint: str | None = None,
    descriptions: str | None = None,
    device: str = "cpu",
) -> EncodeSummary:
    """Encode the class names (and the cached descriptions) the embedding store lacks."""
    vocabulary = load_vocabulary_task(vocab)
    summary = encode_task(vocabulary, store, model, pretrained, clip_checkpoint, descriptions, device)
    publish_encode_summary(summary)
    return summary


def publish_describe_summary(summary: describe_run.DescribeSummary) -> None:
    publish_summary("describe-vocabulary-summary", f"describe-vocabulary: {summary.vocabulary}", summary)


def publish_encode_summary(summary: EncodeSummary) -> None:
    publish_summary("encode-vocabulary-summary", f"encode-vocabulary: {summary.vocabulary}", summary)


@flow(name="build-vocabulary", **LIBRARY_LOG_HOOKS)
def build_vocabulary(
    vocab: VocabSource,
    llm_url: str | None = None,
    llm_model: str = DEFAULT_VLLM_MODEL,
    cache: str = DEFAULT_CACHE,
    store: str = DEFAULT_STORE,
    model: str = "ViT-B-16",
    pretrained: str = "openai",
    clip_checkpoint: str | None = None,
    per_class: int = 20,
    concurrency: int = 8,
    temperature: float = DEFAULT_TEMPERATURE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_requests: int | None = None,
    device: str = "cpu",
) -> State:
    """A new vocabulary end to end: describe its classes, then encode names and descriptions.

    Encoding waits for a complete describe step: if it fails, the run ends with its state and a
    re-run (which finds every saved answer in the cache) finishes the job. The run carries the
    summary artifacts of both steps (each subflow run has its own too).
    """
    described = describe_vocabulary(vocab, llm_url, llm_model, cache, per_class, concurrency, temperature,
                                    max_tokens, max_requests, return_state=True)
    if not described.is_completed():
        return described
    encoded = encode_vocabulary(vocab, store, model, pretrained, clip_checkpoint, cache, device)
    publish_describe_summary(described.result())
    publish_encode_summary(encoded)
    return Completed(message=f"describe: {described.message}; encode: {encoded.line()}")
