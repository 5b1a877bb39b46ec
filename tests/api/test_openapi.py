"""The OpenAPI description (gateway/api/openapi.yaml): valid OpenAPI 3.1, in agreement with the
routes the app serves (aiohttp's router and the proxy's route table), and served as it is."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from aiohttp import hdrs, web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from gateway.api.openapi import PATH, load_description
from gateway.proxy.routes import ROUTES
from tests.types import AppClient

# The methods a route registered for any method ("*") takes, as the description lists them.
ANY_METHOD = frozenset({"get", "head", "post", "put", "patch", "delete", "options", "trace"})
_OPERATION_KEYS = ANY_METHOD

Operation = tuple[str, str]  # (method, path template), method lower-case


def described_operations(document: dict[str, object]) -> set[Operation]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {
        (method, path)
        for path, item in paths.items()
        for method in item
        if method in _OPERATION_KEYS
    }


def _methods(method: str) -> Iterable[str]:
    return ANY_METHOD if method == hdrs.METH_ANY else (method.lower(),)


def served_operations(app: web.Application) -> set[Operation]:
    """Every (method, path template) of the app: aiohttp's routes, named as aiohttp's
    `resource.canonical` names them (what the request log calls the route), and the proxy's
    route table that the front server is driven from."""
    operations: set[Operation] = set()
    for route in app.router.routes():
        assert route.resource is not None
        operations.update((method, route.resource.canonical) for method in _methods(route.method))
    for proxy_route in ROUTES:
        methods = proxy_route.methods if proxy_route.methods is not None else (hdrs.METH_ANY,)
        for method in methods:
            operations.update((lowered, proxy_route.name) for lowered in _methods(method))
    return operations


def implicit_heads(operations: set[Operation]) -> set[Operation]:
    """The HEAD that aiohttp's `add_get` adds beside every GET: the description may omit it."""
    return {("head", path) for method, path in operations if method == "get"}


def test_the_description_is_valid_openapi_3_1() -> None:
    document = load_description()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_validator_refuses_a_broken_description() -> None:
    """The validation above can fail: a path parameter its path does not name is refused."""
    document = load_description()
    document["paths"]["/ping"]["get"]["parameters"] = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    with pytest.raises(OpenAPIValidationError):
        validate(document)


def test_every_route_is_described_and_every_description_is_a_route(app: web.Application) -> None:
    served = served_operations(app)
    described = described_operations(load_description())
    missing = served - described - implicit_heads(served)
    assert not missing, f"routes the description lacks: {sorted(missing)}"
    unknown = described - served
    assert not unknown, f"operations the description has but the app does not: {sorted(unknown)}"


def test_the_route_comparison_sees_a_missing_route(app: web.Application) -> None:
    """The comparison is not vacuous: a route added to the app, or one dropped from the
    description, shows up."""

    async def extra(request: web.Request) -> web.Response:
        raise AssertionError("never called")

    app.router.add_post("/api/not-described", extra)
    described = described_operations(load_description())
    assert ("post", "/api/not-described") in served_operations(app) - described
    described.discard(("patch", "/api/v2/sources/{source_id}"))
    assert ("patch", "/api/v2/sources/{source_id}") in served_operations(app) - described


def test_every_operation_says_who_may_call_it() -> None:
    """An operation needs a token unless it says `security: []`-like (an empty requirement);
    one that needs a token names the least role it needs."""
    document = load_description()
    for method, path in described_operations(document):
        operation = document["paths"][path][method]
        public = {} in operation.get("security", document["security"])
        assert public or operation.get("x-required-role") in ("viewer", "editor"), (method, path)
        assert operation["responses"], (method, path)


async def test_served_json_is_the_file(client: AppClient) -> None:
    response = await client.get(PATH)  # no token
    assert response.status == 200
    assert response.content_type == "application/json"
    assert "max-age" in response.headers["Cache-Control"]
    assert await response.json() == load_description()
    etag = response.headers["ETag"]
    again = await client.get(PATH, headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
