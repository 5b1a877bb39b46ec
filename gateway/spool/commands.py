"""`gateway spool status | dead-letters | retry | drop`: the spool file, read and changed while
the gateway runs (SQLite in WAL mode: the CLI is one more process on the file).

Sources are named by uid (read from the registry); a target by its URL without userinfo.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from gateway.registry.models import DataSource, target_label
from gateway.spool.models import DeadLetter, TargetStatus
from gateway.spool.store import SpoolStore


def status_lines(statuses: Sequence[TargetStatus], sources: Mapping[int, DataSource]) -> list[str]:
    now = time.time()
    lines = [
        f"{'SOURCE':<16} {'TARGET':<40} {'QUEUED':>8} {'BYTES':>12} {'OLDEST':>8} "
        f"{'DEAD':>6}  LEASE"
    ]
    for status in statuses:
        oldest = status.oldest_enqueued_at
        age = "-" if oldest is None else _age(now - oldest)
        lines.append(
            f"{_source(sources, status.target.source_id):<16} "
            f"{target_label(status.target.url):<40} {status.queued_entries:>8} "
            f"{status.queued_bytes:>12} {age:>8} {status.dead_letters:>6}  "
            f"{status.lease_owner or '-'}"
        )
    return lines


def dead_letter_lines(
    letters: Sequence[DeadLetter], sources: Mapping[int, DataSource]
) -> list[str]:
    now = time.time()
    lines = [f"{'ID':>8}  {'SOURCE':<16} {'TARGET':<32} {'PATH':<14} {'SIZE':>9} {'AGE':>7}  "
             "PARAMETERS / REASON"]  # fmt: skip
    for letter in letters:
        params = "&".join(f"{name}={value}" for name, value in sorted(letter.params.items()))
        lines.append(
            f"{letter.id:>8}  {_source(sources, letter.target.source_id):<16} "
            f"{target_label(letter.target.url):<32} {letter.path.value:<14} {letter.size:>9} "
            f"{_age(now - letter.enqueued_at):>7}  {params or '-'}"
        )
        lines.append(f"{'':>10}{letter.reason}")
    return lines


async def retry(store: SpoolStore, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Dead letters back into their queues: (new entry ids, ids that were not dead letters)."""
    known = {letter.id for letter in await store.dead_letters()}
    missing = [entry_id for entry_id in ids if entry_id not in known]
    new_ids = await store.retry([entry_id for entry_id in ids if entry_id in known])
    return new_ids, missing


def source_id(sources: Mapping[int, DataSource], uid: str) -> int | None:
    return next((source.id for source in sources.values() if source.uid == uid), None)


def _source(sources: Mapping[int, DataSource], source_id: int) -> str:
    source = sources.get(source_id)
    return source.uid if source is not None else f"#{source_id} (gone)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
