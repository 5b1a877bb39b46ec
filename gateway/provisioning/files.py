"""Reading the provisioning folder: Grafana's data source format (`apiVersion: 1`), checked.

`read_folder` never touches the database: it is what `gateway provision --check` runs, and the
first half of every apply. Problems that need the registry (an org that does not exist, a name
taken by a source the files do not manage) are found when applying.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml import Node, ScalarNode, SequenceNode

from gateway.provisioning.model import (
    DeleteRef,
    DesiredSource,
    Place,
    Problem,
    ProvisioningFile,
    fold_name,
    in_order,
)
from gateway.provisioning.nodes import INT, NULL, Field, NodeReader, node_type, shown_value
from gateway.registry.models import (
    DEFAULT_ORG_ID,
    SOURCE_FIELDS,
    DataSourceSpec,
    FieldKind,
    SourceField,
)
from gateway.registry.validation import Violation, shown as shown_json, source_violations

SUFFIXES = (".yaml", ".yml")
API_VERSION = 1
TOP_LEVEL_FIELDS = frozenset({"apiVersion", "datasources", "deleteDatasources", "prune"})
# A file sets every source field but two: `editable` stands for readOnly (inverted), and the
# apiVersion of Grafana's plugin SDK has no place in a file. Grafana's per-source `version` is
# read and ignored.
_FILE_FIELDS = tuple(
    field for field in SOURCE_FIELDS if field.attribute not in ("read_only", "api_version")
)
ENTRY_FIELDS = frozenset(
    {field.json_name for field in _FILE_FIELDS} | {"orgId", "version", "editable"}
)
# Grafana features the gateway has no counterpart for: accepted so Grafana's files load as they
# are, and ignored.
IGNORED_SOURCE_FIELDS = frozenset({"correlations", "description"})
DELETE_FIELDS = frozenset({"name", "orgId"})
_HINTS = {"orgName": " (not supported: give orgId)"}

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def read_folder(
    folder: Path, environ: Mapping[str, str]
) -> tuple[list[ProvisioningFile], list[Problem]]:
    """Every `*.yaml`/`*.yml` directly in `folder`, in name order, and every problem in them.

    A folder that does not exist holds nothing to provision.
    """
    if not folder.exists():
        return [], []
    try:
        paths = sorted(path for path in folder.iterdir() if _is_provisioning_file(path))
    except OSError as exc:
        return [], [Problem(str(folder), 0, f"cannot list the folder: {exc.strerror}")]
    files: list[ProvisioningFile] = []
    problems: list[Problem] = []
    for path in paths:
        parsed, file_problems = read_file(path, environ)
        problems += file_problems
        if parsed is not None:
            files.append(parsed)
    problems += _conflicts_between_entries(files)
    return files, in_order(problems)


def check_files(path: Path, environ: Mapping[str, str]) -> list[str]:
    """Every problem in the provisioning files as `file:line: message`; touches no database."""
    _, problems = read_folder_to_check(path, environ)
    return [str(problem) for problem in problems]


def read_folder_to_check(
    folder: Path, environ: Mapping[str, str]
) -> tuple[list[ProvisioningFile], list[Problem]]:
    """`read_folder` for `gateway provision --check`: there a folder that does not exist is
    a problem (a mistyped path must not pass as "ok"), though at start-up it holds nothing."""
    if not folder.exists():
        return [], [Problem(str(folder), 0, "the folder does not exist")]
    return read_folder(folder, environ)


def _is_provisioning_file(path: Path) -> bool:
    return path.suffix in SUFFIXES and path.is_file()


def read_file(
    path: Path, environ: Mapping[str, str]
) -> tuple[ProvisioningFile | None, list[Problem]]:
    display = str(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        return None, [Problem(display, 0, f"cannot read the file: {exc.strerror}")]
    try:
        root = yaml.compose(content, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        return None, [_syntax_problem(display, content, exc)]
    except RecursionError:
        return None, [Problem(display, 0, "the YAML is nested too deeply")]
    reader = NodeReader(display, environ)
    parsed = _document(reader, path.name, root)
    return (parsed if not reader.problems else None), reader.problems


def _syntax_problem(display: str, content: bytes, exc: yaml.YAMLError) -> Problem:
    """PyYAML's own words and line, without the excerpt of the file it would print."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        words = "; ".join(part for part in (exc.context, exc.problem) if part)
        return Problem(display, exc.problem_mark.line + 1, f"invalid YAML: {words}")
    if isinstance(exc, yaml.reader.ReaderError):
        line = content[: exc.position].count(b"\n") + 1
        return Problem(display, line, f"not valid {exc.encoding} text ({exc.reason})")
    return Problem(display, 0, "invalid YAML")


