"""Types the test modules share."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

# The client every app fixture returns: `client.app` is the app under test, typed.
AppClient = TestClient[web.Request, web.Application]
