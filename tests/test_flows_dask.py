"""Scale-out: ``segment-images`` on a Dask cluster of several worker processes.

A real ``distributed.LocalCluster`` (separate worker processes, on 127.0.0.1) stands in for a
multi-machine cluster; the flow only gets its scheduler address, as a deployment would. The
point checked is that each worker process loads the model once, however many images it runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from freecp.flows import segmenters
from freecp.flows.segment import segment_images
from freecp.threads import available_cores
from tests.fixtures_prefect import FLOW_VOCAB, TINY_CLIP, copy_samples


def _executed(dask_worker) -> int:
    return dask_worker.state.executed_count


def _send_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_dask_workers_load_the_model_once_each(prefect_api: str, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    images, out, store = tmp_path / "images", tmp_path / "out", tmp_path / "store"
    copy_samples(images)
    for path in sorted(images.iterdir()):  # six distinct images: the originals and their mirrors
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / f"mirrored_{path.name}")

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        state = segment_images(images=str(images), vocab=FLOW_VOCAB, out=str(out), store=str(store),
                               dask_address=cluster.scheduler_address, return_state=True, **TINY_CLIP)
        builds = client.run(segmenters.builds)
        torch_threads = client.run(_torch_threads)
        executed = client.run(_executed)
        pids = set(client.run(os.getpid).values())
        client.run(_send_logs)  # the workers' log records, sent now rather than on their next tick

    assert state.is_completed(), state.message
    assert state.result() == {"done": 6, "skipped": 0, "failed": 0}
    assert os.getpid() not in pids and len(pids) == 2  # the images ran in the two worker processes
    assert sum(executed.values()) == 6
    assert all(n >= 1 for n in executed.values()), executed  # both workers took images
    assert builds == {address: 1 for address in executed}, (builds, executed)
    # two single-thread workers share this host's cores (thread policy, freecp.threads)
    assert torch_threads == {address: max(1, available_cores() // 2) for address in executed}
    assert len(list((out / "masks").iterdir())) == 6
    # the library's own log lines from inside the workers reach the run too (flows/logs.py)
    ready = [log for log in _subflow_logs(state.state_details.flow_run_id)
             if log.name == "freecp.build" and "segmenter ready" in log.message]
    assert len(ready) == 2, ready  # one model built in each worker, each line routed from there


def _subflow_logs(parent) -> list:
    """Every log record the server holds for the subflow runs of ``parent``, after a flush."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter,
                                                LogFilterFlowRunId)
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        ids = [run.id for run in children]
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
