"""The collector and allocator tuning `gateway serve` applies once it listens
(gateway/heap.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import heap
from gateway.heap import YOUNG_THRESHOLD, on_glibc, settle_heap, tune_allocator
from tests.process import GatewayProcess

REPOSITORY = Path(__file__).resolve().parents[1]

needs_glibc = pytest.mark.skipif(not on_glibc(), reason="the allocator tuning is glibc's mallopt")


@pytest.fixture
def restored_collector() -> Iterator[None]:
    """This test process's collector as it was, afterwards."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_settle_heap_freezes_what_lives_and_raises_the_young_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # glibc's thresholds cannot be put back: this process keeps its own (the probe below runs
    # the real thing in a process of its own).
    monkeypatch.setattr(heap, "tune_allocator", lambda: True)
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    kept = [object() for _ in range(10)]  # alive at the call: frozen with the rest

    assert settle_heap() is True

    assert gc.get_freeze_count() > len(kept)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    # A full collection no longer walks the frozen objects, and cycles are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


# Runs in a fresh interpreter without site (`-I -S`: nothing allocated at start-up moves glibc's
# dynamic thresholds first). Prints what the tuning returned ("-": not called), whether a
# 512 KiB block was mapped apart (mmap) rather than carved from the heap, and whether freeing
# ~1 MiB at the heap's top gave memory back to the kernel.
_ALLOCATOR_PROBE = """
import ctypes, sys
sys.path.insert(0, sys.argv[2])
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
returned = "-"
if sys.argv[1] == "tune":
    returned = tune_allocator()
elif sys.argv[1] == "settle":  # what `gateway serve` calls once it listens
    returned = settle_heap()

blocks = [libc.malloc(120 * 1024) for _ in range(4)]  # each below glibc's 128 KiB threshold
for block in blocks:
    libc.memset(block, 1, 120 * 1024)
mapped_before = libc.mallinfo2().hblks
big = libc.malloc(512 * 1024)
libc.memset(big, 1, 512 * 1024)
mapped_apart = libc.mallinfo2().hblks > mapped_before
heap_before = libc.mallinfo2().arena
for block in reversed(blocks):
    libc.free(block)
libc.free(big)  # last: freeing a mapped block would move glibc's dynamic thresholds
trimmed = libc.mallinfo2().arena < heap_before
print(returned, mapped_apart, trimmed)
"""


def _probe_allocator(mode: str, **environ: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.update(environ)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _ALLOCATOR_PROBE, mode, str(REPOSITORY)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


@needs_glibc
def test_tuned_allocator_keeps_large_blocks_in_the_heap_and_its_top_mapped() -> None:
    # glibc's defaults: the probe tells the two behaviours apart.
    assert _probe_allocator("default") == ["-", "True", "True"]

    assert _probe_allocator("tune") == ["True", "False", "False"]
    assert _probe_allocator("settle") == ["True", "False", "False"]


@needs_glibc
@pytest.mark.parametrize(
    "setting",
    [
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TOP_PAD_": "131072"},
        {"MALLOC_MMAP_MAX_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
)
def test_the_operators_allocator_settings_win(setting: dict[str, str]) -> None:
    assert _probe_allocator("tune", **setting)[0] == "False"
    # glibc as the operator set it: the same thresholds here (128 KiB) as its defaults.
    assert _probe_allocator("settle", **setting) == ["False", "True", "True"]


@pytest.mark.parametrize("answer", [None, OSError(22, "Invalid argument"), ValueError("name")])
def test_another_c_library_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, answer: str | Exception | None
) -> None:
    """musl raises EINVAL for glibc's confstr name; a Python without the name, ValueError."""

    def confstr(name: str) -> str | None:
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(os, "confstr", confstr)

    assert tune_allocator() is False


@needs_glibc
@pytest.mark.parametrize(("environ", "tuned"), [({}, True), ({"MALLOC_TOP_PAD_": "0"}, False)])
def test_the_listening_line_says_whether_the_allocator_was_tuned(
    tmp_path: Path, environ: dict[str, str], tuned: bool
) -> None:
    gateway = GatewayProcess(tmp_path / "data", environ)
    try:
        assert gateway.wait_for("gateway_listening")["allocator_tuned"] is tuned
    finally:
        gateway.stop()
