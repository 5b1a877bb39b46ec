"""Why the PostgreSQL registry could not be reached, in words an operator can act on
("connection refused", "authentication failed"), as gateway/upstream/failures.py says it for
upstreams. Built from the error's kind and code only: never from its text, which may quote the
server's address, a user or a DSN, and never a Python class name."""

from __future__ import annotations

import errno
import os

import asyncpg
from asyncpg import exceptions as pg


def describe_database_error(exc: BaseException, *, timeout: float) -> str:
    """What went wrong on the way to the registry's database; `timeout` is the one that ran out
    when it is a timeout (the backend's query timeout)."""
    if isinstance(exc, TimeoutError):
        return f"PostgreSQL did not answer in time ({timeout:g} s)"
    if isinstance(exc, pg.InvalidAuthorizationSpecificationError):  # wrong password, no such role
        return "authentication failed"
    if isinstance(exc, pg.TooManyConnectionsError):
        return "the server has no connection slot left"
    if isinstance(exc, pg.InsufficientResourcesError):
        return "the server is out of resources (disk, memory or connections)"
    if isinstance(exc, pg.CannotConnectNowError):
        return "the server is starting up or shutting down"
    if isinstance(exc, pg.QueryCanceledError):
        return "the server cancelled the query"
    if isinstance(exc, pg.OperatorInterventionError):  # an administrator's or a crash's shutdown
        return "the server ended the connection"
    if isinstance(exc, pg.ConnectionDoesNotExistError | asyncpg.InterfaceError):
        return "the connection was closed"
    if isinstance(exc, OSError):
        return _os_error_text(exc)
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return "cannot connect"
    return "the database could not be reached"


def _os_error_text(error: OSError) -> str:
    # asyncio says "Multiple exceptions: …" with no errno when every address of a host failed
    # differently: nothing to name then but the failure itself.
    if error.errno is not None and error.errno in errno.errorcode:
        return os.strerror(error.errno).lower()
    return "cannot connect"


__all__ = ["describe_database_error"]
