from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.spool import SpoolStore, spool_path
from tests.spool.influx import start_influx

__all__ = ["start_influx"]  # a fixture of these tests


@pytest.fixture
def spool_file(tmp_path: Path) -> Path:
    return spool_path(tmp_path / "data")


@pytest.fixture
async def spool(spool_file: Path) -> AsyncIterator[SpoolStore]:
    async with SpoolStore.open(spool_file) as store:
        yield store
