"""Grafana's data source HTTP API (`/api/datasources*`), plus the two public routes Grafana
clients ask for first: `/api/frontend/settings` (grafana-client's `api.version`) and
`/api/health`.

Handlers stay thin: check who may do what, parse (`grafana_dto`), call the registry, render.
Every source is looked up inside the caller's org, so another org's source is simply
"Data source not found": existence does not leak across orgs.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from aiohttp import web

from gateway import __version__
from gateway.api.grafana_dto import (
    UID_MISMATCH,
    DataSourceBody,
    access_control_for,
    check_update,
    create_spec,
    list_dto,
    parse_id,
    read_body,
    single_dto,
    updated_spec,
)
from gateway.errors import BadRequest, NameConflict, ReadOnlySource
from gateway.health.monitor import current_health
from gateway.health.probes import HealthCheck
from gateway.keys import MONITOR, PRINCIPAL, PROBER, SETTINGS, SSRF, STORE
from gateway.registry.models import DataSource, DataSourceSpec
from gateway.security.org import ORG_HEADER, acting_org_id
from gateway.version import commit

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

# The Grafana API level we answer like; grafana-client gates features on it (≥ 9 enables the
# server-side health check, > 10.2.2 disables the Enterprise-only permission calls).
GRAFANA_API_VERSION = "11.0.0"
INVALID_UID = "UID is invalid"

CREATE, WRITE, DELETE = "datasources:create", "datasources:write", "datasources:delete"
# Grafana's IsValidShortUID: the uid charset at any length (an over-long one is simply unknown).
_UID_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_TRUE_TEXTS = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool


# --- reads ----------------------------------------------------------------------------------


@routes.get("/api/datasources")
async def list_sources(request: web.Request) -> web.Response:
    org_id = request_org_id(request)
    return web.json_response(list_dto(await request.app[STORE].list_sources(org_id)))


@routes.get("/api/datasources/{id}")
async def get_by_id(request: web.Request) -> web.Response:
    org_id = request_org_id(request)
    source_id = parse_id(request.match_info["id"])
    if source_id == 0:
        raise BadRequest("Datasource id is missing")
    source = await request.app[STORE].get_source(org_id, id=source_id)
    return web.json_response(single_dto(source, access_control=_access_control(request)))


@routes.get("/api/datasources/uid/{uid}")
async def get_by_uid(request: web.Request) -> web.Response:
    org_id = request_org_id(request)
    source = await request.app[STORE].get_source(org_id, uid=request.match_info["uid"])
    return web.json_response(single_dto(source, access_control=_access_control(request)))


@routes.get("/api/datasources/name/{name}")
async def get_by_name(request: web.Request) -> web.Response:
    org_id = request_org_id(request)
    source = await request.app[STORE].get_source(org_id, name=request.match_info["name"])
    return web.json_response(single_dto(source))


@routes.get("/api/datasources/id/{name}")
async def get_id_by_name(request: web.Request) -> web.Response:
    org_id = request_org_id(request)
    source = await request.app[STORE].get_source(org_id, name=request.match_info["name"])
    return web.json_response({"id": source.id})


# --- writes ---------------------------------------------------------------------------------


@routes.post("/api/datasources")
async def create(request: web.Request) -> web.Response:
    org_id = request_org_id(request, needs=CREATE)
    spec = create_spec(await read_body(request))
    await request.app[SSRF].check_source_targets(spec.url, spec.json_data)
    source = await request.app[STORE].create_source(org_id, spec)
    return _saved("Datasource added", source)


@routes.put("/api/datasources/{id}")
async def update_by_id(request: web.Request) -> web.Response:
    org_id = request_org_id(request, needs=WRITE)
    body = await read_body(request)
    check_update(body)
    return await _update(request, org_id, parse_id(request.match_info["id"]), body)


@routes.put("/api/datasources/uid/{uid}")
async def update_by_uid(request: web.Request) -> web.Response:
    org_id = request_org_id(request, needs=WRITE)
    body = await read_body(request)
    check_update(body)
    uid = request.match_info["uid"]
    if body.spec.uid and body.spec.uid != uid:
        raise BadRequest(UID_MISMATCH)
    source = await request.app[STORE].get_source(org_id, uid=uid)
    return await _update(request, org_id, source.id, body)


@routes.delete("/api/datasources/{id}")
async def delete_by_id(request: web.Request) -> web.Response:
    org_id = request_org_id(request, needs=DELETE)
    source_id = parse_id(request.match_info["id"])
    if source_id <= 0:
        raise BadRequest("Missing valid datasource id")
    await request.app[STORE].delete_source(org_id, source_id)
    return web.json_response({"message": "Data source deleted"})  # Grafana sends no id here


@routes.delete("/api/datasources/uid/{uid}")
async def delete_by_uid(request: web.Request) -> web.Response:
    org_id = request_org_id(request, needs=DELETE)
    source = await request.app[STORE].get_source(org_id, uid=request.match_info["uid"])
    return await _delete(request, org_id, source)


@routes.delete("/api/datasources/name/{name}")
async def delete_by_name(request: web.Request) -> web.Response:
    org_id = request_org_id(request, needs=DELETE)
    source = await request.app[STORE].get_source(org_id, name=request.match_info["name"])
    return await _delete(request, org_id, source)


# --- health ---------------------------------------------------------------------------------

# Grafana registers the health routes for every method; so do we.


@routes.route("*", "/api/datasources/{id}/health")
async def health_by_id(request: web.Request) -> web.Response:
    org_id = request_org_id(request)
    source_id = parse_id(request.match_info["id"])
    source = await request.app[STORE].get_source(org_id, id=source_id)
    return _health_response(await source_health(request, source))


@routes.route("*", "/api/datasources/uid/{uid}/health")
async def health_by_uid(request: web.Request) -> web.Response:
    org_id = request_org_id(request)
    uid = request.match_info["uid"]
    if not _UID_TEXT.fullmatch(uid):
        raise BadRequest(INVALID_UID)
    # Grafana answers 500 for an unknown uid here; a 404 tells the client what happened.
    source = await request.app[STORE].get_source(org_id, uid=uid)
    return _health_response(await source_health(request, source))


async def source_health(request: web.Request, source: DataSource) -> HealthCheck:
    """The health monitor's latest result for `source`, else one probe now (which the monitor
    then counts as its first result)."""
    app = request.app
    return await current_health(app[MONITOR], source, app[PROBER], app[SETTINGS].health_timeout)


# --- public: what Grafana clients ask before anything else ----------------------------------


@routes.get("/api/frontend/settings")
async def frontend_settings(request: web.Request) -> web.Response:
    build = commit()
    return web.json_response(
        {
            "buildInfo": {
                "version": GRAFANA_API_VERSION,
                "versionString": f"Grafana v{GRAFANA_API_VERSION} (datasource-gateway)",
                "commit": build,
                "edition": "Open Source",
                "env": "production",
                "hideVersion": False,
                "latestVersion": "",
                "hasUpdate": False,
            },
            "datasourceGateway": {"version": __version__, "commit": build},
        }
    )


@routes.get("/api/health")
async def grafana_health(request: web.Request) -> web.Response:
    """Grafana's own health shape: 200 with database "ok", or 503 with "failing"."""
    try:
        await request.app[STORE].ping()
    except Exception:  # any database failure is an unhealthy answer, not a 500
        log.warning("database_unhealthy", exc_info=True)
        database, status = "failing", 503
    else:
        database, status = "ok", 200
    body = {"commit": commit(), "database": database, "version": GRAFANA_API_VERSION}
    return web.json_response(body, status=status)


