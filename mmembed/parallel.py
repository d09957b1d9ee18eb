"""Ordered parallel map over a stream with a bounded window, for CPU work that releases the GIL."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def map_ordered(pool: Executor, fn: Callable[[In], Out], items: Iterable[In], window: int) -> Iterator[Out]:
    """``fn`` over ``items`` on ``pool``, results in input order, at most ``window`` in flight.

    Image decode and resize in Pillow release the GIL, so a thread pool overlaps them with each
    other and with model inference, while the window bounds memory on a streamed shard. When ``items``
    itself raises, the results of the items it gave before are yielded first, then the error is raised.
    """
    pending: deque[Future[Out]] = deque()
    source = iter(items)
    while True:
        try:
            item = next(source)
        except StopIteration:
            break
        except Exception:
            while pending:
                yield pending.popleft().result()
            raise
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
