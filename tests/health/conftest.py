"""Fixtures for the health tests: the app's monitor on a fake clock."""

from __future__ import annotations

import functools
import random

import pytest

from gateway.health.monitor import HealthMonitor
from gateway.keys import MONITOR
from tests.health.fake_clock import FakeClock, Schedule
from tests.types import AppClient


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The fake clock (and a seeded jitter source) that the app's monitor is built with: a
    `client` fixture that should get it asks for `clock` before starting the app."""
    clock = FakeClock()
    with_fake_clock = functools.partial(
        HealthMonitor, clock=clock, random=random.Random(14), wait=clock.wait
    )
    monkeypatch.setattr("gateway.app.HealthMonitor", with_fake_clock)
    return clock


@pytest.fixture
def schedule(client: AppClient, clock: FakeClock) -> Schedule:
    return Schedule(client.app[MONITOR], clock)
