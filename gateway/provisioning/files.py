"""Reading the provisioning folder: Grafana's data source format (`apiVersion: 1`), checked.

`read_folder` never touches the database: it is what `gateway provision --check` runs, and the
first half of every apply. Problems that need the registry (an org that does not exist, a name
taken by a source the files do not manage) are found when applying.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml import Node, ScalarNode, SequenceNode

from gateway.errors import BadRequest
from gateway.provisioning.model import (
    DeleteRef,
    DesiredSource,
    Place,
    Problem,
    ProvisioningFile,
    fold_name,
    in_order,
)
from gateway.provisioning.nodes import INT, NULL, Field, NodeReader, shown
from gateway.registry.models import (
    DEFAULT_ORG_ID,
    MAX_NAME_LENGTH,
    SOURCE_FIELDS,
    UID_PATTERN,
    DataSourceSpec,
    FieldKind,
    SourceField,
)
from gateway.registry.rules import ACCESS_MODES, check_url, target_problems

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
    _, problems = read_folder(path, environ)
    return [str(problem) for problem in problems]


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
        reader.report(node, f"apiVersion must be {API_VERSION}, not a list or mapping")
        return False
    if node.tag != INT or node.value != str(API_VERSION):
        reader.report(node, f"apiVersion must be {API_VERSION}, not {shown(node.value)}")
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
        """A source field, read by its kind and checked by the rule for it, if any."""
        special = _SPECIAL_FIELDS.get(field.attribute)
        if special is not None:
            return special(self)
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
            self.report("orgId", f"orgId must be a positive number, not {shown(self.raw('orgId'))}")
        # Grafana reads an absent orgId, or 0, as the default org.
        return number or DEFAULT_ORG_ID


def _required(entry: _Entry, key: str) -> str:
    value = entry.text(key)
    if not value and key not in entry.failed:
        entry.report(key, f"{key} is required")
    return value


def _name(entry: _Entry) -> str:
    name = _required(entry, "name")
    if len(name) > MAX_NAME_LENGTH:
        entry.report("name", f"name is longer than {MAX_NAME_LENGTH} characters")
    return name


def _uid(entry: _Entry) -> str:
    uid = entry.text("uid")
    if uid and not UID_PATTERN.fullmatch(uid):
        entry.report(
            "uid",
            f"uid {shown(entry.raw('uid'))} is invalid: 1 to 40 letters, digits, '-' or '_'",
        )
    return uid


def _access(entry: _Entry) -> str:
    access = entry.text("access") or "proxy"
    if access not in ACCESS_MODES:
        entry.report("access", f"access must be proxy or direct, not {shown(entry.raw('access'))}")
    return access


def _url(entry: _Entry) -> str:
    url = entry.text("url")
    if url:
        try:
            check_url(url)  # the Grafana API's own rule: an absolute http(s) URL with a host
        except BadRequest as exc:
            # The URL itself is not quoted: it may carry credentials.
            entry.report("url", f"url is not valid: {exc.message}")
    return url


def _json_data(entry: _Entry) -> dict[str, Any]:
    json_data = entry.json("jsonData")
    # The same rules as the APIs' for replicaUrls, loadBalancing and retry; each message names
    # its entry (`jsonData.replicaUrls[1]: ...`) and never quotes a URL.
    for problem in target_problems(json_data):
        entry.report("jsonData", problem)
    return json_data


# Fields with a rule beyond their kind's.
_SPECIAL_FIELDS: dict[str, Callable[[_Entry], Any]] = {
    "name": _name,
    "type": lambda entry: _required(entry, "type"),
    "access": _access,
    "url": _url,
    "uid": _uid,
    "json_data": _json_data,
}


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
