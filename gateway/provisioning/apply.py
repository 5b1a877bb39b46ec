"""Applying checked provisioning files to the registry: one transaction, all or nothing.

Each listed source is matched to a stored one in its org by uid, else by name (first every uid,
then names among the sources no uid claimed), and created or updated; a source whose stored
state already is what the file asks for is left alone, so applying the same files again
changes nothing. `deleteDatasources` and `prune: true` delete first, which frees names for the
rest; a source that a file lists is never deleted in the same apply (Grafana deletes and
recreates it, which changes its id on every start).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.errors import NameConflict, UidConflict
from gateway.provisioning.model import (
    DesiredSource,
    Place,
    Problem,
    ProvisioningFailed,
    ProvisioningFile,
    fold_name,
)
from gateway.registry.audit import ProvisioningActor, acting_as
from gateway.registry.interface import Registry, RegistryBatch
from gateway.registry.models import DataSource, DataSourceSpec


@dataclass(slots=True)
class Counts:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0


@dataclass(frozen=True, slots=True)
class Wanted:
    """A listed source, the file that lists it, and the stored source it matched, if any."""

    file: str
    source: DesiredSource
    stored: DataSource | None


async def apply_files(store: Registry, files: Sequence[ProvisioningFile]) -> Counts:
    """Apply `files` in one transaction; ProvisioningFailed (and nothing changed) otherwise."""
    async with store.batch() as batch:
        return await _Apply(batch, files).run()


class _Apply:
    def __init__(self, batch: RegistryBatch, files: Sequence[ProvisioningFile]) -> None:
        self._batch = batch
        self._files = files
        self._counts = Counts()
        self._problems: list[Problem] = []

    async def run(self) -> Counts:
        await self._check_orgs()
        self._stop_on_problems()
        stored = await self._batch.sources()
        wanted = match(self._files, stored)
        claimed = {item.stored.id for item in wanted if item.stored is not None}
        for source, place in doomed(self._files, stored, claimed):
            with acting_as(_actor(place)):
                await self._batch.delete_source(source.org_id, source.id)
            self._counts.deleted += 1
        # Updates before creates: a rename may free the name a new source takes.
        for item in sorted(wanted, key=lambda item: item.stored is None):
            await self._save(item)
        self._stop_on_problems()
        return self._counts

    async def _check_orgs(self) -> None:
        exists: dict[int, bool] = {}
        for place, org_id in _org_references(self._files):
            if org_id not in exists:
                exists[org_id] = await self._batch.org_exists(org_id)
            if not exists[org_id]:
                message = f"org {org_id} does not exist (see `gateway org list`)"
                self._problems.append(place.problem(message))

    async def _save(self, item: Wanted) -> None:
        try:
            with acting_as(_actor(item.source.place)):
                if item.stored is None:
                    await self._create(item)
                else:
                    await self._update(item, item.stored)
        except (NameConflict, UidConflict) as exc:
            # A name or uid held by a source no file manages, or two renames swapping names.
            self._problems.append(
                item.source.place.problem(f"cannot save this data source: {exc.message}")
            )

    async def _create(self, item: Wanted) -> None:
        source = item.source
        spec = desired_spec(source.spec, None)
        await self._batch.create_source(source.org_id, spec, provisioned_by=item.file)
        self._counts.created += 1

    async def _update(self, item: Wanted, stored: DataSource) -> None:
        wanted_spec = item.source.spec
        if (
            desired_spec(wanted_spec, stored) == stored.spec()
            and stored.provisioned_by == item.file
        ):
            self._counts.unchanged += 1
            return
        await self._batch.update_source(
            stored.org_id,
            stored.id,
            # Computed from the row inside the transaction: an earlier step may have changed it.
            lambda current: desired_spec(wanted_spec, current),
            provisioned_by=item.file,  # adopts a source made through an API, or by another file
        )
        self._counts.updated += 1

    def _stop_on_problems(self) -> None:
        if self._problems:
            raise ProvisioningFailed(self._problems)


def _actor(place: Place) -> ProvisioningActor:
    """The audit's name for a change: the file and line of the entry that asks for it."""
    return ProvisioningActor(place.file, place.line)


def _org_references(files: Sequence[ProvisioningFile]) -> Iterator[tuple[Place, int]]:
    for file in files:
        yield from ((source.place, source.org_id) for source in file.sources)
        yield from ((ref.place, ref.org_id) for ref in file.deletes)


def match(files: Sequence[ProvisioningFile], stored: Sequence[DataSource]) -> list[Wanted]:
    """Pair each listed source with the stored source it manages: by uid, else by name."""
    listed = [(file.name, source) for file in files for source in file.sources]
    by_uid = {(s.org_id, s.uid): s for s in stored}
    by_name = {(s.org_id, fold_name(s.name)): s for s in stored}
    found: list[DataSource | None] = [
        by_uid.get((source.org_id, source.spec.uid)) if source.spec.uid else None
        for _, source in listed
    ]
    claimed = {s.id for s in found if s is not None}
    for index, (_, source) in enumerate(listed):
        candidate = by_name.get((source.org_id, fold_name(source.spec.name)))
        if found[index] is None and candidate is not None and candidate.id not in claimed:
            found[index] = candidate
            claimed.add(candidate.id)
    return [Wanted(name, source, s) for (name, source), s in zip(listed, found, strict=True)]


def doomed(
    files: Sequence[ProvisioningFile], stored: Sequence[DataSource], claimed: set[int]
) -> list[tuple[DataSource, Place]]:
    """What `deleteDatasources` (by name and org) and `prune: true` remove, each with the
    entry (or `prune:`) that removes it."""
    by_name = {(s.org_id, fold_name(s.name)): s for s in stored}
    chosen: dict[int, tuple[DataSource, Place]] = {}
    for file in files:
        for ref in file.deletes:
            source = by_name.get((ref.org_id, fold_name(ref.name)))
            if source is not None:  # deleting what is not there is fine
                chosen[source.id] = (source, ref.place)
        if file.prune:
            place = file.prune_place or Place(file.name, 0)
            chosen.update((s.id, (s, place)) for s in stored if s.provisioned_by == file.name)
    return [(source, place) for source, place in chosen.values() if source.id not in claimed]


def desired_spec(spec: DataSourceSpec, current: DataSource | None) -> DataSourceSpec:
    """What the stored source should be. A uid the file leaves out is kept (or, for a new
    source, derived from the name as Grafana does, so it is the same on every install). An
    `isDefault` left false keeps the stored flag: the first source of an org is made its
    default by the registry, and un-setting that on the next apply would churn versions."""
    if current is None:
        return dataclasses.replace(spec, uid=spec.uid or grafana_uid(spec.name))
    return dataclasses.replace(
        spec,
        uid=spec.uid or current.uid,
        is_default=spec.is_default or current.is_default,
        api_version=current.api_version,  # the files have no field for it
    )


def grafana_uid(name: str) -> str:
    """Grafana's uid for a provisioned source that names none (`safeUIDFromName`)."""
    return "P" + hashlib.sha256(name.encode()).digest()[:8].hex().upper()
