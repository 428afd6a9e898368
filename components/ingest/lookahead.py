"""Runs a function over a stream of items on a thread pool, results in input order.

Beam hands a DoFn one element at a time. Reading and decoding images spend most of their time
outside the GIL (file and network I/O, Pillow's decoders, hashing), so a DoFn that keeps a few
elements in flight on threads uses every core of a worker without extra worker processes, and
overlaps the waits of remote reads (gs://).
"""

from __future__ import annotations

import collections
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def thread_count(configured: int) -> int:
    """`configured` threads, or one per CPU this process may use when it is 0."""
    return configured or available_cpus()


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask, capped by a container's CPU quota.

    `os.cpu_count()` is the host's count: a pod limited to 2 CPUs on a 64-core node would run 64
    decoding threads, each holding a decoded image.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cpu_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`; None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        return quota / int((root / "cpu" / "cpu.cfs_period_us").read_text()) if quota > 0 else None
    except (OSError, ValueError):
        return None


class Lookahead(Generic[Item, Result]):
    """`fn` over submitted items on `threads` threads, at most `ahead` items unfinished or unclaimed.

    `submit` returns the (item, result) pairs that are due, oldest first: the finished head of the
    queue, and as many more as it takes to get back under `ahead`. `drain` returns the rest. An
    exception raised by `fn` is raised again when its item is due.
    """

    def __init__(self, fn: Callable[[Item], Result], threads: int, ahead: int, name: str):
        self._fn = fn
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._ahead = max(ahead, threads)
        self._pending: collections.deque[tuple[Item, Future[Result]]] = collections.deque()

    def submit(self, item: Item) -> list[tuple[Item, Result]]:
        self._pending.append((item, self._pool.submit(self._fn, item)))
        due = []
        while self._pending and (len(self._pending) > self._ahead or self._pending[0][1].done()):
            due.append(self._next())
        return due

    def drain(self) -> Iterator[tuple[Item, Result]]:
        while self._pending:
            yield self._next()

    def close(self) -> None:
        """Stops the threads; items not yet started are dropped."""
        self._pending.clear()
        self._pool.shutdown(cancel_futures=True)

    def _next(self) -> tuple[Item, Result]:
        item, future = self._pending.popleft()
        return item, future.result()
