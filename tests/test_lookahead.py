"""Lookahead: a function over a stream on threads, results in order, a bounded number ahead."""

from __future__ import annotations

import random
import threading
import time

import pytest

from components.ingest.lookahead import Lookahead, thread_count


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


def test_zero_threads_means_one_per_core(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert thread_count(0) == 6 and thread_count(3) == 3
