"""What only the PostgreSQL backend does: migrations under a lock when gateways start together,
the key check, the dialect (the reserved `user` column), and change fan-out: NOTIFY from one
gateway's registry heard by another's change watch, which reconnects after losing its
connection and then signals a full refresh. The registry contract itself is in test_store.py.

Each test gets a fresh database on the session's PostgreSQL (tests/services/postgres.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from gateway.bootstrap import open_registry
from gateway.config import Settings
from gateway.errors import RegistryUnavailable, StartupError
from gateway.registry.cache import SourceCache
from gateway.registry.interface import StoreUnusable
from gateway.registry.models import Role
from gateway.registry.postgres import PostgresBackend, PostgresRegistry
from gateway.registry.postgres.backend import WATCH_APPLICATION_NAME
from gateway.registry.postgres.failures import describe_database_error
from gateway.registry.postgres.migrations import MIGRATIONS
from gateway.registry.secrets import SecretBox, SecretKeyMismatch
from gateway.registry.sqlite.migrations import MIGRATIONS as SQLITE_MIGRATIONS
from gateway.security.auth import PrincipalCache, hash_token
from tests.registry.sources import spec
from tests.services.influxdb import closed_port_url
from tests.services.postgres import PostgresServer

SECRET = "hunter2-d8c1f0e7-unique-marker"
FAN_OUT_SECONDS = 1.0  # issue 20: a change on one gateway is seen by every other within 1 s


def backend_at(url: str) -> PostgresBackend:
    return PostgresBackend(url, keepalive_seconds=0.5, retry_seconds=0.05)


@pytest.fixture
def backend(postgres_url: str) -> PostgresBackend:
    return backend_at(postgres_url)


@pytest.fixture
async def raw(postgres_url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A plain connection to the test's database, to look underneath the registry."""
    conn = await asyncpg.connect(postgres_url)
    try:
        yield conn
    finally:
        await conn.close()


async def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:g} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


