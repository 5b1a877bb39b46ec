"""structlog set-up: JSON when not on a TTY, console otherwise; stdlib loggers rendered alike.

aiohttp's own loggers (`aiohttp.server`, `aiohttp.web`, …) go through the same processors via
`ProcessorFormatter`, so every line the process prints has one shape. A last processor drops any
field whose name says it holds a secret, in case a future call site forgets.

The one exception is the canonical `request` line, written once per request: in JSON it is
rendered straight to bytes by `RequestLog` (orjson) and written to the same stream, with the same
fields, without structlog's processors and the stdlib logging chain (~70 us a line, ~35 % of
the process at its default level; issue 17). On a console, below its level, or while structlog
is configured otherwise (`structlog.testing.capture_logs`), it takes the ordinary path.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from contextvars import Context, ContextVar
from typing import IO, Any

import orjson
import structlog

_SECRET_KEYS = frozenset(
    {"authorization", "token", "password", "secret", "secret_key", "admin_token",
     "secure_json_data", "securejsondata", "cookie", "x-ds-authorization"}
)  # fmt: skip


# aiohttp logs a request it cannot parse with the offending bytes, headers included.
_CREDENTIAL_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-ds-authorization|cookie|set-cookie)"
    r"(\s*[:=]\s*)[^\r\n'\"]*"
)


# Free text that may quote a request: stdlib messages (aiohttp's) and rendered tracebacks.
_FREE_TEXT_KEYS = ("event", "exception")


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank fields named like secrets, and credential headers quoted inside free text."""
    for key in event:
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    for key in _FREE_TEXT_KEYS:
        value = event.get(key)
        if isinstance(value, str) and _CREDENTIAL_HEADER.search(value):
            event[key] = _CREDENTIAL_HEADER.sub(r"\1\2[redacted]", value)
    return event


REQUEST_EVENT = "request"
REQUEST_LOGGER = "gateway.request"
_WRAP_FOR_FORMATTER = structlog.stdlib.ProcessorFormatter.wrap_for_formatter
_CONTEXT_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_CONTEXT_PREFIX_LENGTH = len(_CONTEXT_PREFIX)
# The request line around its fixed parts: the duration (a float's shortest repr, as orjson
# writes it for durations this size), the bound context, the time (second, microseconds).
_LINE = (
    b'%s%a%s%s,"level":"info","logger":"' + REQUEST_LOGGER.encode() + b'","timestamp":"%s.%06dZ"}\n'
)


# The request line's own fields: a bound field of the same name does not replace them.
_LINE_KEYS = frozenset(
    {"method", "path", "status", "duration_ms", "org", "event", "level", "logger", "timestamp"}
)


def _configured_processors() -> object:
    """structlog's processors now: its configuration object read directly where it has one
    (`get_config()` builds a dict each call, and this is asked on every request line)."""
    config = _STRUCTLOG_CONFIG
    if config is not None:
        return getattr(config, "default_processors", None)
    return structlog.get_config()["processors"]


_STRUCTLOG_CONFIG = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
_UNKNOWN = (b"", False)  # not worked out yet (`RequestLog._context_field`)
_REDACTED = orjson.dumps("[redacted]")


