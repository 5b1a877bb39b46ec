"""Which headers cross the proxy, in each direction.

Requests: hop-by-hop headers (and every header `Connection` names) never pass; neither do the
client's own credentials (`Authorization`, auth cookies), `Origin`, `Referer` and the
`X-Forwarded-Host/Port/Proto` a client could forge. Framing (`Host`, `Content-Length`,
`Transfer-Encoding`) belongs to the upstream pool. `X-Forwarded-For` gets the client appended.

Responses: hop-by-hop headers and `Set-Cookie` never pass (an upstream must not set cookies on
the gateway's origin), and `Content-Security-Policy: sandbox` is added, as Grafana does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

RawHeaders = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROPPED = HOP_BY_HOP | {
    b"authorization",
    b"cookie",
    b"origin",
    b"referer",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-proto",
    b"x-forwarded-for",  # re-added below with the client appended
    b"x-ds-authorization",
    b"x-request-id",  # re-added with the gateway's request id
    b"x-gateway-source",
    b"host",
    b"content-length",
}
_RESPONSE_DROPPED = HOP_BY_HOP | {b"set-cookie", b"content-security-policy"}
SANDBOX_CSP = (b"Content-Security-Policy", b"sandbox")
# Cookies the gateway (or Grafana in front of it) uses for its own sessions: never forwarded,
# even when a source lists them in jsonData.keepCookies.
RESERVED_COOKIES = frozenset({"grafana_session", "grafana_session_expiry", "gateway_session"})


def connection_named(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in `Connection`: hop-by-hop for this one hop (RFC 9110 §7.6.1)."""
    named: set[bytes] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":  # the length test is the cheap one
            named.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return named


@dataclass(frozen=True, slots=True)
class SourceHeaders:
    """What a source adds to every request, worked out once per version of the source.

    - `authorization`: its own Authorization (basic auth, a token, or a custom header), if any;
    - `others`: its other credential and custom headers, in order;
    - `ds_authorization_wins`: X-DS-Authorization replaces `authorization` (Grafana's rule,
      unless a custom header sets Authorization);
    - `replaced`: lower-case names the source sets, whose client copies are dropped (Grafana's
      Header.Set): appended after a client copy they would come second, and most servers read
      the first value — a client could then pick another tenant's X-Scope-OrgID or its own key;
    - `keep_cookies`: the cookie names `jsonData.keepCookies` lets through.
    """

    authorization: bytes | None
    others: tuple[tuple[bytes, bytes], ...]
    ds_authorization_wins: bool
    replaced: frozenset[bytes]
    keep_cookies: frozenset[str]

    @classmethod
    def of(
        cls,
        credentials: Sequence[tuple[bytes, bytes]],
        custom_names: frozenset[bytes],
        keep_cookies: frozenset[str],
    ) -> SourceHeaders:
        """`credentials`: the source's headers; `custom_names`: the lower-case names of its
        `jsonData.httpHeaderNameN`."""
        return cls(
            authorization=next(
                (value for name, value in credentials if name.lower() == b"authorization"), None
            ),
            others=tuple((n, v) for n, v in credentials if n.lower() != b"authorization"),
            ds_authorization_wins=b"authorization" not in custom_names,
            replaced=frozenset(name.lower() for name, _ in credentials) | custom_names,
            keep_cookies=keep_cookies,
        )


def request_headers(
    incoming: Sequence[tuple[bytes, bytes]],
    *,
    client_address: str | None,
    request_id: bytes,
    source: SourceHeaders,
) -> RawHeaders:
    """The headers sent upstream: the client's, filtered, then the source's own."""
    set_by_source = source.replaced
    named = connection_named(incoming)
    out: RawHeaders = []
    forwarded_for: list[bytes] = []
    cookies: list[bytes] = []
    ds_authorization: bytes | None = None
    for name, value in incoming:
        lower = name.lower()
        if lower == b"x-forwarded-for":
            forwarded_for.append(value)
        elif lower == b"cookie":
            cookies.append(value)
        elif lower == b"x-ds-authorization":
            ds_authorization = value
        if lower in _REQUEST_DROPPED or lower in named or lower in set_by_source:
            continue
        out.append((name, value))
    kept = _kept_cookies(cookies, source.keep_cookies)
    if kept:
        out.append((b"Cookie", kept))
    if client_address:
        forwarded_for.append(client_address.encode())
    if forwarded_for:
        out.append((b"X-Forwarded-For", b", ".join(forwarded_for)))
    out.append((b"X-Request-Id", request_id))
    # Grafana's order: the source's auth, then X-DS-Authorization, then custom headers on top.
    authorization = source.authorization
    if ds_authorization is not None and source.ds_authorization_wins:
        authorization = ds_authorization
    out.extend(source.others)
    if authorization is not None:
        out.append((b"Authorization", authorization))
    return out


def _kept_cookies(values: Iterable[bytes], keep: frozenset[str]) -> bytes:
    if not keep:
        return b""
    kept = []
    for value in values:
        for pair in value.split(b";"):
            name = pair.split(b"=", 1)[0].strip().decode("latin-1")
            if name in keep and name not in RESERVED_COOKIES:
                kept.append(pair.strip())
    return b"; ".join(kept)


def response_headers(upstream: Sequence[tuple[bytes, bytes]]) -> RawHeaders:
    """The upstream's headers minus hop-by-hop and Set-Cookie, plus the sandbox CSP."""
    out: RawHeaders = []
    named_more = False
    for name, value in upstream:
        lower = name.lower()
        if lower in _RESPONSE_DROPPED:
            # `Connection: keep-alive` (most answers) names only a field dropped anyway.
            if lower == b"connection" and value.lower() != b"keep-alive":
                named_more = True
            continue
        out.append((name, value))
    if named_more:
        named = connection_named(upstream)
        out = [(n, v) for n, v in out if n.lower() not in named]
    out.append(SANDBOX_CSP)
    return out


def keep_cookie_names(json_data: Mapping[str, object]) -> frozenset[str]:
    raw = json_data.get("keepCookies")
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(str(item) for item in raw if isinstance(item, str) and item)
