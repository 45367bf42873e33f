"""The flows called in-process against the session's real Prefect server.

CLIP has random weights here (``freecp-tiny``, ``pretrained=none``): the tests check what the
flows do (which images are done, skipped, failed; what is reported; what is loaded how often),
never what the masks show.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.exceptions import FailedRun
from prefect.states import Failed

from freecp.flows import segmenters
from freecp.flows.report import segment_summary_markdown, segment_table, summary_markdown
from freecp.flows.retry import transient_failure
from freecp.flows.segment import PARTLY_FAILED, segment_images
from freecp.flows.vocabulary import encode_vocabulary
from freecp.describe.run import DescribeSummary
from freecp.run_report import most_common, run_totals
from freecp.stores.descriptions import DescriptionCacheError
from freecp.stores.embeddings import ModelMismatchError
from freecp.stores.fs import StoreError
from freecp.vocab import VocabularyError
from tests.fixtures_prefect import FLOW_VOCAB as VOCAB
from tests.fixtures_prefect import TINY_CLIP as TINY
from tests.fixtures_prefect import SAMPLES, copy_samples, flow_run_artifacts


def test_segment_images_records_a_bad_image_and_fails_the_run(prefect_api: str, tmp_path: Path) -> None:
    images, out, store = tmp_path / "images", tmp_path / "out", tmp_path / "store"
    good = copy_samples(images)
    (images / "broken.jpg").write_bytes(b"this is not a JPEG")
    builds_before = segmenters.builds()

    state = segment_images(images=str(images), vocab=VOCAB, out=str(out), store=str(store), return_state=True, **TINY)

    assert state.is_failed() and state.name == "Partly failed"
    assert "3 done, 0 skipped, 1 failed" in state.message
    assert "broken.jpg: not an image" in state.message
    assert segmenters.builds() - builds_before == 1  # one model for the preparation and all images
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{n}.jpg.png" for n in good]
    rows = {r["path"]: r for r in pq.read_table(out / "records.parquet").to_pylist()}
    assert rows["broken.jpg"]["status"] == "failed" and rows["broken.jpg"]["error"]
    assert sorted(p for p, r in rows.items() if r["status"] == "done") == [f"{n}.jpg" for n in good]

    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    summary = artifacts["segment-images-summary"].data
    assert "| 4 | 3 | 0 | 1 |" in summary
    assert "## Failed images" in summary and "`broken.jpg`" in summary
    table = json.loads(artifacts["segment-images-records"].data)
    assert [(r["path"], r["status"]) for r in table][0] == ("broken.jpg", "failed")
    assert len(table) == 4

    again = segment_images(images=str(images), vocab=VOCAB, out=str(out), store=str(store), return_state=True, **TINY)
    assert again.is_failed() and "0 done, 3 skipped, 1 failed" in again.message
    assert segmenters.builds() - builds_before == 1  # same settings: the process's segmenter is reused


def test_segment_images_completes_and_changed_settings_redo_the_work(prefect_api: str, tmp_path: Path) -> None:
    images, out, store = tmp_path / "images", tmp_path / "out", tmp_path / "store"
    images.mkdir()
    shutil.copy(SAMPLES / "cat.jpg", images / "one.jpg")
    common = dict(images=str(images), vocab=VOCAB, out=str(out), store=str(store), return_state=True, **TINY)

    first = segment_images(**common)
    assert first.is_completed() and first.result() == {"done": 1, "skipped": 0, "failed": 0}
    assert any(log.name == "freecp.build" and "segmenter ready" in log.message
               for log in _run_logs(first.state_details.flow_run_id))  # the library's own log, in the run
    assert segment_images(**common).result() == {"done": 0, "skipped": 1, "failed": 0}
    # a different setting changes the run key: the image is redone, not skipped
    assert segment_images(**common, rp_threshold=0.5).result() == {"done": 1, "skipped": 0, "failed": 0}


def test_batch_images_share_a_task_with_the_same_outputs_and_per_image_records(prefect_api: str,
                                                                               tmp_path: Path) -> None:
    images, store = tmp_path / "images", str(tmp_path / "store")
    copy_samples(images)
    (images / "broken.jpg").write_bytes(b"this is not a JPEG")
    common = dict(images=str(images), vocab=VOCAB, store=store, return_state=True, **TINY)

    batched = segment_images(out=str(tmp_path / "batched"), batch_images=3, **common)
    single = segment_images(out=str(tmp_path / "single"), **common)

    assert batched.name == single.name == PARTLY_FAILED and "3 done, 0 skipped, 1 failed" in batched.message
    assert sorted(_task_run_names(batched.state_details.flow_run_id)) == [
        "segment astronaut.jpg and 2 more", "segment coffee.jpg"]  # 4 images, 3 per task
    for mask in (tmp_path / "single" / "masks").iterdir():
        assert (tmp_path / "batched" / "masks" / mask.name).read_bytes() == mask.read_bytes()
    rows = {r["path"]: r["status"] for r in pq.read_table(tmp_path / "batched" / "records.parquet").to_pylist()}
    assert rows == {"astronaut.jpg": "done", "broken.jpg": "failed", "cat.jpg": "done", "coffee.jpg": "done"}


def _task_run_names(flow_run_id) -> list[str]:
    """The names of the segment tasks of a flow run's subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter, \
        TaskRunFilterName

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="segment ")),
                                     flow_run_filter=FlowRunFilter(id={"any_": [c.id for c in children]}))
    return [run.name for run in runs]


