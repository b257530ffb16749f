"""The DALI feed reads ahead of the consumer: its reads start before DALI asks for a batch, in plan order.

The Feed alone needs no DALI (events, no clocks: a read is seen to start before the call that needs it);
the loader test slows every read by a known sleep and counts the reads that ran while the consumer
was busy with a batch: a feed that reads on the consumer's thread can never overlap its work.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from engine_fixtures import deadline
from loader_fixtures import loader_cfg, write_prepared

from cityseg_fast.data import dali
from cityseg_fast.data.dali.inputs import Feed, HostInputs
from cityseg_fast.data.factory import build_loader
from cityseg_fast.errors import UserError

WAIT_S = 30.0  # only for a broken feed: a working one signals at once


class Reads:
    """A read that records which batches it was asked for and waits, per batch, for a release."""

    def __init__(self, fail: int | None = None) -> None:
        self.started: dict[int, threading.Event] = {}
        self.release: dict[int, threading.Event] = {}
        self.fail = fail
        self.lock = threading.Lock()

    def _events(self, k: int) -> tuple[threading.Event, threading.Event]:
        with self.lock:
            return self.started.setdefault(k, threading.Event()), self.release.setdefault(k, threading.Event())

    def __call__(self, items: list) -> tuple:
        started, release = self._events(items[0])
        started.set()
        assert release.wait(WAIT_S)
        if items[0] == self.fail:
            raise UserError(f"batch {items[0]}: cannot read")
        return (items[0],)

    def began(self, k: int) -> bool:
        return self._events(k)[0].wait(WAIT_S)

    def let_go(self, *ks: int) -> None:
        for k in ks:
            self._events(k)[1].set()


def test_the_feed_reads_ahead_before_it_is_asked():
    reads = Reads()
    feed = Feed(reads, ahead=2)
    try:
        feed.start([[0], [1], [2], [3]])
        assert reads.began(0) and reads.began(1), "the first batches are read as the epoch starts"
        assert not reads.started.get(2, threading.Event()).is_set(), "no more than `ahead` at a time"
        reads.let_go(0)
        assert feed() == (0,)
        assert reads.began(2), "taking a batch starts reading the one `ahead` after it, before it is asked"
        reads.let_go(1, 2, 3)
        assert [feed(), feed(), feed()] == [(1,), (2,), (3,)]
        with pytest.raises(StopIteration):
            feed()
        assert list(feed.fed) == [[0], [1], [2], [3]], "what was fed, oldest first, for a decode error"
    finally:
        reads.let_go(0, 1, 2, 3)
        feed.close()


def test_a_failed_read_raises_at_its_own_batch():
    """Reading ahead must not move an error earlier: batch 1 fails when DALI asks for batch 1."""
    reads = Reads(fail=1)
    feed = Feed(reads, ahead=3)
    try:
        feed.start([[0], [1], [2]])
        reads.let_go(0, 1, 2)
        assert feed() == (0,)
        with pytest.raises(UserError, match="batch 1"):
            feed()
        assert list(feed.fed) == [[0], [1]]
    finally:
        feed.close()


def test_stop_ends_the_epoch_and_the_next_start_begins_a_new_one():
    reads = Reads()
    feed = Feed(reads, ahead=2)
    try:
        feed.start([[0], [1], [2]])
        reads.let_go(0, 1, 2)
        assert feed() == (0,)
        feed.stop()  # the consumer abandoned the epoch: DALI's next call ends it
        with pytest.raises(StopIteration):
            feed()
        reads.let_go(10, 11)
        feed.start([[10], [11]])
        assert feed.fed == type(feed.fed)(), "a new epoch has nothing in flight"
        assert [feed(), feed()] == [(10,), (11,)]
    finally:
        feed.close()


def test_close_ends_the_reader_threads():
    reads = Reads()
    feed = Feed(reads, ahead=2)
    before = set(threading.enumerate())
    feed.start([[0], [1]])
    assert reads.began(0) and reads.began(1)
    readers = set(threading.enumerate()) - before
    assert readers, "the reads ran on threads of the feed's own"
    reads.let_go(0, 1)
    feed.close()
    for t in readers:
        t.join(WAIT_S)
        assert not t.is_alive(), f"{t.name} outlived close()"
    with pytest.raises(StopIteration):
        feed()


@pytest.mark.skipif(not dali.dali_available(), reason="nvidia.dali not installed")
def test_the_loader_reads_while_the_consumer_works(tmp_path, monkeypatch):
    """Every read is slowed by SLOW_S and the consumer spends SLOW_S on each batch. A serial feed reads
    only inside next(), never while the consumer works (0 overlaps); a feed that runs ahead reads the
    next batches meanwhile. Counting overlapping intervals, not comparing times, so load cannot flake it."""
    slow_s = 0.05
    root = write_prepared(tmp_path, {"train": 16})
    reading: list[tuple[float, float]] = []
    images = HostInputs.images

    def slow_images(self, items):
        t0 = time.monotonic()
        time.sleep(slow_s)
        out = images(self, items)
        reading.append((t0, time.monotonic()))
        return out

    monkeypatch.setattr(HostInputs, "images", slow_images)
    loader = build_loader(loader_cfg(root, "dali"), "train", device=torch.device("cpu"))
    working: list[tuple[float, float]] = []
    try:
        with deadline(120):
            for epoch in range(2):
                loader.set_epoch(epoch)
                for _ in loader:
                    t0 = time.monotonic()
                    time.sleep(slow_s)  # the model's step
                    working.append((t0, time.monotonic()))
    finally:
        loader.close()
    overlapping = sum(any(r0 < w1 and w0 < r1 for w0, w1 in working) for r0, r1 in reading)
    assert len(working) == 2 * len(loader) == 16
    assert overlapping >= len(reading) // 2, f"only {overlapping} of {len(reading)} reads overlapped the consumer"
