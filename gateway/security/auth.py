"""API tokens: generation, hashing, the `Authorization` header, and an in-memory principal cache.

Tokens are 32 random bytes (base64url, prefixed `dsg_`). Only their SHA-256 is stored: a token
carries 256 bits of entropy, so a fast hash is enough and a lookup stays a single indexed query.
Both `Bearer <t>` (Grafana) and `Token <t>` (InfluxDB) schemes are accepted, case-insensitively.
"""

from __future__ import annotations

import hashlib
import secrets

from gateway.registry.audit import SYSTEM, TokenActor, act_as
from gateway.registry.interface import Registry
from gateway.registry.models import Principal

TOKEN_PREFIX = "dsg_"
_SCHEMES = ("bearer", "token")
# A header longer than this is not a token of ours; refuse before hashing attacker input.
_MAX_TOKEN_LENGTH = 512


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_from_header(value: str | None) -> str | None:
    """The token in an `Authorization` header, or None when there is no usable one."""
    if not value:
        return None
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() not in _SCHEMES or not credential or len(credential) > _MAX_TOKEN_LENGTH:
        return None
    return credential


class PrincipalCache:
    """Token hash → Principal, so authenticating a request touches no SQL after the first time.

    Only hits are cached; the registry clears the cache on every committed change (its own, or
    another process's, which its backend watches for), so a revoked token stops working within
    the backend's watch interval. At most `limit` principals are kept (the cache starts over
    when full): only tokens that exist get in, but there is no need to hold all of them.
    Keyed by the hash, so no token is held in memory. The proxied path asks `cached` first:
    the SHA-256 of the whole header, no parsing and no coroutine (with the pipeline's other
    cuts, ~2.5 us less CPU a request in the gateway: bench/README.md, issue 17).
    """

    def __init__(self, registry: Registry, limit: int = 100_000) -> None:
        self._registry = registry
        # With the actor the audit names for it, made once: resolve runs on every request.
        self._by_hash: dict[str, tuple[Principal, TokenActor]] = {}
        # The same entries by the SHA-256 of a whole Bearer/Token header (see `cached`).
        self._by_header: dict[bytes, tuple[Principal, TokenActor]] = {}
        self._limit = limit
        registry.subscribe(self.clear)

    def clear(self) -> None:
        self._by_hash.clear()
        self._by_header.clear()

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization` header whose token was resolved before, without
        parsing it or a coroutine (the proxied path asks this first); None: use `resolve`.

        Keyed by the header's SHA-256 (no token is held in memory); only `Bearer`/`Token`
        headers are remembered, as they name a principal whatever the route (InfluxDB 1.x
        passwords count only on some routes)."""
        if not authorization:
            return None
        entry = self._by_header.get(hashlib.sha256(authorization.encode()).digest())
        if entry is None:
            return None
        act_as(entry[1])
        return entry[0]

    def remember(self, authorization: str, token: str) -> None:
        """Let `cached` answer for the Bearer/Token header `authorization`, which carries
        `token`, once `resolve` found its principal; until the registry changes."""
        entry = self._by_hash.get(hash_token(token))
        if entry is None:
            return
        if len(self._by_header) >= self._limit:
            self._by_header.clear()
        self._by_header[hashlib.sha256(authorization.encode()).digest()] = entry

    async def resolve(self, token: str) -> Principal | None:
        """Who `token` acts as, if anyone; the registry's audit names them as the actor of
        whatever this request (its task) changes from now on (gateway.registry.audit)."""
        digest = hash_token(token)
        entry = self._by_hash.get(digest)
        if entry is None:
            principal = await self._registry.find_principal(digest)
            if principal is None:
                act_as(SYSTEM)
                return None
            if len(self._by_hash) >= self._limit:
                self._by_hash.clear()
            entry = self._by_hash[digest] = (principal, TokenActor(principal.token_id))
        act_as(entry[1])
        return entry[0]