# --- one file ---------------------------------------------------------------------------------


def _document(reader: NodeReader, name: str, root: Node | None) -> ProvisioningFile | None:
    if root is None:  # empty, or only comments (like the shipped example)
        return ProvisioningFile(name)
    top = reader.fields(root, "the file", TOP_LEVEL_FIELDS)
    if top is None or not _has_api_version_1(reader, root, top.get("apiVersion")):
        return None
    prune = reader.flag(top["prune"].value, "prune") if "prune" in top else None
    return ProvisioningFile(
        name=name,
        sources=tuple(_entries(reader, top.get("datasources"), "datasources", _source)),
        deletes=tuple(_entries(reader, top.get("deleteDatasources"), "deleteDatasources", _delete)),
        prune=bool(prune),
        prune_place=reader.place(top["prune"].key) if "prune" in top else None,
    )


def _has_api_version_1(reader: NodeReader, root: Node, field: Field | None) -> bool:
    # Not expanded: Grafana reads the version before anything else, as a plain number.
    if field is None:
        reader.report(root, f"apiVersion: {API_VERSION} is missing (older formats are not read)")
        return False
    node = field.value
    if not isinstance(node, ScalarNode):
        reader.report(node, f"apiVersion: must be {API_VERSION}, got {node_type(node)}")
        return False
    if node.tag != INT or node.value != str(API_VERSION):
        reader.report(node, f"apiVersion: must be {API_VERSION}, got {shown_value(node)}")
        return False
    return True


def _entries(
    reader: NodeReader,
    field: Field | None,
    what: str,
    parse: Callable[[NodeReader, Node], T | None],
) -> Iterator[T]:
    if field is None or (isinstance(field.value, ScalarNode) and field.value.tag == NULL):
        return
    if not isinstance(field.value, SequenceNode):
        reader.report(field.value, f"{what} must be a list")
        return
    for node in field.value.value:
        entry = parse(reader, node)
        if entry is not None:
            yield entry


def _source(reader: NodeReader, node: Node) -> DesiredSource | None:
    fields = reader.fields(
        node, "a data source", ENTRY_FIELDS, ignored=IGNORED_SOURCE_FIELDS, hints=_HINTS
    )
    if fields is None:
        return None
    entry = _Entry(reader, node, fields)
    values = {field.attribute: entry.read(field) for field in _FILE_FIELDS}
    spec = DataSourceSpec(**values, read_only=not entry.flag("editable"))  # Grafana's default
    _check_source(entry, spec)
    # Grafana's per-source `version` is checked and otherwise ignored: the registry keeps its own.
    entry.integer("version")
    return DesiredSource(reader.place(node), entry.org_id(), spec)


def _delete(reader: NodeReader, node: Node) -> DeleteRef | None:
    fields = reader.fields(node, "a deleteDatasources entry", DELETE_FIELDS, hints=_HINTS)
    if fields is None:
        return None
    entry = _Entry(reader, node, fields)
    return DeleteRef(reader.place(node), entry.org_id(), _required(entry, "name"))


