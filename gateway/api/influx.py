"""InfluxDB v2's `/api/v2/sources` over the shared registry: thin handlers.

Each handler parses (ids and bodies through `influx_dto`), calls the registry, the upstream
(`upstream.influx`) or the health source, and renders. Errors are raised as GatewayErrors; the
error middleware renders them as InfluxDB's `{"code", "message"}`.

Only `influxdb` data sources appear (the registry holds every type; this dialect shows one);
another type's id, or another org's, is 404.
A `self` source's buckets and health are those of the org's default v1/v2 source.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api import influx_dto as dto
from gateway.api.influx_dto import SourceType
from gateway.api.json_body import read_json_object
from gateway.errors import (
    INFLUX_CONTENT_TYPE,
    BadRequest,
    Forbidden,
    OrgNotFound,
    PermissionDenied,
    Unavailable,
)
from gateway.health.monitor import current_health
from gateway.health.probes import HealthCheck
from gateway.keys import HTTP, MONITOR, PRINCIPAL, PROBER, SETTINGS, SSRF, STORE
from gateway.registry.models import DataSource, Principal, influx_id
from gateway.registry.validation import parse_hex16
from gateway.upstream.influx import (
    SELF_WITHOUT_DEFAULT,
    ListingTimeouts,
    list_v1_buckets,
    list_v2_buckets,
)

routes = web.RouteTableDef()

SOURCE_PATH = dto.SOURCES_PATH + "/{source_id}"


@routes.get(dto.SOURCES_PATH)
async def list_sources(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    _check_org_filter(request, principal)
    _check_org_id_filter(request, principal)
    sources = await request.app[STORE].list_sources(principal.org.id)
    return _json(dto.render_sources(sources, principal.org.influx_id))


@routes.post(dto.SOURCES_PATH)
async def create_source(request: web.Request) -> web.Response:
    principal = _writer(request)
    fields = dto.parse_source(await read_json_object(request))
    spec = dto.new_source_spec(fields, principal.org.influx_id)
    await request.app[SSRF].check_source_url(spec.url)
    source = await request.app[STORE].create_source(principal.org.id, spec)
    return _json(dto.render_source(source, principal.org.influx_id), status=201)


@routes.get(SOURCE_PATH)
async def get_source(request: web.Request) -> web.Response:
    source, _ = await _find_source(request)
    return _json(dto.render_source(source, request[PRINCIPAL].org.influx_id))


@routes.patch(SOURCE_PATH)
async def patch_source(request: web.Request) -> web.Response:
    source_id = dto.parse_source_id(request.match_info["source_id"])
    principal = _writer(request)
    fields = dto.parse_source(await read_json_object(request))
    await request.app[SSRF].check_source_url(fields.url)
    org_influx_id = principal.org.influx_id
    source = await request.app[STORE].update_source(
        principal.org.id,
        source_id,
        lambda current: dto.patched_spec(current, fields, org_influx_id),
    )
    return _json(dto.render_source(source, org_influx_id))


@routes.delete(SOURCE_PATH)
async def delete_source(request: web.Request) -> web.Response:
    source_id = dto.parse_source_id(request.match_info["source_id"])
    principal = _writer(request)
    # Checked on the row the delete's own transaction holds: a concurrent change of type
    # cannot slip in between.
    await request.app[STORE].delete_source(principal.org.id, source_id, check=dto.require_type)
    return web.Response(status=204)


@routes.get(SOURCE_PATH + "/buckets")
async def list_buckets(request: web.Request) -> web.Response:
    source, kind = await _find_source(request)
    _check_org_filter(request, request[PRINCIPAL])
    backing = await _backing_source(request, source, kind)
    if backing is None:
        raise Unavailable(influx_message=_NO_DEFAULT)
    target, target_kind = backing
    if refusal := request.app[SSRF].literal_refusal(target.url):
        raise Forbidden(influx_message=f"the source URL is not allowed: {refusal}")
    settings = request.app[SETTINGS]
    timeouts = ListingTimeouts(settings.proxy_connect_timeout, settings.proxy_response_timeout)
    lister = list_v2_buckets if target_kind is SourceType.V2 else list_v1_buckets
    buckets = await lister(request.app[HTTP], target, timeouts)
    return _json(dto.render_buckets(source.id, buckets))


@routes.get(SOURCE_PATH + "/health")
async def source_health(request: web.Request) -> web.Response:
    source, kind = await _find_source(request)
    backing = await _backing_source(request, source, kind)
    if backing is None:
        check: HealthCheck = {"name": source.name, "status": "fail", "message": _NO_DEFAULT}
    else:
        check = await latest_health(request.app, backing[0])
    return _json(check, status=200 if check["status"] == "pass" else 503)


async def latest_health(app: web.Application, source: DataSource) -> HealthCheck:
    """The health monitor's latest HealthCheck for `source`, else one probe now (which the
    monitor counts as its first result); always with a `name` and a pass/fail `status`."""

    check = await current_health(app[MONITOR], source, app[PROBER], app[SETTINGS].health_timeout)
    return _valid_health_check(check, source.name)


def _valid_health_check(check: HealthCheck, name: str) -> HealthCheck:
    valid: HealthCheck = dict(check)
    if not isinstance(check.get("name"), str):
        valid["name"] = name
    if check.get("status") not in ("pass", "fail"):
        valid["status"] = "fail"
    return valid


_NO_DEFAULT = SELF_WITHOUT_DEFAULT


async def _find_source(request: web.Request) -> tuple[DataSource, SourceType]:
    """The path's source, in the token's org, shown by this API; 400/404 otherwise."""
    source_id = dto.parse_source_id(request.match_info["source_id"])
    source = await request.app[STORE].get_source(request[PRINCIPAL].org.id, id=source_id)
    return source, dto.require_type(source)


async def _backing_source(
    request: web.Request, source: DataSource, kind: SourceType
) -> tuple[DataSource, SourceType] | None:
    """Where buckets and health come from: the source itself, or for `self` the org's default
    source when that is a v1 or v2 InfluxDB source (None when there is no such source)."""
    if kind is not SourceType.SELF:
        return source, kind
    for candidate in await request.app[STORE].list_sources(source.org_id):
        if candidate.is_default:
            candidate_kind = dto.source_type(candidate)
            if candidate_kind in (SourceType.V1, SourceType.V2):
                return candidate, candidate_kind
    return None


def _check_org_filter(request: web.Request, principal: Principal) -> None:
    """`?org=<name>`: the token's own org, or 404 as InfluxDB words it (another org's name is
    answered the same way, so names of other orgs cannot be probed)."""
    name = request.query.get("org", "")
    if name and name != principal.org.name:
        raise OrgNotFound(influx_message=f'organization name "{name}" not found')


def _check_org_id_filter(request: web.Request, principal: Principal) -> None:
    """`?orgID=<id>` on the list: an id (else 400, as InfluxDB answers a bad orgID on its
    bucket listing) of the token's own org (else 404, like another org's name). InfluxDB
    ignores it here; the gateway lists only the token's org, and a filter naming another is
    not silently dropped, so one org's sources are never shown as another's. (The bucket
    listing leaves it alone: there an orgID may be the upstream's.)"""
    if "orgID" in request.query:
        org_id = parse_hex16(request.query["orgID"])
        if org_id is None:
            raise BadRequest(influx_message="orgID: must be 16 hex digits, not all zero")
        if influx_id(org_id) != principal.org.influx_id:
            raise OrgNotFound()


def _writer(request: web.Request) -> Principal:
    principal = request[PRINCIPAL]
    if not principal.role.can_write:
        raise PermissionDenied(f"write:orgs/{principal.org.influx_id}/sources")
    return principal


def _json(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=dto.encode_json(body), headers={"Content-Type": INFLUX_CONTENT_TYPE}
    )
