"""The collector tuning `gateway serve` applies once it listens (gateway/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    """This test process's collector as it was, afterwards."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_settle_heap_freezes_what_lives_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    kept = [object() for _ in range(10)]  # alive at the call: frozen with the rest

    settle_heap()

    assert gc.get_freeze_count() > len(kept)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    # A full collection no longer walks the frozen objects, and cycles are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
