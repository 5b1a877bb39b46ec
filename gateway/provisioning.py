"""Provisioning of data sources from Grafana-format YAML files. (Being written: issue 8.)

Hooks used by the rest of the gateway:
- `provisioning_ctx(app)`: cleanup context; applies the files at start-up (an invalid file raises
  StartupError) and re-applies them on SIGHUP.
- `check_files(path, environ)`: every problem as "file:line: message", touching no database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aiohttp import web


async def provisioning_ctx(app: web.Application) -> AsyncIterator[None]:
    yield


def check_files(path: Path, environ: Mapping[str, str]) -> list[str]:
    return []
