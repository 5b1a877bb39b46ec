"""Whether a request to InfluxDB's query endpoints only reads, judged on what InfluxDB will run.

A token below the editor role may query, not change data; but InfluxDB's query endpoints run
statements that write (InfluxQL `DROP`, `DELETE`, `SELECT … INTO`, `GRANT`, …, Flux `to()`), and
the gateway sends them with the source's credentials. So, for such a token, the request that goes
upstream is classified first, finding the query where InfluxDB finds it:

- `/query` (InfluxDB 1.x, `services/httpd/handler.go` `serveQuery`): `r.FormValue("q")`, i.e. the
  `q` of a POST's `application/x-www-form-urlencoded` body first, else of the URL (Go's
  `Request.Form` puts body values before URL ones), else, for `multipart/form-data`, an uploaded
  file `q`. Every `q` of both places is classified, split on `&` and, as Go before 1.17 also
  did, on `;`; a multipart body is refused unread. A GET runs writes too: influxd only adds a
  "deprecated use … in a read only context" warning to its answer. Other parameters
  (`params`, `chunked`, `async`, `db`, `rp`) bind values and shape the answer, never statements.
- `/api/v2/query` (InfluxDB 1.8 and 2.x): an `application/vnd.flux` body is the Flux script;
  any other body is JSON (`query`, `type`, `extern`, … matched without regard to case, as Go's
  decoder does; the first JSON value counts). `type` "flux" (the default) is checked as Flux
  (gateway/security/flux.py), "influxql" as InfluxQL; a compressed body, an `extern` that calls
  or imports anything, or an unknown field is refused.

The InfluxQL rules are in gateway/security/influxql.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote_plus

from gateway.security.flux import WRITING_NAMES, flux_refusal
from gateway.security.influxql import influxql_refusal

# The upstream paths (a route's target, without its base path) whose requests are classified.
V1_QUERY: Final = "query"
V2_QUERY: Final = "api/v2/query"
# A query body is read whole for the check: a query, not data (InfluxDB's own form limit is 10 MB).
QUERY_BODY_LIMIT: Final = 1024 * 1024
_FORM = "application/x-www-form-urlencoded"
_FLUX = "application/vnd.flux"
_JSON_FIELDS = frozenset(
    {"query", "type", "dialect", "now", "params", "extern", "org", "orgid", "organization"}
)
_UNCLASSIFIED = "a query that could not be classified as read-only"
_SEPARATORS = (re.compile("&"), re.compile("[&;]"))


def body_needed(method: str, upstream_path: str, content_type: str | None) -> bool:
    """Whether the check needs the request body: InfluxDB reads the query from it."""
    if method != "POST":
        return False
    if upstream_path == V1_QUERY:
        return media_type(content_type) == _FORM
    return True


def query_refusal(
    method: str,
    upstream_path: str,
    query_string: str,
    content_type: str | None,
    content_encoding: str | None,
    body: bytes | None,
) -> str | None:
    """None when the request only reads; else what in it does not, in words for a refusal.
    `body` is the request body when `body_needed` said so (else None)."""
    if upstream_path == V1_QUERY:
        return _v1_refusal(method, query_string, content_type, body)
    if upstream_path == V2_QUERY:
        return _v2_refusal(content_type, content_encoding, body or b"")
    return f"{_UNCLASSIFIED} (an unknown query endpoint)"


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type, lower-cased, as Go's mime.ParseMediaType reads it."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _v1_refusal(
    method: str, query_string: str, content_type: str | None, body: bytes | None
) -> str | None:
    queries = list(form_values(query_string, "q"))
    if method == "POST":
        kind = media_type(content_type)
        if kind == _FORM:
            queries.extend(form_values((body or b"").decode("utf-8", "replace"), "q"))
        elif "multipart" in kind or "form" in kind:
            return f"{_UNCLASSIFIED} (a {kind} body, whose q may be an uploaded file)"
    for query in dict.fromkeys(queries):  # each distinct one once
        refusal = influxql_refusal(query)
        if refusal is not None:
            return refusal
    return None


def form_values(encoded: str, name: str) -> Iterator[str]:
    """Every value of `name` in an URL-encoded form, split on `&` and, as older Go did, also on
    `;`: whichever way influxd splits it, its values are among these."""
    for separator in _SEPARATORS:
        for pair in separator.split(encoded):
            key, _, value = pair.partition("=")
            if unquote_plus(key) == name:
                yield unquote_plus(value)


def _v2_refusal(content_type: str | None, content_encoding: str | None, body: bytes) -> str | None:
    if (content_encoding or "identity").strip().lower() != "identity":
        return f"{_UNCLASSIFIED} (a body with Content-Encoding {content_encoding})"
    text = body.decode("utf-8", "replace")
    if media_type(content_type) == _FLUX:
        return flux_refusal(text)
    try:
        document, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except ValueError:
        return f"{_UNCLASSIFIED} (a body that is neither JSON nor {_FLUX})"
    if not isinstance(document, dict):
        return f"{_UNCLASSIFIED} (a JSON body that is not an object)"
    fields: dict[str, object] = {}
    for key, value in document.items():
        folded = key.casefold()
        if folded not in _JSON_FIELDS or folded in fields:
            return f'{_UNCLASSIFIED} (the field "{key}")'
        fields[folded] = value
    query, kind = fields.get("query"), fields.get("type", "flux")
    if not isinstance(query, str):
        return f'{_UNCLASSIFIED} (no "query" string)'
    if fields.get("extern") is not None and _extern_acts(fields["extern"]):
        return f"{_UNCLASSIFIED} (an extern that calls or imports)"
    if kind in ("flux", None):
        return flux_refusal(query)
    if kind == "influxql":
        return influxql_refusal(query)
    return f"{_UNCLASSIFIED} (the query type {json.dumps(kind)})"


def _extern_acts(node: object) -> bool:
    """Whether a Flux `extern` (an AST of options prepended to the query) holds a call, an
    import, or a writing name: it is meant for parameters (`option v = {…}`), which have none."""
    if isinstance(node, dict):
        if node.get("type") in ("CallExpression", "ImportDeclaration"):
            return True
        return any(_extern_acts(value) for value in node.values())
    if isinstance(node, list):
        return any(_extern_acts(value) for value in node)
    return isinstance(node, str) and node in WRITING_NAMES
