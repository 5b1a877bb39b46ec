"""Keep-alive connection pool for proxied requests: HTTP/1.1 on asyncio.Protocol + httptools.

Why not `aiohttp.ClientSession`: on this project's benchmark a shared ClientSession caps the proxy
at ~0.25x nginx-as-proxy, while a lean pool that writes the request head itself and feeds bytes to
httptools' response parser reaches ~0.6x (reference/proxy-and-health.md §4.3-§4.4). The session
stays right for every other outbound call (probes, bucket listings); this pool is only for the
proxied hot path.

Contract
- `UpstreamPool.request(origin, method, target, headers, body)` sends one request and returns an
  `UpstreamResponse` once the final response head has arrived. The caller streams the body from
  it and must close it (`async with` or `close()`); see `UpstreamResponse`.
- Bytes pass through untouched: the target is sent as given (already percent-encoded, never
  re-encoded), the headers in the caller's order and case, the response body never decompressed,
  the response headers raw (order, case and duplicates kept).
- No header is rewritten except those the pool must own (`http1.encode_request_head`): it writes
  `Content-Length`, or `Transfer-Encoding: chunked`, from the body it is given; adds `Host` from
  the origin when the caller sent none; implements `Expect: 100-continue` itself; and drops any
  `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE` or `Upgrade` the caller passed (it keeps
  connections alive by its own rules and never upgrades them).
- Request body: None, bytes, or an async iterable of bytes. An iterable is streamed with
  back-pressure (the next chunk is pulled only once the socket's write buffer has drained), framed
  by `content_length` when given (a mismatch raises `RequestBodyError` and drops the connection),
  chunked otherwise. A caller that passes `Expect: 100-continue` gets RFC 9110 §10.1.1: the body
  waits for `100 Continue`, or `Timeouts.expect_continue`; a final status arriving first means it
  is never sent (and the connection is then closed, since the request is incomplete).
- Response: HEAD responses and 1xx/204/304 have no body. Interim 1xx responses are consumed and
  dropped, as aiohttp's server cannot relay them and has already answered the client's 100-continue
  itself. Trailers are dropped. `101 Switching Protocols` is a protocol error: the pool never asks
  for an upgrade.
- Timeouts per phase (connect, response headers, body idle in both directions) and no total: see
  `Timeouts`. Errors form a small tree (see `http1`); the forwarding layer maps `UpstreamTimeout` to
  504, the other `UpstreamError`s to 502, and `kind` to a metric label.

Connecting
- A new connection gets `Timeouts.connect` for the TCP connect and the TLS handshake together.
  TLS verifies the certificate and the name by default (system CAs, or `Origin.tls_ca_file`, or a
  caller's `Origin.ssl_context`), `Origin.tls_skip_verify` turns verification off, and SNI is the
  host name either way (none for an IP address). ALPN offers only http/1.1.
- With `address_filter`, the pool resolves the host itself and connects only to the addresses the
  filter lets through: the connect-time SSRF check, done on the addresses actually used.

Reuse
- A connection returns to its origin's idle list only when the request was fully written, the whole
  response has arrived, and the response allows keep-alive (HTTP/1.1 without `Connection: close`,
  HTTP/1.0 with `keep-alive`, never a body delimited by the connection closing). Anything else
  closes it: a consumer that stops early, a timeout, an error, bytes arriving on an idle
  connection, or the upstream closing an idle connection (seen at once by the protocol, which
  takes it out of the idle list).
- Idle connections are reused newest first, so that surplus ones age out: beyond
  `max_idle_per_origin` per origin, the oldest are closed once unused for `surplus_grace`
  seconds (not at once: under a steady load above the limit they are the next requests'
  connections, and closing them would only make those open new ones), and each is kept at most
  `idle_timeout` seconds.

Retry rule
A request is retried at most once, on a new connection, and only when all of these hold:
1. it was sent on a reused connection: an idle connection that the upstream closed just as we
   wrote to it is the one race a pool cannot avoid;
2. that connection was closed or reset before a single byte of the response arrived (timeouts,
   protocol errors and failures mid-response are never retried);
3. the body can be sent again: none, bytes, or an async iterable not yet pulled from;
4. sending it twice cannot do harm: the method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT,
   DELETE; RFC 9110 §9.2.2), or the request has a body of which not one byte was written yet (e.g.
   still waiting for `100 Continue`): an upstream does not act on a request it never fully got.
So a POST without body, or whose bytes body went out with its head, is not retried: the error is
raised (`UpstreamResetError.replay_safe` is false).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlsplit

from gateway.proxy.http1 import (
    IDEMPOTENT_METHODS,
    Http1Connection,
    RequestBody,
    RequestBodyError,
    Timeouts,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResetError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTLSError,
    encode_request_head,
)

__all__ = [
    "AddressFilter",
    "IPAddress",
    "Origin",
    "PoolStats",
    "RequestBodyError",
    "Timeouts",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResetError",
    "UpstreamResponse",
    "UpstreamTLSError",
    "UpstreamTimeout",
]

# Where a connection is, as far as its origin's state is concerned.
_GONE: Final = 0  # not connected yet, or closing: counted nowhere
_ACTIVE: Final = 1  # carrying an exchange
_IDLE: Final = 2  # in the idle list

# RFC 8305's recommended delay before racing the next address of a dual-stack host.
_HAPPY_EYEBALLS_DELAY: Final = 0.25

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port, resolved addresses) -> the addresses that may be connected to; raises to refuse.
# `ssrf.SsrfPolicy.permitted` has this shape.
AddressFilter: TypeAlias = Callable[[str, int, Sequence[IPAddress]], Sequence[IPAddress]]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream lives and how to speak TLS to it; the pool keeps idle lists per origin.

    - `tls_skip_verify`: accept any certificate (Grafana's `jsonData.tlsSkipVerify`); SNI is still
      sent.
    - `tls_ca_file`: a PEM file of CAs to trust *instead of* the system store (read once per pool).
    - `ssl_context`: a ready context (e.g. one holding a client certificate); overrides the two.
    The TLS settings are ignored for `http`. SNI is the host, unless the host is an IP address.
    """

    scheme: Literal["http", "https"]
    host: str  # a name or an IP address, IPv6 without brackets
    port: int
    tls_skip_verify: bool = False
    tls_ca_file: str | None = None
    ssl_context: ssl.SSLContext | None = None
    # The pool looks its origin up on every request: the field hash is computed once.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"unsupported upstream scheme {self.scheme!r}")
        if not self.host or self.host.startswith("["):
            raise ValueError(f"invalid upstream host {self.host!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid upstream port {self.port}")
        fields = (
            self.scheme,
            self.host,
            self.port,
            self.tls_skip_verify,
            self.tls_ca_file,
            self.ssl_context,
        )
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        tls_skip_verify: bool = False,
        tls_ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Origin:
        """The origin of `url`; its path, query and credentials are not the pool's business."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported upstream scheme in {url!r}")
        host = parts.hostname
        if not host:
            raise ValueError(f"no host in upstream URL {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(
            "https" if scheme == "https" else "http",
            host,
            port,
            tls_skip_verify=tls_skip_verify,
            tls_ca_file=tls_ca_file,
            ssl_context=ssl_context,
        )

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot for metrics: connections now, and counters since the pool was created.

    `active` counts connections carrying an exchange or being opened; `idle` those parked.
    """

    idle: int
    active: int
    connections_opened: int
    connections_reused: int
    requests_retried: int


