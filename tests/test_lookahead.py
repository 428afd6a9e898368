"""Lookahead: a function over a stream on threads, results in order, a bounded number ahead."""

from __future__ import annotations

import random
import threading
import time

import pytest

from components.ingest.lookahead import Lookahead, available_cpus, thread_count


def test_results_come_in_input_order_whatever_the_finishing_order():
    rng = random.Random(0)
    delays = {i: rng.uniform(0, 0.01) for i in range(60)}

    def slow_square(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    pool = Lookahead(slow_square, threads=4, ahead=8, name="test")
    try:
        due = [pair for i in range(60) for pair in pool.submit(i)]
        due += list(pool.drain())
    finally:
        pool.close()
    assert due == [(i, i * i) for i in range(60)]


def test_no_more_than_ahead_items_are_unclaimed():
    running, most = 0, 0
    lock = threading.Lock()

    def track(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        return i

    pool = Lookahead(track, threads=3, ahead=5, name="test")
    try:
        claimed = 0
        for i in range(40):
            claimed += len(pool.submit(i))
            assert i + 1 - claimed <= 5  # submitted but not yet handed back
        claimed += len(list(pool.drain()))
    finally:
        pool.close()
    assert claimed == 40 and most <= 3


def test_an_error_is_raised_when_its_item_is_due():
    def fail_on_three(i: int) -> int:
        if i == 3:
            raise ValueError("bad item 3")
        return i

    pool = Lookahead(fail_on_three, threads=2, ahead=2, name="test")
    try:
        seen = []
        with pytest.raises(ValueError, match="bad item 3"):
            for i in range(10):
                seen += [item for item, _ in pool.submit(i)]
            seen += [item for item, _ in pool.drain()]
        assert seen == [0, 1, 2]
    finally:
        pool.close()


def test_zero_threads_means_one_per_usable_cpu(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert thread_count(3) == 3
    assert thread_count(0) == min(6, available_cpus())


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs -> 2 threads
    ({"cpu.max": "max 100000\n"}, 6),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 6),
    ({}, 6),
])
def test_a_containers_cpu_quota_caps_the_threads(tmp_path, monkeypatch, files, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cpus(tmp_path) == expected
