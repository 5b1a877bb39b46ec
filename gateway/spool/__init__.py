"""The write spool: InfluxDB writes kept durably, per target and in order, while the upstream
cannot take them (issue 16). This package is the storage; see store.py."""

from gateway.spool.errors import SpoolClosed, SpoolError, SpoolFull
from gateway.spool.models import (
    DeadLetter,
    SpooledWrite,
    SpoolEntry,
    TargetKey,
    TargetStatus,
    WritePath,
)
from gateway.spool.store import SpoolStore, spool_path

__all__ = [
    "DeadLetter",
    "SpoolClosed",
    "SpoolEntry",
    "SpoolError",
    "SpoolFull",
    "SpoolStore",
    "SpooledWrite",
    "TargetKey",
    "TargetStatus",
    "WritePath",
    "spool_path",
]
