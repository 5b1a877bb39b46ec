"""How the gateway tunes CPython's cyclic garbage collector once it is serving.

Measured on the proxied path (bench/README.md, "Garbage collector"): with CPython's default
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
"""

from __future__ import annotations

import gc

# Net container allocations before a young collection (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Collect start-up garbage, freeze what is left, and raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
