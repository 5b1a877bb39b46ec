"""How the gateway tunes CPython's cyclic garbage collector, and glibc's allocator, once it is
serving.

Measured on the proxied path (bench/README.md, "The garbage collector"): with CPython's default
thresholds (700, 10, 10) a 10 s wrk run of 49,000 requests triggered 825 young collections and
5 full ones, 250 ms in all and up to 47 ms at a time — every request in flight waited out each
full collection, which is what a p99 sees. Almost everything the gateway allocates per request
is freed by reference counting, so young collections find next to nothing; and a full one walks
every object made at start-up (imports, settings, caches) although none of them ever becomes
garbage.

So, once start-up is over: everything alive is moved to the permanent generation (`gc.freeze`,
the technique CPython documents for long-running servers) so full collections no longer walk
it, and the young generation's threshold is raised so that a collection runs only after tens of
thousands of surviving allocations. Cycles are still collected; only rarely and in short walks.

The allocator (bench/README.md, session 9, "The heap's top"): every read of a streamed body is
a new bytes object of up to 256 KiB, freed once written on. With glibc's dynamic thresholds,
once a load of small requests has left the heap's top free, each such block was carved from the
top, freed, and given back to the kernel (`brk`) — then the next read grew the heap again and
faulted its pages in anew: one `brk` and ~40 page faults a read, 2.4 x the CPU per downloaded
GiB. So blocks below 1 MiB come from the heap, and up to 8 MiB free at its top stays mapped
(`mallopt(3)`). An operator's own settings win: `MALLOC_TRIM_THRESHOLD_`,
`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TOP_PAD_`, `MALLOC_MMAP_MAX_`, or `glibc.malloc.*` in
`GLIBC_TUNABLES` leave glibc as they set it.
"""

from __future__ import annotations

import ctypes
import gc
import os

# Net container allocations before a young collection (CPython's default is 700).
YOUNG_THRESHOLD = 50_000

# glibc's mallopt(3) parameters, and the values the gateway sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024  # larger blocks are mapped apart (and unmapped when freed)
TRIM_THRESHOLD = 8 * 1024 * 1024  # free space at the heap's top kept before giving it back
_OPERATOR_SETTINGS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)


def settle_heap() -> bool:
    """Collect start-up garbage, freeze what is left, and raise the young threshold; fix
    glibc's allocator thresholds. Returns whether it did the latter (`tune_allocator`)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return tune_allocator()


def tune_allocator() -> bool:
    """Fixed thresholds for glibc's malloc (see the module's docstring); False where the C
    library is not glibc, the operator tuned the allocator, or glibc refused a value."""
    if any(name in os.environ for name in _OPERATOR_SETTINGS) or "glibc.malloc." in (
        os.environ.get("GLIBC_TUNABLES", "")
    ):
        return False
    if not on_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no such symbol after all
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Setting either turns glibc's dynamic thresholds off: both are set, whatever the first
    # answered (a 32-bit glibc caps the mmap threshold at 512 KiB, and says 0 to 1 MiB).
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set) and bool(trim_set)


def on_glibc() -> bool:
    """Whether this process's C library is glibc (musl raises EINVAL for the name; a Python
    without it, ValueError; one without `os.confstr`, AttributeError)."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False