class _Entry:
    """One list entry's fields, read with their defaults; problems go to the reader."""

    def __init__(self, reader: NodeReader, node: Node, fields: dict[str, Field]) -> None:
        self._reader = reader
        self._node = node
        self._fields = fields
        self.failed: set[str] = set()

    def raw(self, key: str) -> str:
        """The field's text as written in the file (safe to quote: nothing expanded)."""
        node = self._fields[key].value
        return str(node.value) if isinstance(node, ScalarNode) else ""

    def report(self, key: str, message: str) -> None:
        field = self._fields.get(key)
        self._reader.report(self._node if field is None else field.value, message)

    def text(self, key: str) -> str:
        """The field's expanded text; "" when absent, or when it had a problem (then the key
        is in `failed`, so checks of its value do not pile more messages on the same line)."""
        field = self._fields.get(key)
        if field is None:
            return ""
        known = len(self._reader.problems)
        value = self._reader.text(field.value, key)
        if value is None or len(self._reader.problems) > known:
            self.failed.add(key)
            return ""
        return value

    def flag(self, key: str) -> bool:
        field = self._fields.get(key)
        return field is not None and bool(self._reader.flag(field.value, key))

    def integer(self, key: str) -> int | None:
        field = self._fields.get(key)
        return None if field is None else self._reader.integer(field.value, key)

    def json(self, key: str) -> dict[str, Any]:
        field = self._fields.get(key)
        return {} if field is None else self._reader.json_object(field.value, key)

    def secrets(self, key: str) -> dict[str, str]:
        field = self._fields.get(key)
        return {} if field is None else self._reader.secrets(field.value, key)

    def read(self, field: SourceField) -> Any:
        """A source field, read by its kind (its rules are checked on the whole source)."""
        if field.attribute == "name":
            return _required(self, "name")
        if field.attribute == "access":
            return self.text("access") or "proxy"  # Grafana's default in a file
        if field.kind is FieldKind.FLAG:
            return self.flag(field.json_name)
        if field.kind is FieldKind.OBJECT:
            return self.json(field.json_name)
        if field.kind is FieldKind.SECRETS:
            return self.secrets(field.json_name)
        return self.text(field.json_name)

    def org_id(self) -> int:
        number = self.integer("orgId")
        if number is not None and number < 0:
            self.report("orgId", f"orgId: must be a positive number, got {number}")
        # Grafana reads an absent orgId, or 0, as the default org.
        return number or DEFAULT_ORG_ID


def _required(entry: _Entry, key: str) -> str:
    value = entry.text(key)
    if not value and key not in entry.failed:
        entry.report(key, f"{key}: required")
    return value


def _check_source(entry: _Entry, spec: DataSourceSpec) -> None:
    """The registry's source rules, the APIs' own (gateway/registry/validation.py), each
    problem reported on its field's line. A field that already had a problem (a bad variable,
    a wrong YAML type) is not judged again."""
    for violation in source_violations(spec):
        key = _TOP_KEY.match(violation.field)
        field = key.group(0) if key else violation.field
        if field in entry.failed:
            continue
        if violation.field == "access" and violation.got:
            # The file's own text, not the expanded value (which may come from a secret).
            violation = Violation(
                violation.field, violation.problem, shown_json(entry.raw("access"))
            )
        entry.report(field, violation.message())


_TOP_KEY = re.compile(r"[A-Za-z]+")


# --- across files -----------------------------------------------------------------------------


def _conflicts_between_entries(files: list[ProvisioningFile]) -> list[Problem]:
    """Names and uids are unique per org, and one source per org may be the default."""
    names: dict[tuple[int, str], Place] = {}
    uids: dict[tuple[int, str], Place] = {}
    defaults: dict[int, Place] = {}
    problems: list[Problem] = []
    for source in (source for file in files for source in file.sources):
        org, spec, place = source.org_id, source.spec, source.place
        name_key = (org, fold_name(spec.name))
        problems += _claim(
            names, name_key, place, f"another data source of org {org} has this name"
        )
        if spec.uid:
            problems += _claim(
                uids, (org, spec.uid), place, f"another data source of org {org} has this uid"
            )
        if spec.is_default:
            problems += _claim(
                defaults, org, place, f"only one data source of org {org} can be the default"
            )
    return problems


def _claim(seen: dict[K, Place], key: K, place: Place, message: str) -> list[Problem]:
    first = seen.setdefault(key, place)
    return [] if first is place else [place.problem(f"{message} (also at {first})")]