class RequestLog:
    """Writes the canonical request line as the JSON set-up would, ~10 x cheaper.

    The fields and their order are those of the structlog path: the call's fields, `event`, the
    bound context (request id, worker), `level`, `logger`, `timestamp` (ISO 8601, UTC, in
    microseconds). Context keys named like secrets are redacted as `redact_secrets` does; the
    other fields are the gateway's own (a method, a route template, numbers).

    Lines go to the stream of the stdlib handler, rendered and written together once per turn
    of the event loop (a callback scheduled by the first line of the turn) instead of one
    write(2) per line (stderr is unbuffered: ~3-4 us each). Per request only the line's values
    are kept (its time, duration and bound context, an immutable snapshot); the fields that
    repeat (method, route, status, org) are rendered once per combination, each context field's
    name once per ContextVar. Rendering a turn's lines in one go costs the server about half of
    rendering each as it comes (issue 17, bench/README.md). Any other log line flushes them first
    (`_Handler`), so lines keep their order; so do the end of the process and `disable`. Without
    a running loop, a line is written at once.
    """

    __slots__ = (
        "_binary",
        "_fields",
        "_fixed",
        "_loop",
        "_loop_thread",
        "_pending",
        "_processors",
        "_second",
        "_second_bytes",
        "_stream",
    )

    # Lines held before writing anyway, whatever the loop does.
    MAX_PENDING = 256
    # Distinct (method, path, status, org) whose rendered fields are kept.
    MAX_FIXED = 4096

    def __init__(self) -> None:
        self._processors: list[Any] | None = None
        self._stream: IO[str] | None = None
        self._binary: IO[bytes] | None = None
        self._pending: list[tuple[tuple[bytes, bytes], float, Context, float]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._fixed: dict[tuple[str, str, int, int | None], tuple[bytes, bytes]] = {}
        self._fields: dict[ContextVar[Any], tuple[bytes, bool] | None] = {}
        self._second = -1
        self._second_bytes = b""
        atexit.register(self.flush)

    def enable(self, stream: IO[str], processors: list[Any]) -> None:
        """Write lines to `stream` while structlog's processors are still `processors`."""
        self._stream = stream
        binary = getattr(stream, "buffer", None)
        self._binary = binary if binary is not None and hasattr(binary, "write") else None
        self._processors = processors

    def disable(self) -> None:
        self.flush()
        self._processors = self._stream = self._binary = None
        self._loop = None

    @property
    def active(self) -> bool:
        processors = self._processors
        # capture_logs() swaps the last processor in place; configure() replaces the list.
        return (
            processors is not None
            and processors[-1] is _WRAP_FOR_FORMATTER
            and _configured_processors() is processors
        )

    def write(self, method: str, path: str, status: int, seconds: float, org: int | None) -> bool:
        """Write the line (`seconds`: the request's duration, written in milliseconds rounded
        to 2 places, as `duration_ms`); False (nothing written) when the ordinary path must take
        it."""
        if not self.active:
            return False
        # The fields around the duration repeat from request to request: rendered once each.
        parts = self._fixed.get((method, path, status, org))
        if parts is None:
            parts = self._render_fixed(method, path, status, org)
        # Rendered when the lines are written, together: what a line needs is kept meanwhile
        # (the bound context is an immutable snapshot).
        pending = self._pending
        pending.append((parts, seconds, contextvars.copy_context(), time.time()))
        if len(pending) == 1:
            self._flush_soon()
        elif len(pending) >= self.MAX_PENDING:
            self.flush()
        return True

    def _render_fixed(
        self, method: str, path: str, status: int, org: int | None
    ) -> tuple[bytes, bytes]:
        """The line up to the duration's value, and from after it to the bound context."""
        if len(self._fixed) >= self.MAX_FIXED:  # refused requests' paths are the clients'
            self._fixed.clear()
        before = orjson.dumps({"method": method, "path": path, "status": status})
        after = orjson.dumps({"org": org, "event": REQUEST_EVENT})
        parts = self._fixed[(method, path, status, org)] = (
            before[:-1] + b',"duration_ms":',
            b"," + after[1:-1],
        )
        return parts

    def _flush_soon(self) -> None:
        """Flush at the end of this turn of the running loop, or now without one."""
        loop = self._loop
        # The loop is looked up once, not per line: on Python 3.11 get_running_loop() costs a
        # getpid(2) each time.
        if loop is None or self._loop_thread != threading.get_ident() or not loop.is_running():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._loop = loop
            self._loop_thread = threading.get_ident()
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines held, in one write."""
        pending = self._pending
        if not pending:
            return
        data = b"".join([self._render(*line) for line in pending])
        pending.clear()
        stream, binary = self._stream, self._binary
        try:
            if binary is not None:
                if stream is not None:
                    stream.flush()  # text the stream may hold goes first
                binary.write(data)
                binary.flush()
            elif stream is not None:
                stream.write(data.decode())
                stream.flush()
        except (OSError, ValueError):  # a closed or broken stream, as logging.Handler ignores
            pass

    def _render(
        self, parts: tuple[bytes, bytes], seconds: float, bound: Context, now: float
    ) -> bytes:
        context = b""
        fields = self._fields
        for var, value in bound.items():  # as merge_contextvars: the same fields, in its order
            field = fields.get(var, _UNKNOWN)
            if field is _UNKNOWN:
                field = self._context_field(var)
            if field is not None and value is not Ellipsis:
                prefix, redacted = field
                context += prefix + (_REDACTED if redacted else orjson.dumps(value, default=repr))
        second = int(now)
        if second != self._second:
            self._second_bytes = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._second = second
        return _LINE % (
            parts[0],
            round(seconds * 1000, 2),
            parts[1],
            context,
            self._second_bytes,
            int((now - second) * 1_000_000),
        )

    def _context_field(self, var: ContextVar[Any]) -> tuple[bytes, bool] | None:
        """`,"key":` for a ContextVar of structlog's bound context, and whether its value is
        redacted (as `redact_secrets` does); None for any other variable or a field of the
        line's own. Worked out once per variable."""
        name = var.name
        key = name[_CONTEXT_PREFIX_LENGTH:]
        field: tuple[bytes, bool] | None = None
        if name.startswith(_CONTEXT_PREFIX) and key not in _LINE_KEYS:
            field = (b"," + orjson.dumps(key) + b":", key.lower() in _SECRET_KEYS)
        if len(self._fields) >= self.MAX_FIXED:
            self._fields.clear()
        self._fields[var] = field
        return field


request_log = RequestLog()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """The stdlib handler: writes the request lines held first, so that lines keep their order."""

    def emit(self, record: logging.LogRecord) -> None:
        request_log.flush()
        super().emit(record)


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Set up structlog and the stdlib root logger. `log_format` is json, console or auto."""
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text before redaction, so whatever they quote is scrubbed too.
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.processors.StackInfoRenderer(),
        *shared,
        _WRAP_FOR_FORMATTER,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        # A call below the level is a no-op method: no event dict, no processor, no exception
        # (stdlib.filter_by_level drops lines by raising, ~15 us per proxied request).
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The canonical request line replaces aiohttp's access log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if as_json and root.isEnabledFor(logging.INFO):
        request_log.enable(sys.stderr, processors)
    else:
        request_log.disable()
