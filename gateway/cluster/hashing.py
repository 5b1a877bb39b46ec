"""Which live member probes a source: rendezvous (highest random weight) hashing.

Every member computes, for each source, a weight per live member from a hash of (member id,
source key) and takes the member with the highest. All members agree without talking, given
the same member list; and when a member leaves, only the sources it held move (each to the
member with its next highest weight), while a member joining takes from each other member
only the sources it now weighs highest for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from gateway.registry.models import DataSource


def source_key(source: DataSource) -> str:
    """What a source is hashed by: its org and uid, the same on every gateway and across edits."""
    return f"{source.org_id}/{source.uid}"


def owner_of(key: str, members: Iterable[str]) -> str | None:
    """The member with the highest weight for `key` (None: no members)."""
    return max(members, key=lambda member: (_weight(member, key), member), default=None)


def _weight(member: str, key: str) -> int:
    # blake2b: stable across processes and versions (Python's hash() is salted per process).
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
