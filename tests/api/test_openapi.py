"""The OpenAPI description (gateway/api/openapi.yaml): valid OpenAPI 3.1, in agreement with the
routes the app serves (aiohttp's router and the proxy's route table), and served as it is."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from aiohttp import hdrs, web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from gateway.api import grafana_dto, influx_dto
from gateway.api.openapi import PATH, REFUSED_BEFORE_HANDLER, load_description
from gateway.errors import Dialect, dialect_for
from gateway.proxy.routes import ROUTES
from gateway.query.request import MAX_QUERIES
from tests.conftest import Headers
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


def _responses(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    responses: dict[str, Any] = document["paths"][path][method]["responses"]
    return responses


def test_every_operation_describes_what_is_refused_before_its_handler() -> None:
    """400/408/413/414/431/505 in the path's dialect on every operation; 405 wherever the path
    does not take every method, and nowhere else. (A HEAD derived from a GET has the
    component's description and headers, without the body.)"""
    document = load_description()
    components = document["components"]["responses"]

    def is_component(response: dict[str, Any], name: str) -> bool:
        if "$ref" in response:
            return bool(response["$ref"] == f"#/components/responses/{name}")
        return bool(response["description"] == components[name]["description"])

    for method, path in described_operations(document):
        responses = _responses(document, method, path)
        dialect = "Influx" if dialect_for(path) is Dialect.INFLUX else "Grafana"
        for status in REFUSED_BEFORE_HANDLER:
            assert status in responses, (method, path, status)
        assert is_component(responses["414"], f"{dialect}Refused"), (method, path)
        if set(document["paths"][path]) >= ANY_METHOD:
            assert "405" not in responses, (method, path)
        else:
            assert is_component(responses["405"], f"{dialect}MethodNotAllowed"), (method, path)
    # An operation's own description of a shared status is kept.
    assert _responses(document, "post", "/api/datasources")["400"] == {
        "$ref": "#/components/responses/GrafanaBadRequest"
    }


def test_head_is_described_beside_every_get_without_bodies() -> None:
    document = load_description()
    for method, path in described_operations(document):
        if method != "get":
            continue
        head = document["paths"][path]["head"]
        assert set(head["responses"]) >= set(_responses(document, "get", path)), path
        assert head.get("x-required-role") == document["paths"][path]["get"].get("x-required-role")
        if "operationId" in head and path != "/query":  # /query's HEAD is written in the YAML
            assert head["operationId"] == document["paths"][path]["get"]["operationId"] + "Head"
            for status, response in head["responses"].items():
                assert "content" not in response, (path, status)
                assert "$ref" not in response, (path, status)
    assert document["paths"]["/api/v2/sources"]["head"]["responses"]["405"]["headers"]["Allow"]


@pytest.mark.parametrize(
    ("schema", "accepted"),
    [
        ("DataSourceBody", grafana_dto._ACCEPTED),
        ("DataSourceUpdateBody", grafana_dto._ACCEPTED),
        ("SourceInput", {key for key, _, _ in influx_dto._FIELDS.values()} | influx_dto._ECHOED),
    ],
)
def test_body_schemas_list_exactly_the_fields_the_code_accepts(
    schema: str, accepted: Iterable[str]
) -> None:
    """Both APIs refuse unknown fields (400 `foo: unknown field`): the schemas say so and name
    every field the decoders take, no more."""
    described = load_description()["components"]["schemas"][schema]
    assert described["additionalProperties"] is False
    assert set(described["properties"]) == set(accepted)


def test_metric_request_agrees_with_the_query_parser() -> None:
    """`from`/`to` take epoch milliseconds as numbers too; `queries` has the parser's cap."""
    metric_request = load_description()["components"]["schemas"]["MetricRequest"]
    for bound in ("from", "to"):
        assert set(metric_request["properties"][bound]["type"]) == {"string", "integer"}
    assert metric_request["properties"]["queries"]["maxItems"] == MAX_QUERIES


async def test_refusals_are_answered_as_described(
    client: AppClient, admin_headers: Headers
) -> None:
    """A 405 and a 414 of the HTTP layer are documented on the operation and answered in the
    shape its component describes."""
    document = load_description()
    # The long targets first, each request on a new connection: the front server refuses an
    # overlong target with 414 (on a connection handed to aiohttp it is still a 400).
    cases = [
        ("get", "/api/v2/sources?x=" + "a" * 9000, "get", "414"),
        ("get", "/api/datasources?x=" + "a" * 9000, "get", "414"),
        ("put", "/api/datasources", "get", "405"),
        ("delete", "/health", "get", "405"),
        ("put", "/api/v2/sources", "get", "405"),
        ("get", "/api/v2/write", "post", "405"),
    ]
    headers = {**admin_headers, "Connection": "close"}
    for method, target, described_method, status in cases:
        path = target.partition("?")[0]
        response = await client.request(method, target, headers=headers)
        assert str(response.status) == status, target
        reference = _responses(document, described_method, path)[status]["$ref"]
        component = document["components"]["responses"][reference.rpartition("/")[2]]
        schema_ref = component["content"]["application/json"]["schema"]["$ref"]
        schema = document["components"]["schemas"][schema_ref.rpartition("/")[2]]
        body = await response.json()
        assert set(schema["required"]) <= set(body) <= set(schema["properties"]), target
        if "X-Platform-Error-Code" in component.get("headers", {}):
            assert response.headers["X-Platform-Error-Code"] == body["code"], target
        if path in ("/api/datasources", "/health") and status == "405":
            assert response.headers["Allow"], target
