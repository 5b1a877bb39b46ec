"""One audit line for every registry change, whoever made it.

`AuditedRegistry` wraps the `Registry` of any backend (`AuditedBackend` is how
`gateway.bootstrap.open_registry`, where the server and the CLI open theirs, installs it), so
the Grafana API, the InfluxDB API, provisioning, the CLI and start-up all get the same lines
without a handler having to remember one. Each committed write logs exactly one line on the
`gateway.audit` logger:

- `source_created`, `source_updated`, `source_deleted`: org, source_id, uid, name, type,
  version (the stored version after the write; for a delete, the last one), and for updates
  `changed`: the names of the fields that differ (`url`, `jsonData.httpMethod`,
  `secureJsonData.password`, `provisionedBy`) — never a value. An update that changes nothing
  still moves the version, so it is logged with `changed: []`.
- `token_created`, `token_revoked`: org, token_id, role, description (never the token or hash).
- `org_created`: org, org_name, influx_id.
- `secret_key_rotated`: sources (how many were re-encrypted).

Every line carries `actor`: who made the change, from a context variable that the writer sets
(`acting_as`): the request's token (`gateway.security.auth`), a provisioning file and line, the
CLI, or the system (start-up, anything else). Lines are written after the commit: a refused
write, or a batch that rolls back, logs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.registry.interface import (
    ChangeListener,
    Mutation,
    Registry,
    RegistryBackend,
    RegistryBatch,
)
from gateway.registry.models import (
    SOURCE_FIELDS,
    DataSource,
    DataSourceSpec,
    FieldKind,
    Org,
    Principal,
    Role,
    TokenInfo,
)
from gateway.registry.secrets import SecretBox

log = structlog.get_logger("gateway.audit")


# --- who acts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenActor:
    """An API request, made with this token (its description is looked up when logging)."""

    token_id: int


@dataclass(frozen=True, slots=True)
class ProvisioningActor:
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class CliActor:
    pass


@dataclass(frozen=True, slots=True)
class SystemActor:
    pass


Actor = TokenActor | ProvisioningActor | CliActor | SystemActor
SYSTEM = SystemActor()
CLI = CliActor()

# Per task: a request's handler runs in the task its authentication ran in, and a task started
# from it inherits the value; nothing else sees it.
_actor: ContextVar[Actor] = ContextVar("registry_actor", default=SYSTEM)


def act_as(actor: Actor) -> None:
    """Whoever writes from now on in this task (and tasks it starts) is `actor`."""
    _actor.set(actor)


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    """Writes inside the block are `actor`'s; the previous actor is back after it."""
    reset = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(reset)


def current_actor() -> Actor:
    return _actor.get()


# --- what changed -----------------------------------------------------------------------------

PROVISIONED_BY = "provisionedBy"  # not a field writers set, but a change an audit must show


def changed_fields(before: DataSource, after: DataSource) -> list[str]:
    """The names, in Grafana's JSON spelling, of what differs; the keys of jsonData and
    secureJsonData are named one by one. Never a value."""
    changed: list[str] = []
    for field in SOURCE_FIELDS:
        old, new = getattr(before, field.attribute), getattr(after, field.attribute)
        if field.kind in (FieldKind.OBJECT, FieldKind.SECRETS):
            changed += [f"{field.json_name}.{key}" for key in _changed_keys(old, new)]
        elif old != new:
            changed.append(field.json_name)
    if before.provisioned_by != after.provisioned_by:
        changed.append(PROVISIONED_BY)
    return changed


_ABSENT = object()  # a key added with the value null is a change too


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(
        key for key in old.keys() | new.keys() if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    )


# --- the lines --------------------------------------------------------------------------------


