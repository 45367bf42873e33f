"""Work beside the model: a bounded read-ahead of inputs and a bounded write-behind of outputs.

On a folder run the model is the one thing that must not wait. Decoding, resizing and cutting
the next images into windows (``read_ahead``), and encoding and writing the finished masks,
overlays and records (``WriteBehind``), each run in one background thread; on a CPU, the model
calls of several images can run side by side the same way (``read_ahead`` with more threads). Both are bounded, so
memory stays flat however long the folder is, and both keep the order of the items: results and
files are exactly those of doing the same steps one after the other.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Result = TypeVar("Result")


def read_ahead(items: Iterable[Item], load: Callable[[Item], Loaded], depth: int,
               threads: int = 1, name: str = "freecp-read") -> Iterator[Loaded]:
    """``load(item)`` for every item, in order, computed up to ``depth`` items ahead in
    ``threads`` threads (``items`` itself is iterated in the caller's thread).

    ``depth`` 0 loads each item when it is asked for (no thread). An exception raised by
    ``load`` comes out where its item would have.
    """
    if depth <= 0:
        yield from map(load, items)
        return
    source = iter(items)
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        try:
            for item in source:
                ahead.append(pool.submit(load, item))
                if len(ahead) > depth:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:  # the consumer stopped early: drop what was not started
                future.cancel()


class WriteStopped(RuntimeError):
    """A write-behind job not run because an earlier one failed."""


class WriteBehind:
    """Runs submitted jobs in order in one thread, with at most ``depth`` waiting.

    ``submit`` blocks while ``depth`` jobs wait, so a slow disk slows the run instead of filling
    memory with finished masks. Once a job raises, the later ones are not run (they raise
    ``WriteStopped``): nothing is written after the failure, as when the steps run in turn and
    the first error ends them. Leaving the ``with`` block waits for every job.
    """

    def __init__(self, depth: int) -> None:
        self._slots = threading.BoundedSemaphore(max(depth, 1))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freecp-write")
        self._failed: BaseException | None = None  # only the writer thread sets it

    def submit(self, job: Callable[..., Result], *args: object) -> Future[Result]:
        self._slots.acquire()
        future = self._pool.submit(self._run, job, *args)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def _run(self, job: Callable[..., Result], *args: object) -> Result:
        if self._failed is not None:
            raise WriteStopped("an earlier write failed") from self._failed
        try:
            return job(*args)
        except BaseException as err:
            self._failed = err
            raise

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)