# --- helpers --------------------------------------------------------------------------------


def request_org_id(request: web.Request, *, needs: str | None = None) -> int:
    """The org the request acts in: its token's. `needs` names the action a write requires."""
    return acting_org_id(request[PRINCIPAL], request.headers.get(ORG_HEADER), needs=needs)


def _access_control(request: web.Request) -> dict[str, bool] | None:
    """Grafana adds `accessControl` to a GET by id or uid only when asked to."""
    if request.query.get("accesscontrol") not in _TRUE_TEXTS:
        return None
    return access_control_for(request[PRINCIPAL].role)


async def _update(
    request: web.Request, org_id: int, source_id: int, body: DataSourceBody
) -> web.Response:
    await request.app[SSRF].check_source_targets(body.spec.url, body.spec.json_data)

    def mutate(current: DataSource) -> DataSourceSpec:
        # Checked on the row the transaction holds, so a concurrent change cannot slip past.
        if current.read_only:
            raise ReadOnlySource("Cannot update read-only data source")
        return updated_spec(body, current)

    try:
        source = await request.app[STORE].update_source(
            org_id,
            source_id,
            mutate,
            # Grafana's rule: version 0 (or none) means "overwrite whatever is there".
            expected_version=body.version or None,
        )
    except NameConflict as exc:
        raise NameConflict(f"Failed to update datasource: {exc.message}") from exc
    return _saved("Datasource updated", source)


async def _delete(request: web.Request, org_id: int, source: DataSource) -> web.Response:
    await request.app[STORE].delete_source(org_id, source.id)
    return web.json_response({"message": "Data source deleted", "id": source.id})


def _saved(message: str, source: DataSource) -> web.Response:
    body: dict[str, Any] = {
        "message": message,
        "id": source.id,
        "name": source.name,
        "datasource": single_dto(source),
    }
    return web.json_response(body)


def _health_response(check: HealthCheck) -> web.Response:
    if check["status"] == "pass":
        return web.json_response({"status": "OK", "message": check["message"]})
    return web.json_response({"status": "ERROR", "message": check["message"]}, status=400)
