"""What the provisioning files ask for, after parsing and checking; and how problems are told."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.registry.models import DataSourceSpec
from gateway.registry.validation import MAX_LISTED_PROBLEMS


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem, printed as `file:line: message` (`file: message` when no line applies)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}: {self.message}"
        return f"{self.file}: {self.message}"


@dataclass(frozen=True, slots=True)
class Place:
    file: str
    line: int

    def problem(self, message: str) -> Problem:
        return Problem(self.file, self.line, message)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class DesiredSource:
    """One entry of `datasources:`. `spec.uid` is empty when the file gives none."""

    place: Place
    org_id: int
    spec: DataSourceSpec


@dataclass(frozen=True, slots=True)
class DeleteRef:
    """One entry of `deleteDatasources:`."""

    place: Place
    org_id: int
    name: str


@dataclass(frozen=True, slots=True)
class ProvisioningFile:
    name: str  # the file's name: what DataSource.provisioned_by records for its sources
    sources: tuple[DesiredSource, ...] = ()
    deletes: tuple[DeleteRef, ...] = ()
    prune: bool = False
    prune_place: Place | None = None  # where `prune:` is: the audit names it for what it deletes


class ProvisioningFailed(Exception):
    """The files cannot be applied; nothing was changed."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = in_order(problems)
        super().__init__(f"{len(self.problems)} provisioning problem(s)")

    def lines(self) -> list[str]:
        """The first MAX_LISTED_PROBLEMS problems, then one line for the rest: a file of
        20,000 unknown keys must not print (or log) 20,000 lines."""
        lines = [str(problem) for problem in self.problems[:MAX_LISTED_PROBLEMS]]
        rest = len(self.problems) - MAX_LISTED_PROBLEMS
        return lines + ([f"and {rest} more"] if rest > 0 else [])


def in_order(problems: Iterable[Problem]) -> list[Problem]:
    """By file and line; problems on one line keep the order they were found in."""
    return sorted(problems, key=lambda problem: (problem.file, problem.line))


def fold_name(name: str) -> str:
    """A name as the registry compares it: SQLite's NOCASE folds ASCII letters only."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
