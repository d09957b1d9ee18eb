"""Progress of a long local job on stderr: a tqdm bar on a terminal, a plain log line every few seconds when
stderr is not one (CI logs, files), nothing with ``-q``; done / total, rate and ETA the same way for every job.

It speaks through the ``mmembed.progress`` logger: whatever silences mmembed's INFO lines (``-q``, a library
caller that never configured logging) silences progress too, and stdout stays free for the JSON summary.
``MMEMBED_PROGRESS_INTERVAL`` sets the seconds between plain lines (default 10; 0: a line at every step).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from mmembed.config import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

INTERVAL_ENV = "MMEMBED_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0  # seconds between plain lines
MAX_POLL = 1.0  # seconds between a watcher's polls at most (one listing of a folder each) ...
POLL_SHARE = 0.05  # ... unless polls take longer than this share of the time: a slow listing is polled less often
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"
BAR_FORMAT_NO_TOTAL = "{desc}: [{elapsed}{postfix}]"
FALLBACK_COLUMNS, FALLBACK_ROWS = 100, 24  # for a terminal that reports no size (tqdm would show nothing)


def progress_interval() -> float:
    """Seconds between plain progress lines: ``MMEMBED_PROGRESS_INTERVAL``, else 10."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(
            f"{INTERVAL_ENV}={raw!r} is not a number of seconds >= 0; fix: {INTERVAL_ENV}=10, or unset it"
        )
    return value


