"""map_ordered: results in input order with a bounded number in flight."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mmembed.parallel import map_ordered


def test_order_is_kept_and_window_bounds_work_in_flight() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def slow_square(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002 * (x % 3))  # finish out of order
        with lock:
            running -= 1
        return x * x

    consumed = []

    def source():
        for i in range(40):
            consumed.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        results = []
        for value in map_ordered(pool, slow_square, source(), window=5):
            results.append(value)
            assert len(consumed) - len(results) <= 5  # never more than the window read ahead
    assert results == [i * i for i in range(40)] and peak <= 4


def test_errors_surface_in_order() -> None:
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with ThreadPoolExecutor(2) as pool:
        out = map_ordered(pool, fail_on_three, range(10), window=4)
        assert [next(out) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(out)


def test_items_read_before_the_source_breaks_are_yielded_then_the_error() -> None:
    def breaking_source():
        yield from range(5)
        raise OSError("the stream broke")

    got = []
    with ThreadPoolExecutor(2) as pool, pytest.raises(OSError, match="the stream broke"):
        for value in map_ordered(pool, lambda x: x * 10, breaking_source(), window=8):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]
