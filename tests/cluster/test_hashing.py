"""Rendezvous hashing: every member computes the same owner, and a member leaving or joining
moves only the sources it gives up or takes."""

from __future__ import annotations

from collections import Counter

from gateway.cluster.hashing import owner_of

MEMBERS = ["gw-a/10/aa", "gw-b/11/bb", "gw-c/12/cc"]
KEYS = [f"1/source-{n}" for n in range(3000)]


def owners(members: list[str]) -> dict[str, str | None]:
    return {key: owner_of(key, members) for key in KEYS}


def test_the_owner_does_not_depend_on_the_order_of_the_members() -> None:
    assert owners(MEMBERS) == owners(list(reversed(MEMBERS)))


def test_sources_are_split_about_evenly() -> None:
    shares = Counter(owners(MEMBERS).values())
    assert set(shares) == set(MEMBERS)
    assert all(abs(count - len(KEYS) / 3) < len(KEYS) * 0.05 for count in shares.values())


def test_a_member_leaving_moves_only_its_own_sources() -> None:
    before = owners(MEMBERS)
    after = owners(MEMBERS[:2])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == MEMBERS[2]}


def test_a_member_joining_takes_only_what_it_now_owns() -> None:
    before = owners(MEMBERS)
    after = owners([*MEMBERS, "gw-d/13/dd"])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if after[key] == "gw-d/13/dd"}
    assert abs(len(moved) - len(KEYS) / 4) < len(KEYS) * 0.05


def test_no_members_no_owner() -> None:
    assert owner_of("1/source", []) is None
