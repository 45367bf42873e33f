"""Flows that prepare a vocabulary: describe its classes with an LLM, encode them with CLIP.

``build-vocabulary`` runs both, the way a team adds a new vocabulary. Parameters are the
``freecp describe`` and ``freecp encode`` options, made from the same job specs (``freecp.jobs``).

No Prefect task cache: the description cache and the embedding store are content-addressed
(class, prompt, LLM model and sampling; text and CLIP model), so a repeated run is already a
cheap lookup there, and a Prefect cache beside them could only disagree with them (a cleared
store would be "cached" as done). Retries are on: the LLM server and S3 fail transiently, and
the stores keep every answer and vector already saved, so a retry only redoes what is missing.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from freecp.flows.hints import prefect_wording
from freecp.flows.logs import LIBRARY_LOG_HOOKS
from freecp.flows.report import publish_summary
from freecp.flows.retry import transient_failure
from freecp.flows.params import with_job_parameters_of
from freecp import encoding
from freecp.describe import run as describe_run
from freecp.flatten import flat_values
from freecp.jobs import DescribeJob, EncodeJob
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
def describe_task(vocabulary: Vocabulary, job: DescribeJob) -> describe_run.DescribeSummary:
    summary = describe_run.describe(vocabulary, job)
    get_run_logger().info("%s: %d classes done, %d requests sent, %d cache hits, %d short, %d failed; model %s, "
                          "server %s", summary.vocabulary, summary.classes_done, summary.requests_sent,
                          summary.cache_hits, len(summary.short), len(summary.failed), summary.llm_model,
                          f"{summary.engine} at {summary.server}" if summary.server else "none (all cached)")
    return summary


@task(name="encode", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient_failure,
      cache_policy=NO_CACHE, persist_result=False)
def encode_task(vocabulary: Vocabulary, job: EncodeJob) -> EncodeSummary:
    with prefect_wording():
        summary = encoding.encode(vocabulary, job)
    get_run_logger().info(summary.line())
    return summary


@flow(name="describe-vocabulary", **LIBRARY_LOG_HOOKS)
@with_job_parameters_of(job=DescribeJob)
def describe_vocabulary(vocab: VocabSource, *, job: DescribeJob) -> State:
    """Ask the LLM for visual descriptions of every class the description cache lacks.

    The other parameters are the options of ``freecp describe`` (``freecp.jobs.DescribeJob``).
    Without ``llm_url`` the local vLLM is started for the run (``vllm_env``); the report names
    the server (vLLM and its version) and the model. Ends Failed, naming the classes,
    if a request failed for good; classes short of descriptions are listed but not a failure.
    """
    vocabulary = load_vocabulary_task(vocab)
    summary = describe_task(vocabulary, job)
    publish_describe_summary(summary)
    message = (f"{summary.classes_done}/{summary.classes_total} classes, {summary.requests_sent} requests, "
               f"{summary.cache_hits} cache hits, {len(summary.short)} short")
    if summary.failed:
        failed = "; ".join(f"{name}: {reason}" for name, reason in summary.failed.items())
        return Failed(message=f"{message}; failed: {failed}")
    return Completed(message=message, data=summary)


@flow(name="encode-vocabulary", **LIBRARY_LOG_HOOKS)
@with_job_parameters_of(job=EncodeJob)
def encode_vocabulary(vocab: VocabSource, *, job: EncodeJob) -> EncodeSummary:
    """Encode the class names (and the cached descriptions) the embedding store lacks.

    The other parameters are the options of ``freecp encode`` (``freecp.jobs.EncodeJob``).
    """
    vocabulary = load_vocabulary_task(vocab)
    summary = encode_task(vocabulary, job)
    publish_encode_summary(summary)
    return summary


def publish_describe_summary(summary: describe_run.DescribeSummary) -> None:
    publish_summary("describe-vocabulary-summary", f"describe-vocabulary: {summary.vocabulary}", summary)


def publish_encode_summary(summary: EncodeSummary) -> None:
    publish_summary("encode-vocabulary-summary", f"encode-vocabulary: {summary.vocabulary}", summary)


@flow(name="build-vocabulary", **LIBRARY_LOG_HOOKS)
@with_job_parameters_of(exclude={"descriptions"}, describe=DescribeJob, encode=EncodeJob)
def build_vocabulary(vocab: VocabSource, *, describe: DescribeJob, encode: EncodeJob) -> State:
    """A new vocabulary end to end: describe its classes, then encode names and descriptions.

    The other parameters are those of ``describe-vocabulary`` and ``encode-vocabulary``; the
    descriptions encoded are the ones the describe step put in ``cache``. Encoding waits for a
    complete describe step: if it fails, the run ends with its state and a re-run (which finds
    every saved answer in the cache) finishes the job. The run carries the summary artifacts of
    both steps (each subflow run has its own too).
    """
    described = describe_vocabulary(vocab, return_state=True, **flat_values(describe))
    if not described.is_completed():
        return described
    encoded = encode_vocabulary(vocab, **flat_values(replace(encode, descriptions=describe.cache)))
    publish_describe_summary(described.result())
    publish_encode_summary(encoded)
    return Completed(message=f"describe: {described.message}; encode: {encoded.line()}")
