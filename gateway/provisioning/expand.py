"""`$VAR`, `${VAR}` and `$$` inside provisioning values.

Grafana splits each value on `$$` and runs Go's `os.ExpandEnv` on the pieces, so `$$` is a
literal `$` and an unset variable silently becomes "". We keep the syntax and are stricter where
silence hides mistakes:

- an unset variable is a problem (a literal `$` in a password would otherwise vanish); a variable
  that is set but empty expands to "", as in Grafana;
- `${...}` must hold a plain name (letters, digits, `_`) and be closed;
- a `$` followed by anything else (`$1`, `$-`, a space, the end) stays as it is;
- Grafana's `$__file{…}`, `$__env{…}` and `$__vault{…}` expanders are not supported and say so.

Problems name the variable, never a value: values from the environment are often secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_REFERENCE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)(?P<closed>\}?)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GRAFANA_EXPANDERS = frozenset({"__file", "__env", "__vault"})


@dataclass(frozen=True, slots=True)
class Expansion:
    text: str
    problems: tuple[str, ...] = ()


def expand(text: str, environ: Mapping[str, str]) -> Expansion:
    """`text` with every variable reference replaced from `environ`."""
    if "$" not in text:
        return Expansion(text)
    pieces: list[str] = []
    problems: list[str] = []
    position = 0
    for match in _REFERENCE.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        if match["dollar"]:
            pieces.append("$")
            continue
        name, problem = _variable(match, text)
        if problem is None and name not in environ:
            problem = f"environment variable {name} is not set (write $$ for a literal $)"
        if problem is not None:
            problems.append(problem)
        else:
            pieces.append(environ[name])
    pieces.append(text[position:])
    return Expansion("".join(pieces), tuple(problems))


def _variable(match: re.Match[str], text: str) -> tuple[str, str | None]:
    """The variable a reference names, or a problem with the reference itself."""
    bare = match["bare"]
    if bare is not None:
        if bare in _GRAFANA_EXPANDERS and text.startswith("{", match.end()):
            return bare, f"Grafana's ${bare}{{...}} is not supported: use an environment variable"
        return bare, None
    braced = match["braced"]
    if not match["closed"]:
        return braced, "'${' has no closing '}'"
    if not _NAME.fullmatch(braced):
        return braced, f"'${{{braced}}}' is not a variable reference (letters, digits and _ only)"
    return braced, None
