"""The registry contract: what every module outside a backend may ask of the registry.

A backend (today `gateway.registry.sqlite`) implements `RegistryBackend`, whose `open` yields a
running `Registry`; `gateway.registry.backends.backend_for` picks one from the settings. Nothing
else in the gateway names a backend, so a second one (PostgreSQL) plugs in there alone, and
tests/registry/test_store.py runs against it unchanged.

What every backend guarantees:
- Opening checks the secret key before changing anything (`SecretKeyMismatch`), brings the schema
  up to date (`StoreUnusable` if it cannot, e.g. it is newer than this gateway), and makes sure
  org `DEFAULT_ORG_ID` exists, named `DEFAULT_ORG_NAME`.
- `secure_json_data` is encrypted at rest with the `SecretBox` the registry was opened with.
- Each write is one transaction; a `batch` is one transaction for several writes.
- Change listeners are called, synchronously and with no argument, after every commit made
  through this registry and — while it is open — soon after a commit by another process (the CLI,
  another worker). They must be cheap and must not raise: callers mark caches stale in them.
- Failures are the domain's errors: `OrgNotFound`, `DataSourceNotFound`, `NameConflict`,
  `UidConflict`, `VersionConflict`, `ReadOnlySourceDelete` (gateway.errors), `OrgNameTaken`,
  and `RegistryUnavailable` (503) when a database server cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from gateway.registry.models import DataSource, DataSourceSpec, Org, Principal, Role, TokenInfo
from gateway.registry.secrets import SecretBox

DEFAULT_ORG_NAME = "Main Org."

# Called whenever anything in the registry may have changed, here or in another process.
ChangeListener = Callable[[], None]
# The new state of a source from its stored state, inside the writing transaction; may raise.
Mutation = Callable[[DataSource], DataSourceSpec]


class StoreUnusable(Exception):
    """The registry's storage cannot be used by this gateway; `str()` says why."""


class OrgNameTaken(ValueError):
    """An org of that name exists already. (A ValueError: what callers caught before.)"""


class RegistryBatch(Protocol):
    """Changes inside one open transaction (see `Registry.batch`). Provisioning uses it to apply
    a whole set of files all-or-nothing, and to mark which file manages each source."""

    async def sources(self, org_id: int | None = None) -> list[DataSource]:
        """Every source, or one org's, in id order, as this transaction sees them."""
        ...

    async def org_exists(self, org_id: int) -> bool: ...

    async def create_source(
        self, org_id: int, spec: DataSourceSpec, *, provisioned_by: str | None = None
    ) -> DataSource:
        """As `Registry.create_source`, marking the source as managed by `provisioned_by`."""
        ...

    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        provisioned_by: str | None = None,
    ) -> DataSource:
        """As `Registry.update_source`; `provisioned_by` None keeps the stored marker."""
        ...

    async def delete_source(self, org_id: int, source_id: int) -> DataSource:
        """Delete, read-only or not: provisioning manages read-only sources."""
        ...


