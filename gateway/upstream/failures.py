"""A failed request to an upstream, in words a user can act on ("connection refused", "TLS
handshake failed"): the probes and the bucket listings say it the same way. Built from the
error's kind and code only, never from the request URL, and never a Python class name."""

from __future__ import annotations

import errno
import os

import aiohttp


def describe_transport_error(exc: BaseException) -> str:
    """What went wrong on the way to an upstream or back, without its URL or credentials."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", "") or "not trusted"
        return f"TLS certificate rejected ({reason})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_error_text(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body was cut short"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the answer was not valid HTTP"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return _os_error_text(exc)
    return "the request failed"


def _os_error_text(error: OSError) -> str:
    if error.errno is not None and error.errno in errno.errorcode:
        return os.strerror(error.errno).lower()
    return "cannot connect"


__all__ = ["describe_transport_error"]