class _Auditor:
    """Renders actors and writes the lines; remembers token descriptions (they never change).

    Whatever needs the database (a token's description) is looked up before the write it
    describes, so that once the change is committed its line is written at once: it can be
    neither cancelled nor refused by a failing lookup."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._descriptions: dict[int, str] = {}

    async def actor(self) -> dict[str, Any]:
        """The current actor, rendered for a line."""
        match current_actor():
            case TokenActor(token_id):
                return {
                    "kind": "token",
                    "token_id": token_id,
                    "description": await self.description(token_id),
                }
            case ProvisioningActor(file, line):
                return {"kind": "provisioning", "file": file, "line": line}
            case CliActor():
                return {"kind": "cli"}
            case SystemActor():
                return {"kind": "system"}

    async def description(self, token_id: int) -> str | None:
        if token_id not in self._descriptions:
            await self.tokens()
        return self._descriptions.get(token_id)

    async def tokens(self) -> list[TokenInfo]:
        """Every token, re-read; [] (and a warning) when the registry cannot answer: an audit
        line with fewer details beats a write reported as failed after it committed."""
        try:
            tokens = await self._registry.list_tokens()
        except Exception as exc:
            log.warning("audit_lookup_failed", error=type(exc).__name__)
            return []
        self._descriptions = {token.id: token.description for token in tokens}
        return tokens


def _write(event: str, actor: dict[str, Any], **fields: Any) -> None:
    log.info(event, **fields, actor=actor)


def _write_source(event: str, actor: dict[str, Any], source: DataSource, **extra: Any) -> None:
    _write(
        event,
        actor,
        org=source.org_id,
        source_id=source.id,
        uid=source.uid,
        name=source.name,
        type=source.type,
        version=source.version,
        **extra,
    )


class _Recorder:
    """Captures the state `mutate` is given, to name what an update changed."""

    def __init__(self, mutate: Mutation) -> None:
        self._mutate = mutate
        self.before: DataSource | None = None

    def __call__(self, current: DataSource) -> DataSourceSpec:
        self.before = current
        return self._mutate(current)

    def changed(self, after: DataSource) -> list[str]:
        assert self.before is not None  # the backend calls mutate before it writes
        return changed_fields(self.before, after)


class AuditedBatch:
    """A `RegistryBatch` whose changes are logged once the whole batch has committed."""

    def __init__(self, inner: RegistryBatch, auditor: _Auditor) -> None:
        self._inner = inner
        self._audit = auditor
        # (event, actor, source, extra fields), in the order they were made
        self.pending: list[tuple[str, dict[str, Any], DataSource, dict[str, Any]]] = []

    async def sources(self, org_id: int | None = None) -> list[DataSource]:
        return await self._inner.sources(org_id)

    async def org_exists(self, org_id: int) -> bool:
        return await self._inner.org_exists(org_id)

    async def create_source(
        self, org_id: int, spec: DataSourceSpec, *, provisioned_by: str | None = None
    ) -> DataSource:
        actor = await self._audit.actor()
        source = await self._inner.create_source(org_id, spec, provisioned_by=provisioned_by)
        self.pending.append(("source_created", actor, source, {}))
        return source

    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        provisioned_by: str | None = None,
    ) -> DataSource:
        actor = await self._audit.actor()
        recorder = _Recorder(mutate)
        source = await self._inner.update_source(
            org_id, source_id, recorder, provisioned_by=provisioned_by
        )
        self.pending.append(
            ("source_updated", actor, source, {"changed": recorder.changed(source)})
        )
        return source

    async def delete_source(self, org_id: int, source_id: int) -> DataSource:
        actor = await self._audit.actor()
        source = await self._inner.delete_source(org_id, source_id)
        self.pending.append(("source_deleted", actor, source, {}))
        return source


class AuditedRegistry:
    """A `Registry` that logs one audit line for each change committed through it."""

    def __init__(self, inner: Registry) -> None:
        self.inner = inner  # the backend's own registry (tests reach its internals through it)
        self._audit = _Auditor(inner)

    # --- the backend itself: nothing to audit ----------------------------------------------

    @property
    def engine(self) -> str:
        return self.inner.engine

    async def ping(self) -> None:
        await self.inner.ping()

    async def schema_version(self) -> int:
        return await self.inner.schema_version()

    def subscribe(self, listener: ChangeListener) -> None:
        self.inner.subscribe(listener)

    def unavailable_for(self) -> float | None:
        return self.inner.unavailable_for()

    def provisioning_lock(self) -> AbstractAsyncContextManager[None]:
        return self.inner.provisioning_lock()

    # --- orgs ------------------------------------------------------------------------------

    async def create_org(self, name: str) -> Org:
        actor = await self._audit.actor()
        org = await self.inner.create_org(name)
        _write("org_created", actor, org=org.id, org_name=org.name, influx_id=org.influx_id)
        return org

    async def get_org(self, org_id: int) -> Org:
        return await self.inner.get_org(org_id)

    async def find_org(self, *, name: str | None = None, influx_id: str | None = None) -> Org:
        return await self.inner.find_org(name=name, influx_id=influx_id)

    async def list_orgs(self) -> list[Org]:
        return await self.inner.list_orgs()

    # --- tokens ----------------------------------------------------------------------------

    async def create_token(
        self, org_id: int, role: Role, token_hash: str, description: str = ""
    ) -> int:
        actor = await self._audit.actor()
        token_id = await self.inner.create_token(org_id, role, token_hash, description)
        _write(
            "token_created",
            actor,
            org=org_id,
            token_id=token_id,
            role=role.value,
            description=description,
        )
        return token_id

    async def ensure_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        actor = await self._audit.actor()
        acted = await self.inner.ensure_token(org_id, role, token_hash, description)
        if acted:
            await self._log_token_made(actor, org_id, role, token_hash, description)
        return acted

    async def create_first_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        actor = await self._audit.actor()
        created = await self.inner.create_first_token(org_id, role, token_hash, description)
        if created:
            await self._log_token_made(actor, org_id, role, token_hash, description)
        return created

    async def _log_token_made(
        self, actor: dict[str, Any], org_id: int, role: Role, token_hash: str, description: str
    ) -> None:
        # These return no id, and ensure_token may have brought back a revoked token (keeping
        # its description) rather than made one: the stored row says which it is.
        token_id: int | None = None
        try:
            principal = await self.inner.find_principal(token_hash)
        except Exception as exc:
            log.warning("audit_lookup_failed", error=type(exc).__name__)
            principal = None
        if principal is not None:
            token_id = principal.token_id
            await self._audit.tokens()
            description = await self._audit.description(token_id) or description
        _write(
            "token_created",
            actor,
            org=org_id,
            token_id=token_id,
            role=role.value,
            description=description,
        )

    async def find_principal(self, token_hash: str) -> Principal | None:
        return await self.inner.find_principal(token_hash)

    async def list_tokens(self) -> list[TokenInfo]:
        return await self.inner.list_tokens()

    async def revoke_token(self, token_id: int) -> bool:
        actor = await self._audit.actor()
        revoked = await self.inner.revoke_token(token_id)
        if revoked:
            # Revocations are rare (the CLI): the token's details are worth a lookup.
            tokens = await self._audit.tokens()
            info = next((token for token in tokens if token.id == token_id), None)
            details: dict[str, Any] = {}
            if info is not None:
                details.update(role=info.role.value, description=info.description)
                with contextlib.suppress(Exception):  # an org is never deleted; details only
                    details["org"] = (await self.inner.find_org(name=info.org_name)).id
            _write("token_revoked", actor, token_id=token_id, **details)
        return revoked

    # --- data sources ----------------------------------------------------------------------

    async def list_sources(self, org_id: int | None = None) -> list[DataSource]:
        return await self.inner.list_sources(org_id)

    async def get_source(
        self,
        org_id: int,
        *,
        id: int | None = None,
        uid: str | None = None,
        name: str | None = None,
    ) -> DataSource:
        return await self.inner.get_source(org_id, id=id, uid=uid, name=name)

    async def create_source(self, org_id: int, spec: DataSourceSpec) -> DataSource:
        actor = await self._audit.actor()
        source = await self.inner.create_source(org_id, spec)
        _write_source("source_created", actor, source)
        return source

    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        expected_version: int | None = None,
    ) -> DataSource:
        actor = await self._audit.actor()
        recorder = _Recorder(mutate)
        source = await self.inner.update_source(
            org_id, source_id, recorder, expected_version=expected_version
        )
        _write_source("source_updated", actor, source, changed=recorder.changed(source))
        return source

    async def delete_source(
        self,
        org_id: int,
        source_id: int,
        *,
        allow_read_only: bool = False,
        check: Callable[[DataSource], object] | None = None,
    ) -> DataSource:
        actor = await self._audit.actor()
        source = await self.inner.delete_source(
            org_id, source_id, allow_read_only=allow_read_only, check=check
        )
        _write_source("source_deleted", actor, source)
        return source

    def batch(self) -> AbstractAsyncContextManager[RegistryBatch]:
        return self._batch()

    @contextlib.asynccontextmanager
    async def _batch(self) -> AsyncIterator[RegistryBatch]:
        async with self.inner.batch() as inner:
            audited = AuditedBatch(inner, self._audit)
            yield audited
        # Committed: only now did these changes happen.
        for event, actor, source, extra in audited.pending:
            _write_source(event, actor, source, **extra)

    # --- keys ------------------------------------------------------------------------------

    async def rotate_key(self, new_box: SecretBox) -> int:
        actor = await self._audit.actor()
        count = await self.inner.rotate_key(new_box)
        _write("secret_key_rotated", actor, sources=count)
        return count


@dataclass(frozen=True, slots=True)
class AuditedBackend:
    """A backend whose registries audit every change (see `AuditedRegistry`)."""

    inner: RegistryBackend

    @property
    def location(self) -> str:
        return self.inner.location

    def open(self, box: SecretBox) -> AbstractAsyncContextManager[Registry]:
        return self._open(box)

    @contextlib.asynccontextmanager
    async def _open(self, box: SecretBox) -> AsyncIterator[Registry]:
        async with self.inner.open(box) as registry:
            yield AuditedRegistry(registry)


__all__ = [
    "CLI",
    "SYSTEM",
    "Actor",
    "AuditedBackend",
    "AuditedRegistry",
    "CliActor",
    "ProvisioningActor",
    "SystemActor",
    "TokenActor",
    "act_as",
    "acting_as",
    "changed_fields",
    "current_actor",
]
