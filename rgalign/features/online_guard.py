"""Online feature reads that degrade instead of failing the request.

``OnlineGuard.read`` wraps ``FeatureStoreSession.online_rows`` with a deadline, reconnects after an error and
notices a replaced or missing SQLite file, so a broken store costs a flagged popularity answer, not a 500:

    >>> guard = OnlineGuard(FeatureStoreSession(world), deadline_s=0.5)      # doctest: +SKIP
    >>> rows, reason = guard.read([17, 42])                                   # doctest: +SKIP
    >>> reason                         # None, or e.g. "feature store error: OperationalError: no such table..."

``ready`` turns false once reads have failed for ``unready_after_s`` without a success in between (the
serving layer's readiness probe), and true again after the next good read; ``probe`` makes that read when no
traffic would (a pod out of rotation gets none). Failures are logged one line per ``log_window_s``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

log = logging.getLogger("rgalign.online")


def describe(e: Exception) -> str:
    """``Type: first line of the message`` (at most 160 characters): a reason short enough for an answer."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


class LogWindow:
    """At most one log line per ``window_s`` seconds, with how many events the window held."""

    def __init__(self, window_s: float = 60.0, clock=time.monotonic):
        self.window_s, self.clock, self.at, self.unlogged = window_s, clock, None, 0

    def warn(self, message: str) -> None:
        now = self.clock()
        self.unlogged += 1
        if self.at is None or now - self.at >= self.window_s:
            log.warning("%s; %d request(s) served the popularity list since the last line", message, self.unlogged)
            self.at, self.unlogged = now, 0

    def reset(self) -> None:
        self.at, self.unlogged = None, 0


class OnlineGuard:
    """A deadline, reconnects and a health state around one store's online reads.

    Args:
        store: a ``FeatureStoreSession`` (anything with ``online_rows``, ``reset_online`` and ``online_file``).
        deadline_s: a read slower than this is abandoned (the request falls back; the read may finish later).
        unready_after_s: ``ready`` is false once reads have failed this long with no success in between.
        log_window_s: at most one log line per window while reads fail (with the count of fallbacks).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, store, deadline_s: float = 0.5, unready_after_s: float = 5.0, log_window_s: float = 60.0,
                 clock=time.monotonic):
        if deadline_s <= 0 or unready_after_s < 0 or log_window_s < 0:
            raise ValueError(f"deadline_s must be > 0 and unready_after_s, log_window_s >= 0; got {deadline_s}, "
                             f"{unready_after_s}, {log_window_s}")
        self.store, self.deadline_s, self.unready_after_s = store, deadline_s, unready_after_s
        self.clock = clock
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.failures: Counter = Counter()       # reason kind -> reads that fell back
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-store")
        self._pending: Future | None = None
        self._lock = threading.Lock()
        self._log = LogWindow(log_window_s, clock)
        self._file = store.online_file()
        self._stamp = self._file_stamp()

    # ------------------------------------------------------------------ reads
    def read(self, user_ids: list[int], request_ts=None, requests: list[dict] | None = None,
             blocking: bool = True) -> tuple[list[dict] | None, str | None]:
        """``(rows, None)``, or ``(None, reason)`` when the store could not answer in time. ``blocking=False``
        gives up at once when another thread is reading (the probe must not queue behind a request)."""
        if not self._lock.acquire(blocking=blocking):
            return None, "busy"
        try:
            return self._read(user_ids, request_ts, requests)
        finally:
            self._lock.release()

    def _read(self, user_ids, request_ts, requests):
        if self._pending is not None and not self._pending.done():
            return None, self._fail("slow", f"feature store slow: an earlier read is still running past the "
                                            f"{self.deadline_s:g} s deadline")
        self._pending = None
        moved = self._file_changed()
        if moved:
            return None, self._fail("missing", moved)
        fut = self._pool.submit(self._online_rows, user_ids, request_ts, requests)
        try:
            rows = fut.result(timeout=self.deadline_s)
        except FutureTimeout:
            self._pending = fut
            return None, self._fail("slow", f"feature store slow: no answer within {self.deadline_s:g} s")
        except Exception as e:  # noqa: BLE001 (any store error degrades to the fallback)
            return None, self._fail("error", f"feature store error: {describe(e)}")
        self._recovered()
        return rows, None

    def _online_rows(self, user_ids, request_ts, requests):
        try:
            return self.store.online_rows(user_ids, request_ts, requests)
        except Exception:
            self.store.reset_online()      # the next read opens a fresh connection (a restored file is seen)
            raise

    # ------------------------------------------------------------------ the SQLite file
    def _file_stamp(self):
        if self._file is None:
            return None
        try:
            st = os.stat(self._file)
        except FileNotFoundError:
            return "missing"
        return st.st_dev, st.st_ino

    def _file_changed(self) -> str | None:
        """A reason when the online store's file is gone; reconnects when it was replaced (a connection keeps
        reading the old, unlinked file otherwise)."""
        stamp = self._file_stamp()
        if stamp == "missing":
            self._stamp = stamp
            return f"feature store missing: {self._file} does not exist"
        if stamp != self._stamp:
            self.store.reset_online()
            self._stamp = stamp
        return None

    # ------------------------------------------------------------------ health
    @property
    def ready(self) -> bool:
        return self.failing_since is None or self.clock() - self.failing_since < self.unready_after_s

    def probe(self) -> bool:
        """One read of an unknown user when reads are failing (so a store that came back is noticed without
        traffic); ``ready`` afterwards."""
        if self.failing_since is not None:
            self.read([0], blocking=False)
        return self.ready

    def _fail(self, kind: str, reason: str) -> str:
        now = self.clock()
        self.failures[kind] += 1
        self.last_error = reason
        if self.failing_since is None:
            self.failing_since = now
        self._log.warn(reason)
        return reason

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.warning("feature store recovered after %.1f s", self.clock() - self.failing_since)
            self.failing_since = None
            self._log.reset()
