"""Whether a Flux script only reads, by a conservative rule on its tokens.

Flux changes data or reaches out only through functions with side effects (Flux spec, "Side
effects"): `to()` (universe and `influxdata/influxdb`), `experimental.to()`, `influxdb.wideTo()`,
`sql.to()`, `http.post()`, `requests.do()`, `mqtt.to()`, `slack.message()`, `pagerduty.sendEvent()`,
the `contrib/…` notifiers, `monitor.check()`/`notify()` (they write to `_monitoring`),
`experimental/influxdb.api()`. Aliases (`f = to`) make "is it called?" unanswerable from tokens,
so the rule is about names, not calls:

- the script may import only packages of the read-only allow-list below: those that neither
  write, nor send requests, nor read files or secrets (an unknown or new package is refused);
- the names `to` and `wideTo` may not appear at all (`to(`, `experimental.to`, `f = to`,
  `x["to"]`): the allowed packages `experimental` and `influxdata/influxdb` hold them. A column
  called `to` must then be read as `r["to"]`… which is refused too, as any `["to"]`: write the
  query without that name, or use an editor's token.

Lexing follows the Flux spec: `// comments`, `"strings"` with `\\` escapes and `${…}`
interpolations (whose code is checked like the rest), and `/regex/` literals where an operand is
expected (after an operator, `(`, `,`, `:`, a keyword…), so neither a string nor a regex can hide a
name from the check, and a division never swallows one.
"""

from __future__ import annotations

import re
from typing import Final

# Packages that only compute or read through the query's own InfluxDB connection.
READ_ONLY_PACKAGES: Final = frozenset(
    {
        "array",
        "bitwise",
        "date",
        "date/boundaries",
        "dict",
        "experimental",  # its `to` is refused by name
        "experimental/aggregate",
        "experimental/array",
        "experimental/bitwise",
        "experimental/date/boundaries",
        "experimental/geo",
        "experimental/json",
        "experimental/oee",
        "experimental/query",
        "experimental/record",
        "experimental/table",
        "generate",
        "influxdata/influxdb",  # its `to` and `wideTo` are refused by name
        "influxdata/influxdb/schema",
        "influxdata/influxdb/v1",
        "interpolate",
        "join",
        "json",
        "math",
        "regexp",
        "runtime",
        "strings",
        "system",
        "timezone",
        "types",
        "universe",
    }
)
WRITING_NAMES: Final = frozenset({"to", "wideTo"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>//[^\n]*+)
    | (?P<ident>[^\W\d]\w*+)
    | (?P<number>\d++(?:\.\d++)?)
    | (?P<punct>\|>|<-|=>|==|!=|<=|>=|=~|!~|[-+*/%^<>=(){}\[\],.:?@])
    """,
    re.VERBOSE,
)
_REGEX = re.compile(r"/(?:[^/\\\n]++|\\/?+)*+/")
# In a string: the next character that ends it, escapes, or opens an interpolation.
_STRING_STOP = re.compile(r'["\\]|\$\{')
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "not",
        "import",
        "package",
        "return",
        "option",
        "builtin",
        "testcase",
        "test",
        "if",
        "then",
        "else",
        "exists",
        "with",
    }
)
_OPERAND_END_PUNCT = frozenset({")", "]", "}"})


class Unclassifiable(ValueError):
    """The script could not be followed far enough to say what it does."""


def flux_refusal(script: str) -> str | None:
    """None when `script` passes the read-only rule; else what breaks it, in words for a refusal
    ('Flux\'s to()', 'the Flux package "http"', or why it could not be classified)."""
    try:
        tokens, _ = _scan(script, 0, nested=False)
    except Unclassifiable as exc:
        return f"a Flux script that could not be classified as read-only ({exc})"
    return tokens_refusal(tokens)


def tokens_refusal(tokens: list[tuple[str, str]]) -> str | None:
    """The rule on a token list: allowed imports only, no writing names."""
    for index, (kind, text) in enumerate(tokens):
        if kind == "ident" and text in WRITING_NAMES:
            return f"Flux's {text}()"
        if kind == "ident" and text == "import":
            following = tokens[index + 1 : index + 3]
            path = next((value for kind_, value in following if kind_ == "string"), None)
            if path is None:
                return "a Flux import that could not be classified as read-only"
            if path not in READ_ONLY_PACKAGES:
                return f'the Flux package "{path}"'
        if (kind, text) == ("punct", "[") and index + 1 < len(tokens):
            kind_, value = tokens[index + 1]
            if kind_ == "string" and (value in WRITING_NAMES or not _plain(value)):
                return f'Flux\'s ["{value}"]' if _plain(value) else "a computed Flux index"
    return None


def _plain(text: str) -> bool:
    return "\\" not in text and "${" not in text


def _scan(script: str, position: int, *, nested: bool) -> tuple[list[tuple[str, str]], int]:
    """The tokens from `position` to the end, or, `nested` in an interpolation, to its closing
    `}`; and the position after it. Blanks and comments are left out; a string is one token
    (its raw text) followed by the tokens of its interpolations."""
    tokens: list[tuple[str, str]] = []
    previous: tuple[str, str] | None = None  # for `/`: a division or a regex?
    depth = 0
    end = len(script)
    while position < end:
        character = script[position]
        if character == '"':
            text, inner, position = _scan_string(script, position)
            previous = ("string", text)
            tokens.append(previous)
            tokens.extend(inner)
            continue
        if (
            character == "/"
            and not _operand_ended(previous)
            and script[position + 1 : position + 2] != "/"
        ):
            match = _REGEX.match(script, position)
            if match is None:
                raise Unclassifiable(f"an unterminated regex at offset {position}")
            previous = ("regex", match.group())
            position = match.end()
            continue
        match = _TOKEN.match(script, position)
        if match is None:
            raise Unclassifiable(f"the character {character!r} at offset {position}")
        position = match.end()
        kind = match.lastgroup or ""
        if kind in ("space", "comment"):
            continue
        text = match.group()
        if nested and text == "}" and depth == 0:
            return tokens, position
        if text == "{":
            depth += 1
        elif text == "}":
            depth -= 1
        previous = (kind, text)
        tokens.append(previous)
    if nested:
        raise Unclassifiable("an unterminated ${…} in a string")
    return tokens, position


def _scan_string(script: str, position: int) -> tuple[str, list[tuple[str, str]], int]:
    """The string opening at `position`: its raw text, the tokens of its interpolations, and
    the position after its closing quote."""
    start = position + 1
    position = start
    inner: list[tuple[str, str]] = []
    while True:
        stop = _STRING_STOP.search(script, position)
        if stop is None:
            raise Unclassifiable(f"an unterminated string at offset {start - 1}")
        found = stop.group()
        if found == '"':
            return script[start : stop.start()], inner, stop.end()
        if found == "\\":
            position = stop.end() + 1  # the escaped character, whatever it is
            continue
        tokens, position = _scan(script, stop.end(), nested=True)
        inner.extend(tokens)


def _operand_ended(previous: tuple[str, str] | None) -> bool:
    """Whether the token before a `/` ends an operand: the `/` then divides."""
    if previous is None:
        return False
    kind, text = previous
    if kind == "ident":
        return text not in _KEYWORDS
    if kind == "punct":
        return text in _OPERAND_END_PUNCT
    return True  # a number, string or regex
