"""SpoolStore in one process: order, bounds, dead letters, expiry, status, leases, the file."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from gateway.spool import (
    SpoolClosed,
    SpooledWrite,
    SpoolFull,
    SpoolStore,
    TargetKey,
    WritePath,
)
from gateway.spool.schema import MIGRATIONS
from tests.spool.writes import OTHER, TARGET, numbered_write


async def queued_ids(spool: SpoolStore, target: TargetKey = TARGET) -> list[int]:
    return [entry.id for entry in await spool.peek(target, limit=10_000, max_bytes=1 << 40)]


def sized_write(size: int, target: TargetKey = TARGET) -> SpooledWrite:
    return SpooledWrite(target, WritePath.V1, {"db": "telegraf"}, b"m v=1i 1\n".ljust(size, b"#"))


class TestOrder:
    async def test_peek_returns_each_targets_writes_in_append_order(
        self, spool: SpoolStore
    ) -> None:
        ids: dict[TargetKey, list[int]] = {TARGET: [], OTHER: []}
        for number in range(12):
            target = TARGET if number % 3 else OTHER
            ids[target].append(await spool.append(numbered_write(number, target)))

        assert await queued_ids(spool, TARGET) == ids[TARGET]
        assert await queued_ids(spool, OTHER) == ids[OTHER]

    async def test_a_write_comes_back_exactly_as_appended(self, spool: SpoolStore) -> None:
        plain, gzipped = numbered_write(0), numbered_write(1)
        before = time.time()
        await spool.append(plain)
        await spool.append(gzipped)

        first, second = await spool.peek(TARGET)
        assert (first.write, second.write) == (plain, gzipped)
        assert second.write.content_encoding == "gzip"
        assert second.write.params == {
            "org": "acme",
            "bucket": "telegraf/autogen",
            "precision": "ns",
        }
        assert before <= first.enqueued_at <= second.enqueued_at <= time.time()

    async def test_peek_stops_at_limit_and_max_bytes_but_always_returns_the_head(
        self, spool: SpoolStore
    ) -> None:
        ids = [await spool.append(sized_write(1000)) for _ in range(5)]

        assert [e.id for e in await spool.peek(TARGET, limit=2)] == ids[:2]
        assert [e.id for e in await spool.peek(TARGET, max_bytes=2500)] == ids[:2]
        assert [e.id for e in await spool.peek(TARGET, max_bytes=10)] == ids[:1]
        assert await spool.peek(TargetKey(9, "http://unknown")) == []

    async def test_ack_removes_only_the_delivered_entries(self, spool: SpoolStore) -> None:
        ids = [await spool.append(numbered_write(number)) for number in range(4)]

        assert await spool.ack([ids[0], ids[1], 999_999]) == 2
        assert await queued_ids(spool) == ids[2:]

    async def test_ids_are_not_reused_after_the_newest_entries_are_acknowledged(
        self, spool: SpoolStore
    ) -> None:
        first = await spool.append(numbered_write(0))
        await spool.ack([first])
        assert await spool.append(numbered_write(1)) > first


class TestBounds:
    async def test_a_write_over_max_bytes_is_refused_and_the_queue_kept(
        self, spool: SpoolStore
    ) -> None:
        ids = [await spool.append(sized_write(400), max_bytes=1000) for _ in range(2)]

        with pytest.raises(SpoolFull) as refused:
            await spool.append(sized_write(400), max_bytes=1000)

        assert refused.value.target == TARGET
        assert await queued_ids(spool) == ids
        [status] = await spool.status()
        assert (status.queued_entries, status.queued_bytes) == (2, 800)

    async def test_a_full_target_does_not_refuse_other_targets_in_the_same_commit(
        self, spool: SpoolStore
    ) -> None:
        await spool.append(sized_write(900), max_bytes=1000)
        outcomes = await asyncio.gather(
            spool.append(sized_write(200), max_bytes=1000),
            spool.append(sized_write(200, OTHER), max_bytes=1000),
            return_exceptions=True,
        )

        assert isinstance(outcomes[0], SpoolFull)
        assert isinstance(outcomes[1], int)
        assert await queued_ids(spool, OTHER) == [outcomes[1]]

    async def test_acknowledging_makes_room_again(self, spool: SpoolStore) -> None:
        first = await spool.append(sized_write(600), max_bytes=1000)
        with pytest.raises(SpoolFull):
            await spool.append(sized_write(600), max_bytes=1000)
        await spool.ack([first])
        assert await spool.append(sized_write(600), max_bytes=1000) > first

    async def test_the_stores_default_bound_applies_when_append_names_none(
        self, spool_file: Path
    ) -> None:
        async with SpoolStore.open(spool_file, max_bytes=500) as spool:
            with pytest.raises(SpoolFull):
                await spool.append(sized_write(501))

    async def test_a_write_that_would_leave_too_little_free_disk_is_refused(
        self, spool_file: Path
    ) -> None:
        # A floor above any real disk's free space: every append meets a "full" disk.
        async with SpoolStore.open(spool_file, min_free_bytes=1 << 62) as spool:
            with pytest.raises(SpoolFull, match="disk"):
                await spool.append(numbered_write(0))
            assert all(status.queued_entries == 0 for status in await spool.status())


class TestDeadLetters:
    async def test_dead_letter_moves_an_entry_out_of_its_queue_with_the_reason(
        self, spool: SpoolStore
    ) -> None:
        ids = [await spool.append(numbered_write(number)) for number in range(3)]
        reason = 'partial write: field type conflict: input field "seq" is type float'

        assert await spool.dead_letter(ids[1], reason)
        assert not await spool.dead_letter(ids[1], reason)  # no longer queued

        assert await queued_ids(spool) == [ids[0], ids[2]]
        [dead] = await spool.dead_letters()
        assert (dead.id, dead.target, dead.reason) == (ids[1], TARGET, reason)
        assert dead.path is WritePath.V2
        assert dead.size == numbered_write(1).size
        assert dead.enqueued_at <= dead.dead_at <= time.time()

    async def test_dead_letters_are_listed_per_source(self, spool: SpoolStore) -> None:
        mine = await spool.append(numbered_write(0, TARGET))
        theirs = await spool.append(numbered_write(1, OTHER))
        await spool.dead_letter(mine, "404 database not found")
        await spool.dead_letter(theirs, "401 unauthorized")

        assert [d.id for d in await spool.dead_letters(TARGET.source_id)] == [mine]
        assert [d.id for d in await spool.dead_letters(OTHER.source_id)] == [theirs]
        assert [d.id for d in await spool.dead_letters()] == [mine, theirs]

    async def test_retry_puts_a_dead_letter_at_the_end_of_its_queue(
        self, spool: SpoolStore
    ) -> None:
        ids = [await spool.append(numbered_write(number)) for number in range(3)]
        await spool.dead_letter(ids[0], "400 bad")

        [new_id] = await spool.retry([ids[0]])

        assert await queued_ids(spool) == [ids[1], ids[2], new_id]
        assert (await spool.peek(TARGET, limit=3))[-1].write == numbered_write(0)
        assert await spool.dead_letters() == []
        assert await spool.retry([ids[0]]) == []  # already retried

    async def test_drop_deletes_dead_letters_for_good(self, spool: SpoolStore) -> None:
        ids = [await spool.append(numbered_write(number)) for number in range(2)]
        for entry_id in ids:
            await spool.dead_letter(entry_id, "400 bad")

        assert await spool.drop([ids[0], 999_999]) == 1
        assert [d.id for d in await spool.dead_letters()] == [ids[1]]


class TestExpire:
    async def test_entries_older_than_max_age_become_expired_dead_letters(
        self, spool: SpoolStore
    ) -> None:
        old = await spool.append(numbered_write(0))
        between = time.time()
        young = await spool.append(numbered_write(1))

        moved = await spool.expire(max_age=10.0, now=between + 10.0)

        assert moved == 1
        assert await queued_ids(spool) == [young]
        [dead] = await spool.dead_letters()
        assert (dead.id, dead.reason) == (old, "expired")

    async def test_expire_for_one_target_leaves_the_others(self, spool: SpoolStore) -> None:
        await spool.append(numbered_write(0, TARGET))
        other = await spool.append(numbered_write(1, OTHER))
        later = time.time() + 3600

        assert await spool.expire(max_age=60, now=later, target=TARGET) == 1
        assert await queued_ids(spool, OTHER) == [other]
        assert await spool.expire(max_age=60, now=later, target=TargetKey(7, "x")) == 0

    async def test_a_retried_expired_entry_does_not_expire_again_at_once(
        self, spool: SpoolStore
    ) -> None:
        entry_id = await spool.append(numbered_write(0))
        await spool.expire(max_age=0, now=time.time() + 1)
        [new_id] = await spool.retry([entry_id])

        assert await spool.expire(max_age=60) == 0
        assert await queued_ids(spool) == [new_id]


class TestStatus:
    async def test_status_reports_counts_oldest_entry_dead_letters_and_lease(
        self, spool: SpoolStore
    ) -> None:
        first = await spool.append(sized_write(100))
        await spool.append(sized_write(250))
        dead = await spool.append(sized_write(50))
        await spool.dead_letter(dead, "400 bad")
        await spool.claim(TARGET, "worker-1", lease_seconds=60)
        [entry, _] = await spool.peek(TARGET)

        [status] = await spool.status()

        assert status.target == TARGET
        assert (status.queued_entries, status.queued_bytes) == (2, 350)
        assert status.oldest_enqueued_at == entry.enqueued_at
        assert entry.id == first
        assert (status.dead_letters, status.lease_owner) == (1, "worker-1")

    async def test_counts_match_the_queue_after_every_kind_of_change(
        self, spool: SpoolStore, spool_file: Path
    ) -> None:
        ids = [await spool.append(numbered_write(n, (TARGET, OTHER)[n % 2])) for n in range(10)]
        await spool.ack(ids[:2])
        await spool.dead_letter(ids[2], "400")
        await spool.retry([ids[2]])
        await spool.dead_letter(ids[3], "400")
        await spool.drop([ids[3]])
        await spool.expire(max_age=0, now=time.time() + 1, target=OTHER)

        with sqlite3.connect(spool_file) as raw:
            actual = dict(
                raw.execute(
                    "SELECT t.url, count(e.id) || '/' || coalesce(sum(e.size), 0) FROM target t "
                    "LEFT JOIN entry e ON e.target_id = t.id GROUP BY t.id"
                ).fetchall()
            )
        kept = {s.target.url: f"{s.queued_entries}/{s.queued_bytes}" for s in await spool.status()}
        assert kept == actual

    async def test_targets_with_backlog_lists_only_targets_with_queued_entries(
        self, spool: SpoolStore
    ) -> None:
        entry_id = await spool.append(numbered_write(0, TARGET))
        await spool.append(numbered_write(1, OTHER))
        await spool.ack([entry_id])

        assert await spool.targets_with_backlog() == [OTHER]


class TestLeases:
    async def test_one_owner_at_a_time_until_released(self, spool: SpoolStore) -> None:
        assert await spool.claim(TARGET, "worker-1", lease_seconds=60)
        assert await spool.claim(TARGET, "worker-1", lease_seconds=60)  # renewal
        assert not await spool.claim(TARGET, "worker-2", lease_seconds=60)
        assert not await spool.release(TARGET, "worker-2")

        assert await spool.release(TARGET, "worker-1")
        assert await spool.claim(TARGET, "worker-2", lease_seconds=60)

    async def test_an_expired_lease_is_taken_over(self, spool: SpoolStore) -> None:
        # A zero-second lease has expired by the next claim: no waiting for the clock.
        assert await spool.claim(TARGET, "worker-1", lease_seconds=0)
        assert await spool.claim(TARGET, "worker-2", lease_seconds=60)
        assert not await spool.claim(TARGET, "worker-1", lease_seconds=60)

    async def test_leases_are_per_target(self, spool: SpoolStore) -> None:
        assert await spool.claim(TARGET, "worker-1", lease_seconds=60)
        assert await spool.claim(OTHER, "worker-2", lease_seconds=60)


class TestFile:
    async def test_the_spool_is_its_own_wal_file_in_the_data_directory(
        self, spool: SpoolStore, spool_file: Path
    ) -> None:
        await spool.append(numbered_write(0))

        assert spool_file.name == "spool.sqlite3"
        with sqlite3.connect(spool_file) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)

    async def test_the_spool_files_are_private_as_the_rest_of_the_data_directory(
        self, spool: SpoolStore, spool_file: Path
    ) -> None:
        await spool.append(numbered_write(0))

        files = sorted(spool_file.parent.glob("spool.*"))
        assert {file.name for file in files} >= {
            "spool.sqlite3",
            "spool.sqlite3-wal",
            "spool.sqlite3-shm",
        }
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name

    async def test_a_spool_file_made_readable_by_others_is_narrowed_on_open(
        self, spool_file: Path
    ) -> None:
        spool_file.parent.mkdir()
        sqlite3.connect(spool_file).close()
        spool_file.chmod(0o644)
        async with SpoolStore.open(spool_file):
            assert stat.S_IMODE(spool_file.stat().st_mode) == 0o600

    async def test_entries_survive_closing_and_reopening(self, spool_file: Path) -> None:
        async with SpoolStore.open(spool_file) as spool:
            entry_id = await spool.append(numbered_write(3))
        async with SpoolStore.open(spool_file) as spool:
            [entry] = await spool.peek(TARGET)
        assert (entry.id, entry.write) == (entry_id, numbered_write(3))

    async def test_a_closed_store_refuses_work(self, spool_file: Path) -> None:
        async with SpoolStore.open(spool_file) as spool:
            pass
        with pytest.raises(SpoolClosed):
            await spool.append(numbered_write(0))

    async def test_appends_queued_when_the_block_ends_are_still_committed(
        self, spool_file: Path
    ) -> None:
        async with SpoolStore.open(spool_file) as spool:
            pending = [asyncio.ensure_future(spool.append(numbered_write(n))) for n in range(5)]
            await asyncio.sleep(0)  # let them reach the committer's queue
        ids = [await task for task in pending]
        async with SpoolStore.open(spool_file) as spool:
            assert await queued_ids(spool) == sorted(ids)
