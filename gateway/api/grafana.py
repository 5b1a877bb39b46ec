"""Placeholder: routes are added by the grafana API issue."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