class TestMigrations:
    def test_both_dialects_have_the_same_migrations(self) -> None:
        """Schema version N means the same schema whichever backend holds it."""
        assert len(MIGRATIONS) == len(SQLITE_MIGRATIONS)

    async def test_gateways_starting_together_migrate_once(
        self, backend: PostgresBackend, raw: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        async def start() -> tuple[int, int]:
            async with backend.open(SecretBox("k")) as registry:
                return await registry.schema_version(), len(await registry.list_orgs())

        outcomes = await asyncio.gather(*(start() for _ in range(4)))
        assert outcomes == [(len(MIGRATIONS), 1)] * 4
        applied = await raw.fetch("SELECT version FROM schema_migration ORDER BY version")
        assert [row["version"] for row in applied] == list(range(1, len(MIGRATIONS) + 1))
        assert await raw.fetchval("SELECT count(*) FROM meta") == 1

    async def test_a_newer_schema_is_refused(
        self, backend: PostgresBackend, raw: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        async with backend.open(SecretBox("k")):
            pass
        await raw.execute("INSERT INTO schema_migration (version) VALUES ($1)", len(MIGRATIONS) + 1)
        with pytest.raises(StoreUnusable, match="newer than this gateway knows"):
            async with backend.open(SecretBox("k")):
                pass

    async def test_org_ids_continue_after_the_default_org(self, backend: PostgresBackend) -> None:
        async with backend.open(SecretBox("k")) as registry:
            assert (await registry.create_org("Second")).id == 2
        async with backend.open(SecretBox("k")) as registry:  # seeding again moves nothing back
            assert (await registry.create_org("Third")).id == 3


class TestKeyCheck:
    async def test_a_wrong_key_is_refused_before_anything_changes(
        self, backend: PostgresBackend, raw: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        async with backend.open(SecretBox("right")) as registry:
            await registry.create_source(1, spec(secure_json_data={"password": SECRET}))
        state = (
            "SELECT key, value FROM meta "
            "UNION ALL SELECT 'v', max(version)::text FROM schema_migration"
        )
        before = await raw.fetch(state)
        with pytest.raises(SecretKeyMismatch):
            async with backend.open(SecretBox("wrong")):
                pass
        assert await raw.fetch(state) == before

    async def test_start_up_names_the_database_and_the_key(
        self, postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
    ) -> None:
        """Every gateway of a cluster needs the same GATEWAY_SECRET_KEY; one with another key
        stops with one clear line."""
        first = Settings(data_dir=tmp_path / "a", database_url=postgres_url, secret_key="one")
        async with open_registry(first):
            pass
        second = dataclasses.replace(first, data_dir=tmp_path / "b", secret_key="two")
        with pytest.raises(StartupError) as refused:
            async with open_registry(second):
                pass
        message = str(refused.value)
        assert "GATEWAY_SECRET_KEY cannot decrypt" in message
        assert f"postgresql://postgres@127.0.0.1:{postgres_server.port}/" in message
        assert "not the key this database was written with" in message


class TestDialect:
    async def test_the_user_column_holds_the_sources_user(
        self, backend: PostgresBackend, raw: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        """`user` is reserved in PostgreSQL: unquoted it would read the session's user."""
        async with backend.open(SecretBox("k")) as registry:
            created = await registry.create_source(1, spec(user="alice", database="metrics"))
            assert (created.user, created.database) == ("alice", "metrics")
            updated = await registry.update_source(
                1, created.id, lambda cur: dataclasses.replace(cur.spec(), user="bob")
            )
            assert updated.user == "bob"
            assert (await registry.list_sources())[0].user == "bob"
        assert await raw.fetchval('SELECT "user" FROM data_source') == "bob"

    async def test_secrets_are_unreadable_in_the_table(
        self, backend: PostgresBackend, raw: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        async with backend.open(SecretBox("k")) as registry:
            await registry.create_source(1, spec(secure_json_data={"basicAuthPassword": SECRET}))
        stored = await raw.fetchval("SELECT secure_json_data FROM data_source")
        assert stored.startswith("v1:")
        assert SECRET not in stored
        assert "basicAuthPassword" not in stored

    async def test_names_fold_ascii_case_only_like_sqlite(self, backend: PostgresBackend) -> None:
        async with backend.open(SecretBox("k")) as registry:
            await registry.create_source(1, spec("Ölprom"))
            await registry.create_source(1, spec("ölprom"))  # not ASCII: a different name
            assert (await registry.get_source(1, name="ÖLPROM")).name == "Ölprom"


class TestChangeFanOut:
    async def test_a_write_on_one_gateway_reaches_the_other_within_a_second(
        self, backend: PostgresBackend
    ) -> None:
        async with backend.open(SecretBox("k")) as writer, backend.open(SecretBox("k")) as reader:
            heard_by_reader: list[float] = []
            heard_by_writer: list[float] = []
            reader.subscribe(lambda: heard_by_reader.append(time.monotonic()))
            writer.subscribe(lambda: heard_by_writer.append(time.monotonic()))
            start = time.monotonic()
            await writer.create_source(1, spec())
            await wait_until(lambda: bool(heard_by_reader), FAN_OUT_SECONDS)
            assert heard_by_reader[0] - start < FAN_OUT_SECONDS
            await asyncio.sleep(0.2)
            # The writer told its listeners once, itself: its own NOTIFY is not heard twice.
            assert len(heard_by_writer) == 1
            assert len(heard_by_reader) == 1

    async def test_a_rolled_back_write_notifies_no_one(self, backend: PostgresBackend) -> None:
        async with backend.open(SecretBox("k")) as writer, backend.open(SecretBox("k")) as reader:
            heard: list[None] = []
            reader.subscribe(lambda: heard.append(None))

            async def refused() -> None:
                async with writer.batch() as batch:
                    await batch.create_source(1, spec())
                    raise RuntimeError("refused")

            with pytest.raises(RuntimeError):
                await refused()
            await asyncio.sleep(0.3)
            assert heard == []

    async def test_a_source_created_on_one_is_in_the_others_cache(
        self, backend: PostgresBackend
    ) -> None:
        async with backend.open(SecretBox("k")) as writer, backend.open(SecretBox("k")) as reader:
            cache = SourceCache(reader)
            assert (await cache.snapshot()).sources == ()
            created = await writer.create_source(1, spec())
            start = time.monotonic()
            while (await cache.snapshot()).get(1, uid=created.uid) is None:
                assert time.monotonic() - start < FAN_OUT_SECONDS, "not in the cache within 1 s"
                await asyncio.sleep(0.005)
            await writer.delete_source(1, created.id)
            start = time.monotonic()
            while (await cache.snapshot()).get(1, uid=created.uid) is not None:
                assert time.monotonic() - start < FAN_OUT_SECONDS, "still cached after 1 s"
                await asyncio.sleep(0.005)

    async def test_a_token_revoked_on_one_is_refused_by_the_other_within_a_second(
        self, backend: PostgresBackend
    ) -> None:
        async with backend.open(SecretBox("k")) as writer, backend.open(SecretBox("k")) as reader:
            token_id = await writer.create_token(1, Role.EDITOR, hash_token("dsg_t"), "ci")
            principals = PrincipalCache(reader)
            assert await principals.resolve("dsg_t") is not None  # cached from here on
            await writer.revoke_token(token_id)
            start = time.monotonic()
            while await principals.resolve("dsg_t") is not None:
                assert time.monotonic() - start < FAN_OUT_SECONDS, "still accepted after 1 s"
                await asyncio.sleep(0.005)


class TestListingEverySource:
    async def test_a_reload_rebuilds_only_the_rows_that_changed(
        self, backend: PostgresBackend
    ) -> None:
        async with backend.open(SecretBox("k")) as registry:
            first = await registry.create_source(1, spec(name="one", secure_json_data={"a": "1"}))
            await registry.create_source(1, spec(name="two"))
            before = {source.name: source for source in await registry.list_sources()}
            assert before["one"].is_default
            assert before["one"].secure_json_data == {"a": "1"}
            # A new default clears the flag on "one" without bumping its version: still seen.
            await registry.create_source(1, spec(name="three", is_default=True))
            after = {source.name: source for source in await registry.list_sources()}
            assert after["two"] is before["two"]  # unchanged row: the same record, not rebuilt
            assert after["one"] is not before["one"]
            assert not after["one"].is_default
            assert after["one"].version == first.version
            assert after["three"].is_default


class TestProvisioningInACluster:
    async def test_a_batch_that_changes_nothing_notifies_no_one(
        self, backend: PostgresBackend
    ) -> None:
        """N gateways applying the same files: only the first one's apply makes the others
        drop their caches."""
        async with backend.open(SecretBox("k")) as writer, backend.open(SecretBox("k")) as reader:
            heard: list[None] = []
            reader.subscribe(lambda: heard.append(None))
            async with writer.batch() as batch:
                await batch.sources()
            await asyncio.sleep(0.3)
            assert heard == []
            async with writer.batch() as batch:
                await batch.create_source(1, spec())
            await wait_until(lambda: bool(heard), FAN_OUT_SECONDS)

    async def test_one_gateway_provisions_at_a_time(self, backend: PostgresBackend) -> None:
        async with backend.open(SecretBox("k")) as first, backend.open(SecretBox("k")) as second:
            order: list[str] = []

            async def provision(registry: PostgresRegistry, name: str) -> None:
                async with registry.provisioning_lock():
                    order.append(f"{name} in")
                    await asyncio.sleep(0.3)
                    order.append(f"{name} out")

            async with first.provisioning_lock():
                waiting = asyncio.create_task(provision(second, "second"))
                await asyncio.sleep(0.3)
                assert order == [], "the second gateway applied while the first held the lock"
            await waiting
            assert order == ["second in", "second out"]
            await asyncio.gather(provision(first, "a"), provision(second, "b"))
            assert [entry.split()[1] for entry in order[2:]] == ["in", "out", "in", "out"]


async def watch_pids(raw: asyncpg.Connection[asyncpg.Record]) -> list[int]:
    rows = await raw.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1",
        WATCH_APPLICATION_NAME,
    )
    return [row["pid"] for row in rows]


class TestChangeWatchReconnects:
    async def test_a_lost_listener_reconnects_and_signals_a_full_refresh(
        self, backend: PostgresBackend, raw: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        async with backend.open(SecretBox("k")) as watched, backend.open(SecretBox("k")) as other:
            heard: list[None] = []
            watched.subscribe(lambda: heard.append(None))
            # End both registries' watch connections (the writer's too: it writes through its
            # pool, which the watch does not use).
            pids = await watch_pids(raw)
            assert len(pids) == 2
            for pid in pids:
                await raw.execute("SELECT pg_terminate_backend($1)", pid)
            await wait_until(lambda: bool(heard), 5.0)
            # Both watches come back (each on its own schedule), on new connections.
            start = time.monotonic()
            while len(new_pids := await watch_pids(raw)) < 2:
                assert time.monotonic() - start < 5.0, "the watches did not come back"
                await asyncio.sleep(0.01)
            assert not set(new_pids) & set(pids)
            # And it LISTENs again: the next write from elsewhere is heard as before.
            heard.clear()
            await other.create_source(1, spec())
            await wait_until(lambda: bool(heard), FAN_OUT_SECONDS)

    async def test_writes_while_the_watch_is_down_reach_the_cache_after_it_is_back(
        self,
        backend: PostgresBackend,
        raw: asyncpg.Connection[asyncpg.Record],
        postgres_server: PostgresServer,
    ) -> None:
        async with backend.open(SecretBox("k")) as watched, backend.open(SecretBox("k")) as other:
            cache = SourceCache(watched)
            assert (await cache.snapshot()).sources == ()
            database = await raw.fetchval("SELECT current_database()")
            # No new connection is let in, so the watches cannot come back (the pools' open
            # connections still work): the NOTIFY of the write below reaches no one.
            # (From another database: a database cannot close itself.)
            allow = f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS'
            await postgres_server.execute(f"{allow} false")
            try:
                for pid in await watch_pids(raw):
                    await raw.execute("SELECT pg_terminate_backend($1)", pid)
                await other.create_source(1, spec())
                await asyncio.sleep(0.3)
                assert (await cache.snapshot()).sources == ()  # not heard: no one listened
            finally:
                await postgres_server.execute(f"{allow} true")
            start = time.monotonic()
            while not (await cache.snapshot()).sources:
                assert time.monotonic() - start < 5.0, "no refresh after the watch came back"
                await asyncio.sleep(0.01)


class TestConnecting:
    async def test_an_unreachable_server_is_a_clear_start_up_error(self, tmp_path: Path) -> None:
        port = closed_port_url().rsplit(":", 1)[1]
        url = f"postgresql://gw:s3cr3t-pw@127.0.0.1:{port}/registry"
        settings = Settings(data_dir=tmp_path, database_url=url, secret_key="k")
        with pytest.raises(StartupError) as refused:
            async with open_registry(settings):
                pass
        message = str(refused.value)
        where = f"postgresql://gw@127.0.0.1:{port}/registry"
        assert f"cannot connect to the PostgreSQL registry at {where}" in message
        assert "s3cr3t-pw" not in message

    async def test_a_missing_database_is_a_clear_start_up_error(
        self, postgres_server: PostgresServer
    ) -> None:
        backend = backend_at(postgres_server.url("no_such_database"))
        with pytest.raises(StoreUnusable, match="no_such_database"):
            async with backend.open(SecretBox("k")):
                pass


class Relay:
    """A TCP relay to the test's PostgreSQL that can stop passing bytes on: a frozen server, as
    the gateway's connections see it, without freezing the session's server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._passing = asyncio.Event()
        self._passing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self._passing.clear()
        try:
            yield
        finally:
            self._passing.set()

    async def close(self) -> None:
        self._passing.set()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        for source, sink in ((client_in, server_out), (server_in, client_out)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._passing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()


@pytest.fixture
async def relayed_url(
    postgres_server: PostgresServer, postgres_url: str
) -> AsyncIterator[tuple[str, Relay]]:
    """The test's database through a relay that the test may freeze; the URL carries a password
    (the server trusts loopback, so it is not checked) that no message may show."""
    relay = Relay(postgres_server.port)
    port = await relay.start()
    database = postgres_url.rsplit("/", 1)[1]
    try:
        yield f"postgresql://{postgres_server.user}:{SECRET}@127.0.0.1:{port}/{database}", relay
    finally:
        await relay.close()


class TestOutageReason:
    """What a 503 says when the database cannot be reached: what failed, in words, as probes say
    it for upstreams; never the DSN's password, never a Python class name."""

    async def test_a_frozen_server_is_a_timeout_with_its_seconds(
        self, relayed_url: tuple[str, Relay]
    ) -> None:
        url, relay = relayed_url
        backend = PostgresBackend(url, query_timeout=1.0, keepalive_seconds=30)
        async with backend.open(SecretBox("k")) as registry:
            with relay.frozen(), pytest.raises(RegistryUnavailable) as refused:
                await registry.list_sources()
        message = str(refused.value)
        assert message == "registry database unavailable: PostgreSQL did not answer in time (1 s)"

    async def test_a_refused_connection_says_so(self) -> None:
        url = closed_port_url().replace("http://", f"postgresql://gw:{SECRET}@") + "/registry"
        with pytest.raises(ConnectionRefusedError) as refused:
            await asyncpg.connect(url, timeout=5)
        assert describe_database_error(refused.value, timeout=5) == "connection refused"

    async def test_credentials_the_server_refuses_are_an_authentication_failure(
        self, postgres_server: PostgresServer
    ) -> None:
        url = postgres_server.url().replace(f"{postgres_server.user}@", f"nobody:{SECRET}@")
        with pytest.raises(asyncpg.PostgresError) as refused:
            await asyncpg.connect(url, timeout=5)
        assert describe_database_error(refused.value, timeout=5) == "authentication failed"

    async def test_a_connection_the_server_ended_says_so(
        self, postgres_url: str, raw: asyncpg.Connection[asyncpg.Record]
    ) -> None:
        doomed = await asyncpg.connect(postgres_url)
        await raw.execute("SELECT pg_terminate_backend($1)", doomed.get_server_pid())
        await asyncio.sleep(0.1)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)) as lost:
            await doomed.fetchval("SELECT 1")
        assert describe_database_error(lost.value, timeout=5) == "the connection was closed"

    async def test_the_change_watch_logs_a_frozen_server_in_words(
        self, relayed_url: tuple[str, Relay]
    ) -> None:
        url, relay = relayed_url
        backend = PostgresBackend(url, query_timeout=1.0, keepalive_seconds=0.1)
        event = "registry_change_watch_keepalive_failed"
        async with backend.open(SecretBox("k")):
            with relay.frozen(), structlog.testing.capture_logs() as logs:
                await wait_until(lambda: any(entry["event"] == event for entry in logs), 5)
        (failed,) = [entry for entry in logs if entry["event"] == event]
        assert failed["error"] == "PostgreSQL did not answer in time (1 s)"