class _OriginState:
    """One origin's idle list and active count; the owner its connections report to."""

    __slots__ = (
        "active",
        "address",
        "host_header",
        "idle",
        "origin",
        "pool",
        "server_hostname",
        "ssl",
    )

    def __init__(
        self, pool: UpstreamPool, origin: Origin, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.pool = pool
        self.origin = origin
        self.ssl = ssl_context
        self.server_hostname = origin.host if ssl_context is not None else None
        self.host_header = _host_header(origin)
        self.address = _ip_literal(origin.host)  # None for a name: resolved at each connect
        self.idle: deque[Http1Connection] = deque()  # oldest parked on the left
        self.active = 0

    def take_idle(self, now: float) -> Http1Connection | None:
        idle = self.idle
        oldest_allowed = now - self.pool.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.idle_since > oldest_allowed and conn.is_usable:
                conn.pool_slot = _ACTIVE
                self.active += 1
                return conn
            conn.pool_slot = _GONE
            conn.close()
        return None

    def release(self, conn: Http1Connection) -> None:
        if conn.pool_slot != _ACTIVE:
            return
        conn.pool_slot = _GONE
        self.active -= 1
        pool = self.pool
        if pool.closed or pool.max_idle_per_origin == 0:
            conn.close()
            return
        conn.pool_slot = _IDLE
        conn.idle_since = conn.loop.time()
        idle = self.idle
        idle.append(conn)
        # Beyond the limit the oldest is not closed now: under a steady load above the limit it
        # is the next request's connection, and closing it would only make that one open a new
        # one (a connect, a TIME-WAIT). Unused for `surplus_grace`, it is surplus and goes then.
        if len(idle) > pool.max_idle_per_origin:
            pool.schedule_sweep(conn.loop, idle[0].idle_since + pool.surplus_grace)
        else:
            pool.schedule_sweep(conn.loop, conn.idle_since + pool.idle_timeout)

    def sweep(self, now: float) -> float | None:
        """Close the idle connections whose time is up: unused for `idle_timeout`, or for
        `surplus_grace` while the list is over the limit. When the next one's is, if any."""
        idle = self.idle
        pool = self.pool
        while idle:
            oldest = idle[0]
            surplus = len(idle) > pool.max_idle_per_origin
            expiry = oldest.idle_since + (pool.surplus_grace if surplus else pool.idle_timeout)
            if expiry > now:
                return expiry
            idle.popleft()
            oldest.pool_slot = _GONE
            oldest.close()
        return None

    def forget(self, conn: Http1Connection) -> None:
        if conn.pool_slot == _ACTIVE:
            self.active -= 1
        elif conn.pool_slot == _IDLE:
            self.idle.remove(conn)
        conn.pool_slot = _GONE


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to upstream origins; see the module docstring.

    **Parameters:**
    - `timeouts`: defaults for every request (each request may pass its own).
    - `max_idle_per_origin`: idle connections kept per origin; 0 disables keep-alive. Those
      beyond it are closed once unused for `surplus_grace` seconds.
    - `idle_timeout`: seconds an idle connection is kept. Keep it below the upstreams' own
      keep-alive timeouts (nginx 75 s, aiohttp 75 s, Go servers unlimited) to make the
      stale-connection race rare; the retry rule covers the rest.
    - `address_filter`: when set, a new connection resolves the host itself, passes the addresses
      through the filter and connects only to those it returns, in order (SNI and Host still
      name the host). This is the connect-time SSRF check: checking addresses that someone else
      resolved earlier would let a DNS answer change in between ("rebinding"). What the filter
      raises propagates unchanged.

    Create it in an aiohttp cleanup_ctx and `await pool.close()` there; no limit on concurrent
    connections is enforced here.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        max_idle_per_origin: int = 64,
        idle_timeout: float = 15.0,
        surplus_grace: float = 1.0,
        address_filter: AddressFilter | None = None,
    ) -> None:
        if max_idle_per_origin < 0 or idle_timeout <= 0 or surplus_grace < 0:
            raise ValueError(
                "max_idle_per_origin must be >= 0, idle_timeout > 0 and surplus_grace >= 0"
            )
        self.timeouts = timeouts or Timeouts()
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self.surplus_grace = surplus_grace
        self.address_filter = address_filter
        self.closed = False
        self._states: dict[Origin, _OriginState] = {}
        self._ssl_contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0  # when the scheduled sweep runs
        self._opened = 0
        self._reused = 0
        self._retried = 0
        # The loop the pool serves, found on its first request: on Python 3.11
        # `asyncio.get_running_loop()` costs a getpid(2) system call each time.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: RequestBody = None,
        *,
        content_length: int | None = None,
        timeouts: Timeouts | None = None,
    ) -> UpstreamResponse:
        """Send a request; return the response once its final head has arrived.

        `target` is the encoded path and query (origin form, ASCII); `headers` are raw
        (name, value) bytes; `content_length` frames an async-iterable body (chunked without it).
        Raises an `UpstreamError`, `RequestBodyError`, whatever `body` raises, or ValueError for a
        malformed request (checked before anything is sent).
        """
        if self.closed:
            raise RuntimeError("the upstream pool is closed")
        state = self._states.get(origin) or self._add_origin(origin)
        if timeouts is None:
            timeouts = self.timeouts
        head, expect_continue = encode_request_head(
            method,
            target,
            headers,
            host_header=state.host_header,
            body=body,
            content_length=content_length,
        )
        is_head = method == "HEAD"
        idempotent = method in IDEMPOTENT_METHODS
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        conn = state.take_idle(loop.time())
        reused = conn is not None
        if reused:
            self._reused += 1
        while True:
            if conn is None:
                conn = await self._connect(loop, state, timeouts.connect)
            try:
                # Called directly (no partial): this runs on every proxied request.
                return await conn.send(
                    head,
                    body,
                    content_length=content_length,
                    expect_continue=expect_continue,
                    is_head=is_head,
                    idempotent=idempotent,
                    timeouts=timeouts,
                )
            except UpstreamResetError as exc:
                # A kept-alive connection the upstream closed meanwhile: once, on a new one.
                if not (reused and exc.replay_safe):
                    raise
            self._retried += 1
            reused = False
            conn = None

    def stats(self) -> PoolStats:
        return PoolStats(
            idle=sum(len(state.idle) for state in self._states.values()),
            active=sum(state.active for state in self._states.values()),
            connections_opened=self._opened,
            connections_reused=self._reused,
            requests_retried=self._retried,
        )

    async def close(self, *, grace_period: float = 1.0) -> None:
        """Close every idle connection and refuse new requests.

        Exchanges in progress finish; their connections are then closed instead of pooled. Waits
        up to `grace_period` seconds for the closing sockets (TLS sends close_notify), then aborts.
        """
        self.closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        closing: list[Http1Connection] = []
        for state in self._states.values():
            while state.idle:
                conn = state.idle.pop()
                conn.pool_slot = _GONE
                conn.close()
                closing.append(conn)
        if closing:
            await asyncio.wait([conn.lost_future() for conn in closing], timeout=grace_period)
            for conn in closing:
                conn.abort()

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def schedule_sweep(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        """Make sure the idle connections are swept by `at` (the sweep moves earlier if need
        be; a later time changes nothing, the sweep then looks again)."""
        if self.closed or (self._sweep_handle is not None and self._sweep_at <= at):
            return
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self._sweep_at = at
        self._sweep_handle = loop.call_at(at, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep_handle = None
        now = loop.time()
        next_expiry: float | None = None
        for origin, state in list(self._states.items()):
            expiry = state.sweep(now)
            if expiry is not None:
                next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
            elif state.active == 0:
                del self._states[origin]  # bounded by the registry anyway, but keep it tidy
        if next_expiry is not None:
            self.schedule_sweep(loop, next_expiry)

    def _add_origin(self, origin: Origin) -> _OriginState:
        state = _OriginState(self, origin, self._ssl_context(origin))
        self._states[origin] = state
        return state

    def _ssl_context(self, origin: Origin) -> ssl.SSLContext | None:
        if origin.scheme != "https":
            return None
        if origin.ssl_context is not None:
            return origin.ssl_context
        key = (origin.tls_skip_verify, None if origin.tls_skip_verify else origin.tls_ca_file)
        context = self._ssl_contexts.get(key)
        if context is None:
            if origin.tls_skip_verify:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                try:
                    context = ssl.create_default_context(cafile=origin.tls_ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise UpstreamTLSError(
                        f"cannot load the CA file {origin.tls_ca_file!r}: {exc}"
                    ) from exc
            # Offer only HTTP/1.1 so that no upstream picks h2 for a client that cannot speak it.
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_contexts[key] = context
        return context

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, state: _OriginState, connect_timeout: float | None
    ) -> Http1Connection:
        origin = state.origin
        conn = Http1Connection(loop, state)
        # Counted as active while it connects, so that the sweeper never drops this origin's state.
        conn.pool_slot = _ACTIVE
        state.active += 1
        try:
            async with asyncio.timeout(connect_timeout):
                if self.address_filter is None:
                    # asyncio races the addresses of a dual-stack host (RFC 8305); uvloop has
                    # no such option and tries them in order.
                    if isinstance(loop, asyncio.BaseEventLoop):
                        await loop.create_connection(
                            lambda: conn,
                            origin.host,
                            origin.port,
                            ssl=state.ssl,
                            server_hostname=state.server_hostname,
                            happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY,
                        )
                    else:
                        await loop.create_connection(
                            lambda: conn,
                            origin.host,
                            origin.port,
                            ssl=state.ssl,
                            server_hostname=state.server_hostname,
                        )
                else:
                    await self._connect_filtered(loop, state, conn, self.address_filter)
        except BaseException as exc:
            state.forget(conn)
            error = _connect_error(origin, connect_timeout, exc)
            if error is None:
                raise
            raise error from exc
        self._opened += 1
        return conn

    @staticmethod
    async def _connect_filtered(
        loop: asyncio.AbstractEventLoop,
        state: _OriginState,
        conn: Http1Connection,
        address_filter: AddressFilter,
    ) -> None:
        origin = state.origin
        if state.address is not None:  # an IP address: nothing to resolve (nor a thread to ask)
            resolved = [state.address]
        else:
            infos = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
            resolved = addresses_of(infos)
        last_error: OSError | None = None
        for address in address_filter(origin.host, origin.port, resolved):
            try:
                await loop.create_connection(
                    lambda: conn,
                    str(address),
                    origin.port,
                    ssl=state.ssl,
                    server_hostname=state.server_hostname,
                )
            except ssl.SSLError:
                raise  # the certificate will not change with the address
            except OSError as exc:
                last_error = exc
            else:
                return
        raise last_error or OSError(f"{origin.host} has no address to connect to")


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def addresses_of(infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    """The distinct IP addresses of a getaddrinfo answer, in its order."""
    return list(
        dict.fromkeys(
            ipaddress.ip_address(sockaddr[0])
            for family, _, _, _, sockaddr in infos
            if family in (socket.AF_INET, socket.AF_INET6)
        )
    )


def _connect_error(
    origin: Origin, timeout: float | None, exc: BaseException
) -> UpstreamError | None:
    """The typed error for a failed connect; None for what is no connect failure (cancellation)."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(
            f"connecting to {origin.authority} took longer than {timeout} s", phase="connect"
        )
    if isinstance(exc, ssl.SSLError):  # before OSError: SSLError is one
        return UpstreamTLSError(f"TLS with {origin.authority} failed: {exc}")
    if isinstance(exc, OSError):
        return UpstreamConnectError(f"cannot connect to {origin.authority}: {exc}")
    return None


def _host_header(origin: Origin) -> bytes:
    host = origin.host
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if origin.scheme == "https" else 80
    if origin.port != default_port:
        host = f"{host}:{origin.port}"
    return host.encode("ascii")
