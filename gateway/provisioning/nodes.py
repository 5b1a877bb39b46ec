"""Typed values out of composed YAML nodes, each problem recorded with the line it came from.

The files are composed (not loaded) so every value keeps its position. Variables are expanded
in each scalar's text *after* the YAML structure is read and *before* the value is given its
type, as Grafana does: `isDefault: $IS_DEFAULT` and `orgId: ${ORG}` work, and a variable can
never add keys or list items. Inside jsonData the YAML types are kept; string scalars are
expanded and stay strings (Grafana: `timeout: $T` gives the string "30").

Messages quote the file's own text, never an expanded value: values from the environment are
often secrets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from yaml import MappingNode, Node, ScalarNode, SequenceNode
from yaml.constructor import SafeConstructor

from gateway.provisioning.expand import expand
from gateway.provisioning.model import Place, Problem
from gateway.registry.models import UNSTORABLE_TEXT
from gateway.registry.rules import parse_int64

_TAG = "tag:yaml.org,2002:"
NULL, BOOL, INT, FLOAT, STR = (_TAG + name for name in ("null", "bool", "int", "float", "str"))
TIMESTAMP, MERGE = _TAG + "timestamp", _TAG + "merge"
# What YAML 1.1 reads as a bool (PyYAML's and Go yaml.v2's resolvers), quoted or not.
_BOOL_SPELLINGS = frozenset(
    spelling
    for word in ("yes", "no", "true", "false", "on", "off")
    for spelling in (word, word.capitalize(), word.upper())
)
# SQLite cannot store a lone surrogate (os.environ holds one for every byte that is not UTF-8)
# and a NUL has no place in a name, URL or header.
MAX_DEPTH = 64  # deeper is a mistake, or an alias that contains itself
MAX_VALUES = 100_000  # aliases can multiply a small file ("billion laughs")
_SHOWN_LENGTH = 60


class Field(NamedTuple):
    key: Node
    value: Node


class NodeReader:
    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self._environ = environ
        self._constructor = SafeConstructor()
        self._values_left = MAX_VALUES

    def place(self, node: Node) -> Place:
        return Place(self.file, node.start_mark.line + 1)

    def report(self, node: Node, message: str) -> None:
        self.problems.append(self.place(node).problem(message))

    # --- mappings ------------------------------------------------------------------------------

    def fields(
        self,
        node: Node,
        what: str,
        allowed: Collection[str],
        *,
        ignored: Collection[str] = (),
        hints: Mapping[str, str] | None = None,
    ) -> dict[str, Field] | None:
        """A mapping's fields by key; unknown keys are problems (a typo must not pass)."""
        pairs = self.mapping(node, what)
        if pairs is None:
            return None
        for key, field in pairs.items():
            if key not in allowed and key not in ignored:
                hint = (hints or {}).get(key, "")
                # The APIs' words (gateway/registry/validation.py), the key JSON-quoted.
                self.report(field.key, f"{shown(key)[1:-1]}: unknown field{hint}")
        return {key: field for key, field in pairs.items() if key in allowed}

    def mapping(self, node: Node, what: str, depth: int = 0) -> dict[str, Field] | None:
        """Key → (key node, value node), merge keys (`<<: *anchor`) resolved, last one wins."""
        if not isinstance(node, MappingNode):
            self.report(node, f"{what} must be a mapping")
            return None
        if depth > MAX_DEPTH:
            self.report(node, f"{what} merges too deeply (or merges itself)")
            return None
        merged: dict[str, Field] = {}
        explicit: dict[str, Field] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                merged.update(self._merged(value_node, what, depth))
                continue
            key = self._key(key_node, what)
            if key is None:
                continue
            if key in explicit:
                self.report(key_node, f"duplicate key {shown(key)} in {what}")
            explicit[key] = Field(key_node, value_node)
        return {**merged, **explicit}

    def _merged(self, node: Node, what: str, depth: int) -> dict[str, Field]:
        # YAML's merge rule: in `<<: [*a, *b]` the earlier mapping wins.
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, Field] = {}
        for source in reversed(sources):
            merged.update(self.mapping(source, f"a mapping merged into {what}", depth + 1) or {})
        return merged

    def _key(self, node: Node, what: str) -> str | None:
        if not isinstance(node, ScalarNode):
            self.report(node, f"a key in {what} must be a plain value")
            return None
        if UNSTORABLE_TEXT.search(node.value):
            self.report(node, f"a key in {what} contains a NUL or an invalid character")
            return None
        return str(node.value)

    # --- scalars -------------------------------------------------------------------------------

    def text(self, node: Node, field: str, expected: str = "a string") -> str | None:
        """A string field: any scalar's text, variables expanded; null is "". A list or
        mapping is `expected` (the field's type, in the APIs' words) it is not."""
        if not isinstance(node, ScalarNode):
            self.report(node, f"{field}: must be {expected}, got {node_type(node)}")
            return None
        if node.tag == NULL:
            return ""
        expansion = expand(node.value, self._environ)
        for problem in expansion.problems:
            self.report(node, f"{field}: {problem}")
        if UNSTORABLE_TEXT.search(expansion.text):
            self.report(node, f"{field}: must not contain NUL characters or lone surrogates")
            return None
        return expansion.text

    def flag(self, node: Node, field: str) -> bool | None:
        """A bool field (None when empty), after expansion. Quoted "true" counts, as in Grafana."""
        text = self.text(node, field, "a boolean")
        if not text:
            return None
        if text not in _BOOL_SPELLINGS:
            self.report(node, f"{field}: must be a boolean, got {node_type(node)}")
            return None
        return SafeConstructor.bool_values[text.lower()]

    def integer(self, node: Node, field: str) -> int | None:
        """An integer field (None when empty), after expansion."""
        text = self.text(node, field, "a whole number")
        if not text:
            return None
        number = parse_int64(text)
        if number is None:
            self.report(node, f"{field}: must be a whole number, got {node_type(node)}")
        return number

    # --- jsonData and secureJsonData ----------------------------------------------------------

    def json_object(self, node: Node, field: str) -> dict[str, Any]:
        """jsonData: a mapping (null is {}) of JSON values."""
        if isinstance(node, ScalarNode) and node.tag == NULL:
            return {}
        if not isinstance(node, MappingNode):
            self.report(node, f"{field}: must be an object, got {node_type(node)}")
            return {}
        value = self._json(node, field, 0)
        return value if isinstance(value, dict) else {}

    def _json(self, node: Node, field: str, depth: int) -> Any:
        self._values_left -= 1
        if self._values_left == 0:
            self.report(node, f"{field}: too many values (aliases repeated too often?)")
        if self._values_left <= 0:
            return None
        if depth > MAX_DEPTH:
            self.report(node, f"{field}: nested too deeply (or contains itself)")
            return None
        if isinstance(node, MappingNode):
            pairs = self.mapping(node, field, depth) or {}
            return {
                key: self._json(item.value, f"{field}.{key}", depth + 1)
                for key, item in pairs.items()
            }
        if isinstance(node, SequenceNode):
            return [
                self._json(item, f"{field}[{index}]", depth + 1)
                for index, item in enumerate(node.value)
            ]
        return self._json_scalar(node, field)

    def _json_scalar(self, node: Node, field: str) -> Any:
        if node.tag in (STR, TIMESTAMP):  # JSON has no dates: a date stays the text it was
            return self.text(node, field)
        if node.tag == NULL:
            return None
        if node.tag in (BOOL, INT, FLOAT):
            value = self._constructor.construct_object(node)
            if isinstance(value, float) and not math.isfinite(value):
                self.report(node, f"{field}: must be a finite number (JSON has no NaN or infinity)")
                return None
            return value
        self.report(node, f"{field}: YAML tag {shown(node.tag)} is not supported in jsonData")
        return None

    def secrets(self, node: Node, field: str) -> dict[str, str]:
        """secureJsonData: a mapping of strings; empty values are dropped (nothing to keep)."""
        if isinstance(node, ScalarNode) and node.tag == NULL:
            return {}
        pairs = self.mapping(node, field) or {}
        values = {key: self.text(item.value, f"{field}.{key}") for key, item in pairs.items()}
        return {key: value for key, value in values.items() if value}


def shown(text: str) -> str:
    """File text quoted for a message as JSON quotes it (as the APIs do), cut short."""
    if len(text) > _SHOWN_LENGTH:
        text = text[: _SHOWN_LENGTH - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def shown_value(node: ScalarNode) -> str:
    """A scalar as JSON would show it: a YAML number as written (`2`), text quoted (`"2"`)."""
    if node.tag in (INT, FLOAT, BOOL, NULL):
        return str(node.value)[:_SHOWN_LENGTH]
    return shown(str(node.value))


def node_type(node: Node) -> str:
    """A value's type in the APIs' words ("a string", "an array", …), by its YAML tag: the
    text itself may come from a variable, whose value is never shown."""
    if isinstance(node, MappingNode):
        return "an object"
    if isinstance(node, SequenceNode):
        return "an array"
    if node.tag == NULL:
        return "null"
    if node.tag == BOOL:
        return "a boolean"
    if node.tag in (INT, FLOAT):
        return "a number"
    return "a string"
