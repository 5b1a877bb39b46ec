"""structlog set-up: JSON when not on a TTY, console otherwise; stdlib loggers rendered alike.

aiohttp's own loggers (`aiohttp.server`, `aiohttp.web`, …) go through the same processors via
`ProcessorFormatter`, so every line the process prints has one shape. A last processor drops any
field whose name says it holds a secret, in case a future call site forgets.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

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
    structlog.configure(
        processors=[
            structlog.processors.StackInfoRenderer(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The canonical request line replaces aiohttp's access log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
