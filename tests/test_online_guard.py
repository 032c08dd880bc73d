"""``OnlineGuard``: a failing, slow, missing or replaced online store degrades a read to ``(None, reason)``,
readiness follows the set time, and the guard recovers by itself (fake store and clock: no Feast here; the real
server under load is in tests/test_serving.py)."""
import logging
import os
import threading

import pytest

from rgalign.features.online_guard import OnlineGuard


class FakeStore:
    def __init__(self, path):
        self.path, self.resets, self.fail, self.block = path, 0, None, None

    def online_file(self):
        return self.path

    def reset_online(self):
        self.resets += 1

    def online_rows(self, user_ids, request_ts=None, requests=None):
        if self.block is not None:
            self.block.wait(5)
        if self.fail:
            raise self.fail
        return [{"user_id": u} for u in user_ids]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def store(tmp_path):
    (tmp_path / "online.db").write_bytes(b"x")
    return FakeStore(tmp_path / "online.db")


def test_an_error_falls_back_with_its_reason_reconnects_and_readiness_follows_the_set_time(store):
    clock = Clock()
    g = OnlineGuard(store, deadline_s=1.0, unready_after_s=5.0, clock=clock)
    assert g.read([1]) == ([{"user_id": 1}], None) and g.ready
    store.fail = RuntimeError("no such table: rgalign_user_profile\ntraceback line")
    rows, reason = g.read([1])
    assert rows is None and reason == "feature store error: RuntimeError: no such table: rgalign_user_profile"
    assert store.resets == 1                  # the next read opens a fresh connection
    clock.t = 4.9
    assert g.read([1])[0] is None and g.ready          # failing, but not yet for unready_after_s
    clock.t = 5.1
    assert not g.ready and not g.probe()               # the probe read fails too
    store.fail = None
    assert g.probe() and g.failing_since is None       # a probe read notices the recovery without traffic
    assert g.read([2]) == ([{"user_id": 2}], None)
    assert g.failures["error"] == 3


def test_a_slow_read_is_abandoned_at_the_deadline_and_later_reads_do_not_queue_behind_it(store):
    store.block = threading.Event()
    g = OnlineGuard(store, deadline_s=0.05)
    rows, reason = g.read([1])
    assert rows is None and reason.startswith("feature store slow: no answer within 0.05 s")
    rows, reason = g.read([1])             # the first read still holds the store: no second one behind it
    assert rows is None and "still running" in reason
    store.block.set()
    store.block = None
    g._pending.result(timeout=5)
    assert g.read([1]) == ([{"user_id": 1}], None)


def test_a_missing_file_falls_back_without_creating_one_and_a_replaced_file_reconnects(store):
    g = OnlineGuard(store)
    os.rename(store.path, store.path.with_suffix(".moved"))
    rows, reason = g.read([1])
    assert rows is None and reason == f"feature store missing: {store.path} does not exist"
    assert not store.path.exists()
    store.path.with_suffix(".moved").rename(store.path)
    assert g.read([1])[0] is not None and store.resets == 1
    # a rebuilt store moved into place (a new inode): the old connection would keep reading the old file
    new = store.path.with_suffix(".new")
    new.write_bytes(b"y")
    new.replace(store.path)
    assert g.read([1])[0] is not None and store.resets == 2


def test_failures_are_logged_one_line_per_window(store, caplog):
    clock = Clock()
    g = OnlineGuard(store, log_window_s=60, clock=clock)
    store.fail = RuntimeError("locked")
    with caplog.at_level(logging.WARNING, "rgalign.online"):
        for i in range(50):
            clock.t = i
            g.read([1])
        clock.t = 61
        g.read([1])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "50 request(s)" in lines[1]


def test_bad_settings_are_refused(store):
    with pytest.raises(ValueError, match="deadline_s"):
        OnlineGuard(store, deadline_s=0)