class Registry(Protocol):
    """Orgs, API tokens (hashes only) and data sources, as one backend stores them."""

    # --- the backend itself ----------------------------------------------------------------

    @property
    def engine(self) -> str:
        """The database engine, as operators know it: /health says "<engine> answered in …"."""
        ...

    async def ping(self) -> None:
        """Raise if the database cannot answer a query."""
        ...

    async def schema_version(self) -> int:
        """The number of schema migrations applied."""
        ...

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` whenever anything may have changed, here or in another process."""
        ...

    def unavailable_for(self) -> float | None:
        """Seconds since the database server was found unreachable, while it still is; None
        while it answers (always None for a file: it cannot go away). /ready's grace period
        counts on it."""
        ...

    def provisioning_lock(self) -> AbstractAsyncContextManager[None]:
        """Held around a provisioning apply, so that gateways sharing the database apply their
        files one at a time. A no-op where writers are serialised anyway (SQLite)."""
        ...

    # --- orgs ------------------------------------------------------------------------------

    async def create_org(self, name: str) -> Org:
        """A new org with a generated InfluxDB id; OrgNameTaken if the name is in use."""
        ...

    async def get_org(self, org_id: int) -> Org: ...

    async def find_org(self, *, name: str | None = None, influx_id: str | None = None) -> Org:
        """The org with this name, else this InfluxDB id; OrgNotFound if none."""
        ...

    async def list_orgs(self) -> list[Org]: ...

    # --- tokens ----------------------------------------------------------------------------

    async def create_token(
        self, org_id: int, role: Role, token_hash: str, description: str = ""
    ) -> int:
        """Store a token's hash; returns the token's id."""
        ...

    async def ensure_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        """Make sure an active token with this hash and role exists; True when it had to act."""
        ...

    async def create_first_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        """Create this token only if no active token exists yet, atomically (two processes
        starting together cannot both make one); True when it was created."""
        ...

    async def find_principal(self, token_hash: str) -> Principal | None:
        """Who an active token acts as; None for an unknown or revoked token."""
        ...

    async def list_tokens(self) -> list[TokenInfo]: ...

    async def revoke_token(self, token_id: int) -> bool:
        """Revoke one token; False when no active token has that id."""
        ...

    # --- data sources ----------------------------------------------------------------------

    async def list_sources(self, org_id: int | None = None) -> list[DataSource]:
        """Every source, or one org's, in id order."""
        ...

    async def get_source(
        self,
        org_id: int,
        *,
        id: int | None = None,
        uid: str | None = None,
        name: str | None = None,
    ) -> DataSource:
        """One source of one org, by exactly one of id, uid or name (names ignoring ASCII
        case); DataSourceNotFound else."""
        ...

    async def create_source(self, org_id: int, spec: DataSourceSpec) -> DataSource:
        """Insert a source. An empty name becomes `<type>`, `<type>-1`, …; an empty uid is
        generated; the first source of an org becomes its default, and a default source clears
        the flag on the others. Names are unique per org ignoring ASCII case (NameConflict),
        uids per org (UidConflict)."""
        ...

    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        expected_version: int | None = None,
    ) -> DataSource:
        """Replace a source with `mutate(current)`, atomically, bumping its version.

        `mutate` sees the stored source inside the transaction, so merges (kept secrets, partial
        patches) cannot lose a concurrent write; it may raise to refuse. With `expected_version`,
        a stored version newer than it is a VersionConflict, and so is losing a race to another
        writer of the same version.
        """
        ...

    async def delete_source(
        self,
        org_id: int,
        source_id: int,
        *,
        allow_read_only: bool = False,
        check: Callable[[DataSource], object] | None = None,
    ) -> DataSource:
        """Delete and return a source. `check(current)` runs inside the transaction and may raise
        to refuse; a read-only source is a ReadOnlySourceDelete unless `allow_read_only`."""
        ...

    def batch(self) -> AbstractAsyncContextManager[RegistryBatch]:
        """Several changes in one transaction: all of them are committed, or none."""
        ...

    # --- keys ------------------------------------------------------------------------------

    async def rotate_key(self, new_box: SecretBox) -> int:
        """Re-encrypt every secret (and the key check) under `new_box`, in one transaction, and
        go on using it. Returns the number of sources re-encrypted; on error nothing changes."""
        ...


class RegistryBackend(Protocol):
    """Where one registry lives (a database file, a server) and how to open it."""

    @property
    def location(self) -> str:
        """Where the data is, for messages: a path, or a database address without password."""
        ...

    def open(self, box: SecretBox) -> AbstractAsyncContextManager[Registry]:
        """Open (creating or upgrading it if needed) and yield a running registry: its change
        watch starts here and stops on exit. Raises SecretKeyMismatch or StoreUnusable."""
        ...


__all__ = [
    "DEFAULT_ORG_NAME",
    "ChangeListener",
    "Mutation",
    "OrgNameTaken",
    "Registry",
    "RegistryBackend",
    "RegistryBatch",
    "StoreUnusable",
]
