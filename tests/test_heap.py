"""The collector tuning `gateway serve` applies once it listens (gateway/heap.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gateway.heap import YOUNG_THRESHOLD, settle_heap


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


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


# Runs in a fresh interpreter: what glibc does with a large block, before and after tuning.
# Prints what tune_allocator() returned ("-": not called), whether a 512 KiB block was mapped
# apart (mmap) rather than carved from the heap, and whether freeing 480 KiB at the heap's top
# gave memory back to the kernel.
_ALLOCATOR_PROBE = """
import ctypes, sys
from gateway.heap import settle_heap, tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
tuned = "-"
if sys.argv[1] == "tune":
    tuned = tune_allocator()
elif sys.argv[1] == "settle":  # what `gateway serve` calls once it listens
    settle_heap()

# First: freeing a mapped block makes glibc's dynamic thresholds move.
blocks = [libc.malloc(120 * 1024) for _ in range(4)]  # each below glibc's 128 KiB threshold
for block in blocks:
    libc.memset(block, 1, 120 * 1024)
heap_before = libc.mallinfo2().arena
for block in reversed(blocks):
    libc.free(block)
trimmed = libc.mallinfo2().arena < heap_before

mapped_before = libc.mallinfo2().hblks
big = libc.malloc(512 * 1024)
mapped_apart = libc.mallinfo2().hblks > mapped_before
libc.free(big)
print(tuned, mapped_apart, trimmed)
"""


def _probe_allocator(mode: str, **environ: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(environ)
    done = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_PROBE, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.skipif(not _glibc(), reason="the allocator tuning is glibc's mallopt(3)")
def test_tuned_allocator_keeps_large_blocks_in_the_heap_and_its_top_mapped() -> None:
    # glibc's defaults: the probe tells the two behaviours apart.
    assert _probe_allocator("default") == ["-", "True", "True"]

    assert _probe_allocator("tune") == ["True", "False", "False"]
    assert _probe_allocator("settle") == ["-", "False", "False"]


@pytest.mark.skipif(not _glibc(), reason="the allocator tuning is glibc's mallopt(3)")
def test_the_operators_allocator_settings_win() -> None:
    assert _probe_allocator("tune", MALLOC_TRIM_THRESHOLD_="131072") == ["False", "True", "True"]
    assert _probe_allocator("settle", MALLOC_MMAP_THRESHOLD_="131072") == ["-", "True", "True"]
