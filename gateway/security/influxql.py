"""Whether an InfluxQL query only reads: its statements, split and named the way influxd does.

InfluxDB 1.x parses the whole query before it runs any statement (`influxql.Parser.ParseQuery`),
so a query it cannot parse changes nothing; what matters is that every query it *can* parse is
split into the same statements here, with the same first words. That takes InfluxQL's lexical
rules (github.com/influxdata/influxql, `scanner.go`):

- `'strings'` and `"identifiers"` end at the first unescaped quote and never span a line; a bare
  word directly followed by a quoted one is one identifier (`abc"x"` is `x`);
- comments are `-- …` to the end of the line and `/* … */`;
- a `/regex/` is read only where the parser asks for one (after `SELECT`, `FROM`, `BY`, `,`,
  `(`, `=`, `=~`, `!~`, and after `.` in a measurement path, as in `FROM "rp"./cpu.*/`);
  everywhere else `/` divides. Inside it only `\\/` is an escape.

Read-only statements: `SELECT` without `INTO`, `SHOW …`, and `EXPLAIN [ANALYZE] [VERBOSE] SELECT`
without `INTO` (EXPLAIN ANALYZE runs the query but drains its rows: it writes nothing, even with
an `INTO`, which is refused anyway). Everything else names itself (`DROP DATABASE`, `DELETE`,
`KILL QUERY`, …); a query the lexer cannot follow is not read-only.
"""

from __future__ import annotations

import re
from typing import Final

# Tokens, as (kind, text). Kinds: a bare word (upper-cased), an operand (a quoted identifier,
# string, number, regex or bound parameter: its text does not matter), punctuation, `;`.
_WORD: Final = "word"
_OPERAND: Final = "operand"
_PUNCT: Final = "punct"

_QUOTED = r"(?:[^\"\\\n]|\\.)*+"  # an identifier's text, escapes included; possessive as influxd
# One token and the blanks before it (fewer matches: blanks are half of a query's pieces).
_TOKEN = re.compile(
    r"""
    [ \t\n\r]*+
    (?:
      (?P<line_comment>--[^\n]*+)
    | (?P<block_comment>/\*(?s:.*?)\*/)
    | (?P<open_comment>/\*)
    | (?P<string>'(?:[^'\\\n]|\\.)*+')
    | (?P<quoted>"QUOTED")
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*+)(?P<glued>"QUOTED")?
    | (?P<number>[0-9]++(?:\.[0-9]*+|[A-Za-zµ][A-Za-zµ0-9]*+)?|\.[0-9]++)
    | (?P<param>\$(?:[A-Za-z0-9_]*+(?:"QUOTED")?))
    | (?P<slash>/(?!\*))
    | (?P<punct>=~|!~|!=|<>|<=|>=|::|[-+*%&|^=<>(),:.])
    | (?P<semicolon>;)
    | (?P<end>\Z)
    )
    """.replace("QUOTED", _QUOTED),
    re.VERBOSE,
)
# The tokens that start with `/`: each opens a regex where influxd reads one.
_SLASHES = frozenset({"slash", "block_comment", "open_comment"})
# InfluxQL's regex literal: `\/` is the only escape, any other backslash stands for itself.
_REGEX = re.compile(r"/(?:[^/\\\n]++|\\/?+)*+/")

# After these a `/` opens a regex (influxd calls `parseRegex` there); elsewhere it divides.
_REGEX_AFTER_WORDS = frozenset({"SELECT", "FROM", "BY"})
_REGEX_AFTER_PUNCT = frozenset({",", "(", "=", "=~", "!~"})

# The statements influxd's parse tree names by more than one word (influxql `parse_tree.go`).
_STATEMENT_NAMES: Final = {
    ("CREATE", "CONTINUOUS", "QUERY"),
    ("CREATE", "DATABASE"),
    ("CREATE", "USER"),
    ("CREATE", "RETENTION", "POLICY"),
    ("CREATE", "SUBSCRIPTION"),
    ("DROP", "CONTINUOUS", "QUERY"),
    ("DROP", "DATABASE"),
    ("DROP", "MEASUREMENT"),
    ("DROP", "RETENTION", "POLICY"),
    ("DROP", "SERIES"),
    ("DROP", "SHARD"),
    ("DROP", "SUBSCRIPTION"),
    ("DROP", "USER"),
    ("ALTER", "RETENTION", "POLICY"),
    ("SET", "PASSWORD"),
    ("KILL", "QUERY"),
}
_WRITING_FIRST_WORDS = frozenset(
    {"CREATE", "DROP", "DELETE", "ALTER", "GRANT", "REVOKE", "SET", "KILL"}
)


class Unclassifiable(ValueError):
    """The query could not be followed far enough to say what it does."""


def influxql_refusal(query: str) -> str | None:
    """None when every statement of `query` only reads; else what the first other one is, in
    words for a refusal ("DROP DATABASE", "SELECT … INTO", or why it could not be classified)."""
    try:
        statements = split_statements(query)
    except Unclassifiable as exc:
        return f"an InfluxQL query that could not be classified as read-only ({exc})"
    for statement in statements:
        refusal = _statement_refusal(statement)
        if refusal is not None:
            return refusal
    return None