@pytest.mark.parametrize(("bad", "reason"), [
    ({"vocab": "no/such/vocabulary.txt"}, "neither a shipped name"),
    ({"images": "no/such/folder"}, "neither an image file nor a folder"),
    ({"stride": 999}, "stride must be positive and at most the window size"),
])
def test_bad_input_fails_the_run_with_its_reason(prefect_api: str, tmp_path: Path, bad: dict, reason: str) -> None:
    params = dict(images=str(SAMPLES), vocab=VOCAB, out=str(tmp_path / "out"), store=str(tmp_path / "store"), **TINY)
    state = segment_images(**{**params, **bad}, return_state=True)
    assert state.is_failed()
    assert reason in state.message
    assert not (tmp_path / "out" / "masks").exists()


def test_encode_vocabulary_flow_into_s3_encodes_once(prefect_api: str, s3_bucket: str) -> None:
    store = f"{s3_bucket}/team-store"
    first = encode_vocabulary(vocab=VOCAB, store=store, return_state=True, **TINY)
    encoded = first.result()
    assert encoded.classes_encoded == len(["sky", "wall", "cat", "kitten", "person"])
    second = encode_vocabulary(vocab=VOCAB, store=store, **TINY)
    assert (second.encoded, second.classes_reused) == (0, encoded.classes_encoded)
    summary = flow_run_artifacts(first.state_details.flow_run_id)["encode-vocabulary-summary"].data
    assert "encode-vocabulary: inline" in summary and store in summary


@pytest.mark.parametrize(("error", "retry"), [
    (StoreError("cannot reach s3://bucket: connection refused"), True),
    (ConnectionError("reset by peer"), True),
    (VocabularyError("vocab.txt: line 3: blank line"), False),
    (FileNotFoundError("no such folder"), False),
    (ModelMismatchError("store written by ViT-B-16/openai, running freecp-tiny/random-seed0"), False),
    (RuntimeError("Calculated padded input size per channel: (2 x 2048). Kernel size: (16 x 16)"), False),
    (DescriptionCacheError("s3://b/cache/shards/x.parquet is not a description-cache shard"), False),
])
def test_retries_only_transient_failures(error: Exception, retry: bool) -> None:
    assert transient_failure(None, None, Failed(data=error)) is retry


def _record(path: str, status: str, classes=(), removed=(), seconds=1.0, error="") -> dict:
    return {"path": path, "status": status, "classes_present": list(classes), "removed_classes": list(removed),
            "seconds": seconds, "error": error}


def test_report_counts_classes_per_image_and_lists_failures_first() -> None:
    records = [
        _record("a.jpg", "done", classes=["cat", "person"], removed=["dog"], seconds=2.0),
        _record("b.jpg", "done", classes=["cat"], removed=["dog", "sofa"], seconds=4.0),
        _record("c.jpg", "skipped", classes=["person"]),
        _record("d.jpg", "failed", error="not an image | truncated"),
    ]
    assert most_common(records[:2], "classes_present") == [("cat", 2), ("person", 1)]
    assert most_common(records[:2], "removed_classes") == [("dog", 2), ("sofa", 1)]
    totals = run_totals(records)
    assert totals.counts == {"done": 2, "skipped": 1, "failed": 1, "claimed": 0}
    assert totals.failures == [("d.jpg", "not an image | truncated")]
    markdown = segment_summary_markdown(totals, "/data/in", "/data/out/records.parquet")
    assert "| 4 | 2 | 1 | 1 | 3.00 |" in markdown  # seconds per image over the images done
    assert "- `d.jpg`: not an image \\| truncated" in markdown  # a pipe cannot break the table
    assert [r["path"] for r in segment_table(records)] == ["d.jpg", "a.jpg", "b.jpg"]  # skipped left out


def test_describe_summary_lists_short_classes_readably() -> None:
    summary = DescribeSummary(vocabulary="pets", llm_model="vicuna", cache="s3://team/cache", classes_total=2,
                              classes_done=2, short={"kitten": (3, "answers kept too few items")})
    markdown = summary_markdown("describe-vocabulary: pets", summary)
    assert "| short | kitten: 3, answers kept too few items |" in markdown
    assert "| failed | none |" in markdown


def test_missing_clip_weights_name_the_deployment_parameters(prefect_api: str, tmp_path: Path) -> None:
    """The remedy in a flow run's message is what a deployment run takes, not a CLI flag."""
    state = encode_vocabulary(vocab=VOCAB, store=str(tmp_path / "store"), model="freecp-tiny", pretrained="openai",
                              return_state=True)
    assert state.is_failed()
    assert "--param clip_checkpoint=FILE" in state.message and "--param pretrained=none" in state.message
    assert "--pretrained none" not in state.message


def _run_logs(flow_run_id) -> list:
    """Every log record the server holds for a flow run (its tasks' included), after a flush."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)
    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_engine_traceback_of_a_partly_failed_run_is_dropped_and_others_are_kept() -> None:
    """The engine's own log call, made the way it makes it (a worker is too slow to start here)."""
    engine, collect = logging.getLogger("prefect.flow_runs"), _Collect()
    engine.addHandler(collect)
    try:
        for message in (f"{PARTLY_FAILED}: 3 done, 0 skipped, 1 failed. Failed images: x.jpg: empty file",
                        "Run failed."):
            try:
                raise FailedRun(message)
            except FailedRun:
                engine.error("Engine execution exited with unexpected exception", exc_info=True)
    finally:
        engine.removeHandler(collect)
    assert [str(r.exc_info[1]) for r in collect.records] == ["Run failed."]