def format_duration(seconds: float) -> str:
    """``0:04:12``: hours, minutes, seconds."""
    whole = max(0, int(seconds))  # whole seconds, as tqdm shows them
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def format_rate(per_second: float) -> str:
    """``210`` or ``3.4`` or ``0.05``: whole numbers once they are large enough to read so."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"


class Progress:
    """One phase of a job: ``done`` of ``total`` ``unit`` (None: unknown), named counts beside it (samples), the
    rate of ``rate_of`` (one of the counts; the unit itself by default) and an ETA.

    The ETA comes from ``size`` done of ``size_total`` when given (bytes of input shards: a steadier basis than
    shards of unequal size), else from done of total; both count this run's work only (``initial``: units done
    by an earlier run). Thread-safe: a watcher thread (``watch``) may report while the job runs.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        *,
        rate_of: str | None = None,
        size_total: int | None = None,
        initial: int = 0,
        interval: float | None = None,
    ) -> None:
        self.label, self.total, self.unit, self.rate_of = label, total, unit, rate_of
        self.size_total = size_total or None
        self.done = self.initial = initial
        self.size_done = 0
        self.counts: dict[str, int] = {rate_of: 0} if rate_of else {}
        self.interval = progress_interval() if interval is None else interval
        self.enabled = log.isEnabledFor(logging.INFO)
        self.started = self.last_line = time.monotonic()
        self._lock = threading.RLock()
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._watcher: threading.Thread | None = None
        self._poll: Callable[[Progress], None] | None = None
        self._stop = threading.Event()
        self._closed = False
        self.closing = False  # True during close's last poll: a poll may then look at everything
        if self.enabled and _is_terminal(sys.stderr):
            self._open_bar()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(failed=kind is not None)

    def _open_bar(self) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        basis = self.size_total if self.size_total else self.total
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm())  # log lines print above the bar, not through it
        sized = _terminal_columns(sys.stderr) > 0
        size = {"dynamic_ncols": True} if sized else {"ncols": FALLBACK_COLUMNS, "nrows": FALLBACK_ROWS}
        self._bar = tqdm(
            total=basis,
            initial=0 if self.size_total else self.initial,
            desc=self.label,
            postfix=self.describe(eta=False),
            file=sys.stderr,
            bar_format=BAR_FORMAT if basis else BAR_FORMAT_NO_TOTAL,
            smoothing=0,  # the average rate since the start: the same ETA as the plain lines
            mininterval=0.5,
            leave=True,
            **size,
        )

    def advance(self, n: int = 1, size: int = 0, **counts: int) -> None:
        """``n`` more units done (and ``size`` more of ``size_total``; more of each named count)."""
        with self._lock:
            self.done += n
            self.size_done += size
            for name, value in counts.items():
                self.counts[name] = self.counts.get(name, 0) + value
            if self._bar is not None:
                self._bar.set_postfix_str(self.describe(eta=False), refresh=False)
                self._bar.update(size if self.size_total else n)
            else:
                self._line()

    def complete(self) -> None:
        """Everything done (``total``, ``size_total``), shown by ``close``'s final line: no line of its own."""
        with self._lock:
            self.done = self.total if self.total is not None else self.done
            self.size_done = self.size_total or self.size_done
            if self._bar is not None:
                self._bar.set_postfix_str(self.describe(eta=False), refresh=False)
                self._bar.update((self.size_total or self.total or 0) - self._bar.n)

    def track(self, items: Iterable[T], weight: Callable[[T], int] | None = None) -> Iterator[T]:
        """``items`` passed on; each advances by ``weight(item)`` (1 by default) once the consumer asks for the
        next, that is when its work on the item is done."""
        for item in items:
            yield item
            self.advance(1 if weight is None else weight(item))

    def tick(self) -> None:
        """Nothing new, but time passed: a plain line when one is due, a fresh elapsed time on the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.refresh()
            else:
                self._line()

    def _line(self, final: str | None = None) -> None:
        now = time.monotonic()
        if self.enabled and (final is not None or now - self.last_line >= self.interval):
            self.last_line = now
            log.info("%s: %s", self.label, self.describe(final=final))

    def describe(self, eta: bool = True, final: str | None = None) -> str:
        """``12/80 shards, 3,402 samples, 210 samples/s, ETA 0:04:12`` (``final``: ``done in 0:05:01``)."""
        with self._lock:
            elapsed = time.monotonic() - self.started
            parts = [
                f"{self.done:,}/{self.total:,} {self.unit}" if self.total is not None else f"{self.done:,} {self.unit}"
            ]
            parts += [f"{value:,} {name}" for name, value in self.counts.items()]
            worked = self.counts[self.rate_of] if self.rate_of else self.done - self.initial
            if worked and elapsed > 0:
                parts.append(f"{format_rate(worked / elapsed)} {self.rate_of or self.unit}/s")
            if final is not None:
                parts.append(f"{final} {format_duration(elapsed)}")
            elif eta:
                seconds = self.eta(elapsed)
                parts.append(f"ETA {format_duration(seconds)}" if seconds is not None else "ETA ?")
            return ", ".join(parts)

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at this run's average pace; None before anything is done or without a total."""
        if self.size_total:
            done, left = self.size_done, self.size_total - self.size_done
        elif self.total is not None:
            done, left = self.done - self.initial, self.total - self.done
        else:
            return None
        return elapsed * max(left, 0) / done if done > 0 else None

    def watch(self, poll: Callable[[Progress], None], seconds: float | None = None) -> None:
        """Call ``poll(self)`` every ``seconds`` (default: the line interval, at most 1 s; longer when a poll takes
        over 5% of that time) on a daemon thread until ``close``, which polls once more: progress the job's own
        code cannot report (work done by Beam workers, seen in the output folder). Nothing runs when progress is
        off (``-q``)."""
        if not self.enabled:
            return
        every = max(0.05, min(self.interval, MAX_POLL) if seconds is None else seconds)
        self._poll = poll

        def loop() -> None:
            wait = every
            while not self._stop.wait(wait):
                began = time.monotonic()
                self._safe_poll()
                self.tick()
                wait = max(every, (time.monotonic() - began) / POLL_SHARE)

        self._watcher = threading.Thread(target=loop, name=f"mmembed-progress-{self.label}", daemon=True)
        self._watcher.start()

    def _safe_poll(self) -> None:
        try:
            if self._poll is not None:
                self._poll(self)
        except Exception:  # noqa: BLE001 - progress must never stop the job it reports on
            log.debug("%s: progress poll failed", self.label, exc_info=True)

    def close(self, failed: bool = False) -> None:
        """Stop the watcher (after one last poll) and show the final state: ``done in`` or ``stopped after``."""
        if self._closed:
            return
        self._closed = self.closing = True
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._safe_poll()
        final = "stopped after" if failed else "done in"
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(self.describe(final=final), refresh=False)
                self._bar.close()
                if self._redirect is not None:
                    self._redirect.close()
            else:
                self._line(final=final)


@contextlib.contextmanager
def phase(label: str, total: int, unit: str) -> Iterator[Progress]:
    """A phase that is one long call (faiss training, a merge): shown while it runs (0 done, the time so far),
    all of ``total`` done when it returns, with its time."""
    with Progress(label, total, unit) as progress:
        progress.watch(lambda _: None)  # no counts to poll: a plain line every interval says it is still going
        yield progress
        progress.complete()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _terminal_columns(stream: Any) -> int:
    """The width the terminal of ``stream`` reports; 0 when it reports none."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0