def split_statements(query: str) -> list[list[tuple[str, str]]]:
    """The query's statements, each a list of its significant tokens (no blanks, no comments);
    empty statements (`;;`) are left out. Unclassifiable when the lexer cannot follow it."""
    statements: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    path = _Path.OUT
    position = 0
    end = len(query)
    while position < end:
        match = _TOKEN.match(query, position)
        if match is None:
            raise Unclassifiable(_unexpected(query, position))
        kind = match.lastgroup or ""
        if kind in _SLASHES and _regex_may_start(current, path):
            start = match.start(kind)  # influxd reads a regex here, even one starting `/*`
            regex = _REGEX.match(query, start)
            if regex is None:
                raise Unclassifiable(f"an unterminated regex at offset {start}")
            token = (_OPERAND, "regex")
            position = regex.end()
        else:
            position = match.end()
            if kind == "word":
                token = (_WORD, match.group(kind).upper())
            elif kind == "punct" or kind == "slash":
                token = (_PUNCT, match.group(kind))
            elif kind in ("line_comment", "block_comment", "end"):
                continue
            elif kind == "open_comment":
                raise Unclassifiable(f"an unterminated comment at offset {match.start(kind)}")
            elif kind == "semicolon":
                if current:
                    statements.append(current)
                current = []
                path = _Path.OUT
                continue
            else:
                token = _token(kind, match)
        if path != _Path.OUT or token in _PATH_STARTS:
            path = _path_after(path, current[-1] if current else None, token)
        current.append(token)
    if current:
        statements.append(current)
    return statements


def _token(kind: str | None, match: re.Match[str]) -> tuple[str, str]:
    if kind in ("word", "glued"):  # `glued`: the last group of a word followed by a quoted one
        word = match.group("word").upper()
        # influxd reads `INTO"m"` as the identifier `m` (and then fails to parse the query);
        # an INTO that close to a name is taken as one anyway: refused, never read past.
        if match.group("glued") is None or word == "INTO":
            return _WORD, word
    if kind == "punct":
        return _PUNCT, match.group("punct")
    return _OPERAND, "quoted" if kind == "glued" else kind or ""


_PATH_STARTS = frozenset({(_WORD, "FROM"), (_PUNCT, "="), (_PUNCT, "=~")})


class _Path:
    """Where a measurement path (`db.rp.m`, `"rp"./cpu.*/`, a list of them) stands: only in one
    does `.` followed by `/` open a regex; in an expression (`a./2`) it divides."""

    OUT = 0
    SEGMENT = 1  # after FROM, a `.` or a `,` of the path: an identifier or regex comes next
    SEPARATOR = 2  # after a segment: a `.` or `,` continues the path


def _path_after(path: int, previous: tuple[str, str] | None, token: tuple[str, str]) -> int:
    kind, text = token
    if kind == _WORD and text == "FROM":
        return _Path.SEGMENT
    if kind == _PUNCT and text in ("=", "=~") and previous == (_WORD, "MEASUREMENT"):
        return _Path.SEGMENT  # SHOW MEASUREMENTS WITH MEASUREMENT = db.rp./re/
    if path == _Path.SEGMENT:
        if kind == _WORD or (kind == _OPERAND and text in ("quoted", "regex")):
            return _Path.SEPARATOR
        return _Path.SEGMENT if token == (_PUNCT, ".") else _Path.OUT
    if path == _Path.SEPARATOR and kind == _PUNCT and text in (".", ","):
        return _Path.SEGMENT
    return _Path.OUT


def _regex_may_start(tokens: list[tuple[str, str]], path: int) -> bool:
    """Whether influxd would read a regex at a `/` that follows `tokens` (see the module doc)."""
    if not tokens:
        return False
    kind, text = tokens[-1]
    if kind == _WORD:
        return text in _REGEX_AFTER_WORDS
    if kind == _PUNCT:
        return text in _REGEX_AFTER_PUNCT or (text == "." and path == _Path.SEGMENT)
    return False


def _unexpected(query: str, position: int) -> str:
    position = len(query) - len(query[position:].lstrip(" \t\n\r"))
    character = query[position]
    if character in "'\"":
        return f"an unterminated quoted text at offset {position}"
    return f"the character {character!r} at offset {position}"


def _statement_refusal(tokens: list[tuple[str, str]]) -> str | None:
    words = [text if kind == _WORD else "" for kind, text in tokens]
    first = words[0]
    if first == "SHOW":
        return None
    if first == "SELECT":
        return "SELECT … INTO" if "INTO" in words else None
    if first == "EXPLAIN":
        rest = words[1:]
        for optional in ("ANALYZE", "VERBOSE"):
            if rest[:1] == [optional]:
                rest = rest[1:]
        if rest[:1] != ["SELECT"]:
            return _unknown(words)
        return "EXPLAIN SELECT … INTO" if "INTO" in rest else None
    if first in _WRITING_FIRST_WORDS:
        return _statement_name(words)
    return _unknown(words)


def _statement_name(words: list[str]) -> str:
    for length in (3, 2):
        if tuple(words[:length]) in _STATEMENT_NAMES:
            return " ".join(words[:length])
    return words[0]


def _unknown(words: list[str]) -> str:
    head = words[0] or "a quoted name or literal"
    return (
        f"an InfluxQL statement that could not be classified as read-only (it starts with {head})"
    )
