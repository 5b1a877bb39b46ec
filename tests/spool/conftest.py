from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.spool import SpoolStore, spool_path


@pytest.fixture
def spool_file(tmp_path: Path) -> Path:
    return spool_path(tmp_path / "data")


@pytest.fixture
async def spool(spool_file: Path) -> AsyncIterator[SpoolStore]:
    async with SpoolStore.open(spool_file) as store:
        yield store
