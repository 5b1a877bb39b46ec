"""Per-type probes against real upstreams (Debian's Prometheus and InfluxDB 1.x) and faithful
aiohttp stand-ins for the rest (tests/health/fake_upstreams.py)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_aiohttp import AiohttpServer

from gateway.health.probes import HealthCheck, probe_source
from gateway.registry.models import DataSource
from tests.health import fake_upstreams as fakes
from tests.health.sources import basic, make_source
from tests.services.influxdb import InfluxDB1
from tests.services.prometheus import (
    PROMETHEUS_PASSWORD,
    PROMETHEUS_USER,
    StartPrometheus,
)

SECONDS = 5.0  # generous: only the timeout tests want the budget to run out
RIGHT_SECRET = "right-secret-7f3a9c"
WRONG_SECRET = "wrong-secret-41be0d"


def check_names(health: HealthCheck) -> list[tuple[str, str]]:
    return [(check["name"], check["status"]) for check in health["checks"]]


def assert_no_secret(health: HealthCheck, *secrets: str) -> None:
    """No secret, nor its base64 in a basic-auth header, anywhere in the serialized result."""
    text = json.dumps(health)
    for secret in secrets:
        assert secret not in text
        for user in ("grafana", "reader", "admin", PROMETHEUS_USER):
            assert basic(user, secret).removeprefix("Basic ") not in text


def assert_message_shape(health: HealthCheck) -> None:
    """Every check says what was tried and how long it took; the top level quotes the first
    failing check (or sums up a pass)."""
    for check in health["checks"]:
        assert check["message"].startswith("GET /"), check
        assert " ms" in check["message"] or " s" in check["message"], check
    failing = [check for check in health["checks"] if check["status"] == "fail"]
    assert health["status"] == ("fail" if failing else "pass")
    if failing:
        assert health["message"] == failing[0]["message"]
    else:
        assert health["message"].startswith("all checks passed in ")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def closed_port_url() -> Iterator[str]:
    """A loopback port we hold bound but never listen on: connections are refused, and no other
    test can take the port meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def serve(aiohttp_server: AiohttpServer, app: web.Application, **kwargs: Any) -> str:
    server = await aiohttp_server(app, **kwargs)
    return str(server.make_url("/"))


# ------------------------------------------------------------------------------------------------
# Every kind of source, against its faithful stand-in


@dataclass(frozen=True)
class Kind:
    """A kind of source: its type and jsonData, a healthy stand-in, and the checks it passes."""

    id: str
    type: str
    app: fakes.AppFactory
    checks: list[str]
    json_data: Mapping[str, Any] = field(default_factory=dict)


KINDS = [
    Kind("prometheus", "prometheus", fakes.prometheus_app, ["reachable", "auth", "query"]),
    Kind("influxql", "influxdb", fakes.influxql_app, ["reachable", "auth", "query"]),
    Kind("flux", "influxdb", fakes.flux_app, ["reachable", "auth", "query"], {"version": "Flux"}),
    Kind("loki", "loki", fakes.loki_app, ["reachable"]),
    Kind("elasticsearch", "elasticsearch", fakes.elasticsearch_app, ["reachable", "cluster"]),
    Kind("graphite", "graphite", fakes.graphite_app, ["reachable", "query"]),
    Kind("generic", "tempo", fakes.generic_app, ["reachable"]),
]
kinds = pytest.mark.parametrize("kind", KINDS, ids=[kind.id for kind in KINDS])


def deep_json_app(status: int) -> web.Application:
    """Answers every GET with `status` and JSON nested far deeper than a parser will go."""
    deep = "[" * 100_000 + "]" * 100_000

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=deep, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


class TestEveryKind:
    @kinds
    async def test_a_healthy_upstream_passes_every_check(
        self, kind: Kind, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, kind.app(None))
        source = make_source(url, kind.type, json_data=kind.json_data)
        health = await probe_source(session, source, SECONDS)
        assert health["name"] == "upstream under test"
        assert check_names(health) == [(name, "pass") for name in kind.checks]
        assert_message_shape(health)

    @kinds
    async def test_a_closed_port_fails_the_reachable_check(
        self, kind: Kind, closed_port_url: str, session: aiohttp.ClientSession
    ) -> None:
        source = make_source(closed_port_url, kind.type, json_data=kind.json_data)
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "fail")]
        assert "connection refused after" in health["message"]
        assert_message_shape(health)

    @kinds
    async def test_a_slow_upstream_is_cut_off_at_the_probe_timeout(
        self, kind: Kind, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, fakes.slow_app(delay=30))
        source = make_source(url, kind.type, json_data=kind.json_data)
        started = time.monotonic()
        health = await probe_source(session, source, 0.3)
        assert time.monotonic() - started < 1.0
        assert check_names(health) == [("reachable", "fail")]
        assert "timed out after" in health["message"]
        assert "(probe timeout 0.3 s)" in health["message"]

    @kinds
    @pytest.mark.parametrize("status", [500, 503])
    async def test_a_server_error_fails_with_the_status(
        self,
        kind: Kind,
        status: int,
        aiohttp_server: AiohttpServer,
        session: aiohttp.ClientSession,
    ) -> None:
        url = await serve(aiohttp_server, fakes.failing_app(status))
        source = make_source(url, kind.type, json_data=kind.json_data)
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "fail")]
        assert f"HTTP {status} in " in health["message"]
        assert "upstream says: upstream connect error" in health["message"]
        assert_message_shape(health)

    @pytest.mark.parametrize(
        "kind", [kind for kind in KINDS if kind.id not in ("loki", "generic")], ids=lambda k: k.id
    )
    async def test_a_deeply_nested_answer_fails_the_check_that_reads_it(
        self, kind: Kind, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        """JSON too deep for the parser is an unusable answer, said in words: a failed check,
        not a crashed probe (which the monitor would log as `probe_crashed`)."""
        url = await serve(aiohttp_server, deep_json_app(200))
        source = make_source(url, kind.type, json_data=kind.json_data)
        health = await probe_source(session, source, SECONDS)
        assert health["status"] == "fail"
        assert re.fullmatch(
            r"GET /\S*: HTTP 200 in \d+ ms, answer is not usable JSON: nested too deeply",
            health["message"],
        ), health["message"]
        assert_message_shape(health)

    @kinds
    async def test_a_deeply_nested_error_answer_fails_with_its_status(
        self, kind: Kind, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, deep_json_app(500))
        source = make_source(url, kind.type, json_data=kind.json_data)
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "fail")]
        # Flux's /health is read as JSON whatever its status (InfluxDB answers 503 with one).
        unusable = ", answer is not usable JSON: nested too deeply" if kind.id == "flux" else ""
        assert re.fullmatch(
            r"GET /\S*: HTTP 500 in \d+ ms" + re.escape(unusable), health["message"]
        ), health["message"]
        assert_message_shape(health)

    @kinds
    async def test_a_redirect_is_not_followed(
        self, kind: Kind, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        followed: list[str] = []

        async def redirect(request: web.Request) -> web.Response:
            if request.path == "/elsewhere":
                followed.append(request.path)
            raise web.HTTPFound("/elsewhere")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", redirect)
        url = await serve(aiohttp_server, app)
        source = make_source(url, kind.type, json_data=kind.json_data)
        health = await probe_source(session, source, SECONDS)
        assert followed == []
        assert health["checks"][0]["name"] == "reachable"
        assert "HTTP 302 in " in health["checks"][0]["message"]
        if kind.id != "generic":  # for an unknown type any answer below 500 passes
            assert "a redirect, which probes do not follow" in health["message"]


# ------------------------------------------------------------------------------------------------
# Credentials: each injection rule, against an upstream that insists on it


@dataclass(frozen=True)
class CredentialCase:
    """An upstream demanding `header: expected(secret)`, and the source settings that send it."""

    id: str
    kind: Kind
    header: str
    expected: Any  # (secret) -> the header value the upstream demands
    settings: Any  # (secret) -> DataSource fields
    described: str  # how messages name this kind of credential

    def source(self, url: str, secret: str) -> DataSource:
        fields = dict(self.settings(secret))
        json_data = {**self.kind.json_data, **fields.pop("json_data", {})}
        return make_source(url, self.kind.type, json_data=json_data, **fields)


def _basic_auth_settings(secret: str) -> dict[str, Any]:
    return {
        "basic_auth": True,
        "basic_auth_user": "grafana",
        "secure_json_data": {"basicAuthPassword": secret},
    }


KIND = {kind.id: kind for kind in KINDS}
CREDENTIAL_CASES = [
    CredentialCase(
        "prometheus-basic-auth", KIND["prometheus"], "Authorization",
        lambda secret: basic("grafana", secret), _basic_auth_settings, "basic auth",
    ),
    CredentialCase(
        "influxql-user-password", KIND["influxql"], "Authorization",
        lambda secret: basic("reader", secret),
        lambda secret: {"user": "reader", "secure_json_data": {"password": secret}},
        "InfluxDB user and password",
    ),
    CredentialCase(
        "flux-token", KIND["flux"], "Authorization", lambda secret: f"Token {secret}",
        lambda secret: {"secure_json_data": {"token": secret}}, "token",
    ),
    CredentialCase(
        "loki-custom-header", KIND["loki"], "X-Api-Key", lambda secret: secret,
        lambda secret: {
            "json_data": {"httpHeaderName1": "X-Api-Key"},
            "secure_json_data": {"httpHeaderValue1": secret},
        },
        "custom header X-Api-Key",
    ),
    CredentialCase(
        "elasticsearch-basic-auth", KIND["elasticsearch"], "Authorization",
        lambda secret: basic("grafana", secret), _basic_auth_settings, "basic auth",
    ),
    CredentialCase(
        "graphite-basic-auth", KIND["graphite"], "Authorization",
        lambda secret: basic("grafana", secret), _basic_auth_settings, "basic auth",
    ),
    CredentialCase(
        "generic-custom-authorization-wins", KIND["generic"], "Authorization",
        lambda secret: f"Bearer {secret}",
        lambda secret: {
            **_basic_auth_settings("basic-auth-loses"),
            "json_data": {"httpHeaderName1": "Authorization"},
            "secure_json_data": {
                "basicAuthPassword": "basic-auth-loses",
                "httpHeaderValue1": f"Bearer {secret}",
            },
        },
        "custom header Authorization",
    ),
]  # fmt: skip
credential_cases = pytest.mark.parametrize(
    "case", CREDENTIAL_CASES, ids=[case.id for case in CREDENTIAL_CASES]
)


class TestCredentials:
    @credential_cases
    async def test_the_right_credentials_pass(
        self, case: CredentialCase, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        demand = (case.header, case.expected(RIGHT_SECRET))
        url = await serve(aiohttp_server, case.kind.app(demand))
        health = await probe_source(session, case.source(url, RIGHT_SECRET), SECONDS)
        assert check_names(health) == [(name, "pass") for name in case.kind.checks]
        if "auth" in case.kind.checks:
            auth = health["checks"][case.kind.checks.index("auth")]
            assert auth["message"].endswith(f", {case.described} accepted")
        assert_no_secret(health, RIGHT_SECRET, "basic-auth-loses")

    @credential_cases
    async def test_wrong_credentials_fail_the_auth_check_without_showing_them(
        self, case: CredentialCase, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        demand = (case.header, case.expected(RIGHT_SECRET))
        url = await serve(aiohttp_server, case.kind.app(demand))
        health = await probe_source(session, case.source(url, WRONG_SECRET), SECONDS)
        assert health["status"] == "fail"
        assert health["checks"][-1]["name"] == "auth"
        assert "HTTP 401 in " in health["message"]
        assert f", {case.described} rejected" in health["message"]
        assert_no_secret(health, RIGHT_SECRET, WRONG_SECRET, "basic-auth-loses")
        assert_message_shape(health)

    async def test_missing_credentials_are_named_as_missing(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, fakes.flux_app(("Authorization", "Token t0ken")))
        source = make_source(url, "influxdb", json_data={"version": "Flux"})
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "pass"), ("auth", "fail")]
        assert "the upstream wants credentials and none are configured" in health["message"]
        assert "(upstream: unauthorized access)" in health["message"]

    async def test_userinfo_in_the_url_is_used_and_never_shown(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        demand = ("Authorization", basic("urluser", RIGHT_SECRET))
        url = await serve(aiohttp_server, fakes.loki_app(demand))
        with_userinfo = url.replace("http://", f"http://urluser:{RIGHT_SECRET}@")
        health = await probe_source(session, make_source(with_userinfo, "loki"), SECONDS)
        assert health["status"] == "pass"
        assert_no_secret(health, RIGHT_SECRET)
        assert "urluser" not in json.dumps(health)

    @pytest.mark.parametrize(
        "kind", [KIND["flux"], KIND["loki"], KIND["generic"]], ids=lambda kind: kind.id
    )
    async def test_an_upstream_that_echoes_credentials_is_redacted(
        self, kind: Kind, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, fakes.echoing_app(503))
        json_data = {**kind.json_data, "httpHeaderName1": "X-Api-Key"}
        secure = {"token": RIGHT_SECRET, "httpHeaderValue1": WRONG_SECRET}
        source = make_source(url, kind.type, json_data=json_data, secure_json_data=secure)
        health = await probe_source(session, source, SECONDS)
        assert health["status"] == "fail"
        assert "[redacted]" in json.dumps(health)
        assert_no_secret(health, RIGHT_SECRET, WRONG_SECRET)


# ------------------------------------------------------------------------------------------------
# Per-type details


class TestPrometheus:
    """Against Debian's real Prometheus (tests/services/prometheus.py)."""

    async def test_reports_version_and_revision_and_answers_one_plus_one(
        self, prometheus_url: str, session: aiohttp.ClientSession
    ) -> None:
        health = await probe_source(session, make_source(prometheus_url), SECONDS)
        assert check_names(health) == [("reachable", "pass"), ("auth", "pass"), ("query", "pass")]
        assert health["version"].startswith("2.")
        assert health["commit"]
        reachable, auth, query = health["checks"]
        assert reachable["message"].startswith("GET /-/ready: HTTP 200 in ")
        assert auth["message"].endswith(", no credentials configured and none needed")
        assert query["message"].startswith("GET /api/v1/query: HTTP 200 in ")
        assert query["message"].endswith(", 1+1 = 2")
        assert_message_shape(health)

    async def test_a_base_path_is_kept(
        self, prometheus_url: str, session: aiohttp.ClientSession
    ) -> None:
        # A trailing slash must not double up; Prometheus answers /-/ready only at the root.
        health = await probe_source(session, make_source(prometheus_url + "/"), SECONDS)
        assert health["status"] == "pass"
        health = await probe_source(session, make_source(prometheus_url + "/prom"), SECONDS)
        assert health["message"].startswith("GET /prom/-/ready: HTTP 404 in ")

    async def test_one_given_target_is_probed_with_its_own_base_path(
        self, prometheus_url: str, closed_port_url: str, session: aiohttp.ClientSession
    ) -> None:
        # The source's primary URL is dead; its replica at `url` is what gets probed.
        source = make_source(closed_port_url, json_data={"replicaUrls": [prometheus_url]})
        health = await probe_source(session, source, SECONDS, url=prometheus_url)
        assert check_names(health) == [("reachable", "pass"), ("auth", "pass"), ("query", "pass")]
        health = await probe_source(session, source, SECONDS, url=prometheus_url + "/replica")
        assert health["message"].startswith("GET /replica/-/ready: HTTP 404 in ")

    async def test_basic_auth_is_accepted(
        self, prometheus_basic_auth_url: str, session: aiohttp.ClientSession
    ) -> None:
        source = make_source(
            prometheus_basic_auth_url,
            basic_auth=True,
            basic_auth_user=PROMETHEUS_USER,
            secure_json_data={"basicAuthPassword": PROMETHEUS_PASSWORD},
        )
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "pass"), ("auth", "pass"), ("query", "pass")]
        assert_no_secret(health, PROMETHEUS_PASSWORD)

    async def test_a_wrong_password_fails_the_auth_check(
        self, prometheus_basic_auth_url: str, session: aiohttp.ClientSession
    ) -> None:
        source = make_source(
            prometheus_basic_auth_url,
            basic_auth=True,
            basic_auth_user=PROMETHEUS_USER,
            secure_json_data={"basicAuthPassword": WRONG_SECRET},
        )
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("auth", "fail")]
        assert health["message"].startswith("GET /-/ready: HTTP 401 in ")
        assert health["message"].endswith(", basic auth rejected (upstream: Unauthorized)")
        assert_no_secret(health, WRONG_SECRET, PROMETHEUS_PASSWORD)

    async def test_a_stopped_prometheus_fails_and_a_restarted_one_passes(
        self, start_prometheus: StartPrometheus, session: aiohttp.ClientSession
    ) -> None:
        prometheus = start_prometheus()
        source = make_source(prometheus.url)
        assert (await probe_source(session, source, SECONDS))["status"] == "pass"
        prometheus.stop()
        health = await probe_source(session, source, SECONDS)
        assert health["message"].startswith("GET /-/ready: connection refused after ")
        prometheus.start()
        assert (await probe_source(session, source, SECONDS))["status"] == "pass"

    async def test_the_whole_probe_shares_one_time_budget(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        # Each answer takes 0.25 s: the first fits in 0.4 s, the other two together do not.
        app = fakes.prometheus_app()

        @web.middleware
        async def slow_down(request: web.Request, handler: Any) -> web.StreamResponse:
            await asyncio.sleep(0.25)
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(slow_down)
        url = await serve(aiohttp_server, app)
        started = time.monotonic()
        health = await probe_source(session, make_source(url), 0.4)
        assert time.monotonic() - started < 0.9
        assert check_names(health) == [("reachable", "pass"), ("query", "fail")]
        assert "probe timeout 0.4 s" in health["message"]


class TestInfluxQL:
    """Against Debian's real InfluxDB 1.x with auth enabled (tests/services/influxdb.py)."""

    async def test_user_and_password_list_the_databases(
        self, influxdb: InfluxDB1, session: aiohttp.ClientSession
    ) -> None:
        source = make_source(
            influxdb.url,
            "influxdb",
            user=influxdb.admin_user,
            secure_json_data={"password": influxdb.admin_password},
        )
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "pass"), ("auth", "pass"), ("query", "pass")]
        assert health["version"].startswith("1.")
        assert health["checks"][0]["message"].startswith("GET /ping: HTTP 204 in ")
        assert health["checks"][1]["message"].endswith(", InfluxDB user and password accepted")
        assert "SHOW DATABASES listed " in health["checks"][2]["message"]
        assert_no_secret(health, influxdb.admin_password)
        assert_message_shape(health)

    async def test_basic_auth_takes_the_place_of_user_and_password(
        self, influxdb: InfluxDB1, session: aiohttp.ClientSession
    ) -> None:
        source = make_source(
            influxdb.url,
            "influxdb",
            json_data={"version": "InfluxQL"},
            user="nobody",
            basic_auth=True,
            basic_auth_user=influxdb.admin_user,
            secure_json_data={"basicAuthPassword": influxdb.admin_password, "password": "x"},
        )
        health = await probe_source(session, source, SECONDS)
        assert health["status"] == "pass", health

    async def test_a_wrong_password_fails_the_auth_check(
        self, influxdb: InfluxDB1, session: aiohttp.ClientSession
    ) -> None:
        source = make_source(
            influxdb.url,
            "influxdb",
            user=influxdb.admin_user,
            secure_json_data={"password": WRONG_SECRET},
        )
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "pass"), ("auth", "fail")]
        assert health["message"].startswith("GET /query: HTTP 401 in ")
        assert health["message"].endswith(
            ", InfluxDB user and password rejected (upstream: authorization failed)"
        )
        assert_no_secret(health, WRONG_SECRET, influxdb.admin_password)

    async def test_no_credentials_are_named_as_missing(
        self, influxdb: InfluxDB1, session: aiohttp.ClientSession
    ) -> None:
        health = await probe_source(session, make_source(influxdb.url, "influxdb"), SECONDS)
        assert "none are configured" in health["message"]


class TestFlux:
    async def test_the_upstream_health_check_is_passed_through(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, fakes.flux_app(("Authorization", "Token t0ken")))
        source = make_source(
            url, "influxdb", json_data={"version": "Flux"}, secure_json_data={"token": "t0ken"}
        )
        health = await probe_source(session, source, SECONDS)
        assert (health["version"], health["commit"]) == ("v2.7.12", "ec9dcde5d6")
        reachable = health["checks"][0]
        assert reachable["message"].endswith(", influxdb: ready for queries and writes")
        assert reachable["checks"] == [
            {
                "name": "influxdb",
                "status": "pass",
                "message": "ready for queries and writes",
                "checks": [],
                "version": "v2.7.12",
                "commit": "ec9dcde5d6",
            }
        ]
        assert health["checks"][2]["message"].endswith(", buckets listed")

    async def test_a_failing_upstream_health_check_fails_with_its_message(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, fakes.flux_app(None, healthy=False))
        source = make_source(url, "influxdb", json_data={"version": "flux"})
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "fail")]
        assert health["message"].startswith("GET /health: HTTP 503 in ")
        assert ", influxdb: bolt: database not open" in health["message"]
        assert health["checks"][0]["checks"] == [fakes.INFLUXDB2_FAILING_HEALTH]
        assert health["version"] == "v2.8.0"

    async def test_a_health_answer_that_is_not_a_health_check_fails(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        async def not_influxdb(request: web.Request) -> web.Response:
            return web.Response(text="OK")

        app = web.Application()
        app.router.add_get("/health", not_influxdb)
        url = await serve(aiohttp_server, app)
        source = make_source(url, "influxdb", json_data={"version": "Flux"})
        health = await probe_source(session, source, SECONDS)
        assert check_names(health) == [("reachable", "fail")]
        assert health["message"].startswith("GET /health: HTTP 200 in ")
        assert health["message"].endswith(", the answer is not an InfluxDB HealthCheck")


class TestOtherTypes:
    async def test_an_unready_loki_says_why(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, fakes.loki_app(None, ready=False))
        health = await probe_source(session, make_source(url, "loki"), SECONDS)
        assert health["message"].startswith("GET /ready: HTTP 503 in ")
        assert health["message"].endswith(
            ", upstream says: Ingester not ready: waiting for 15s after being ready"
        )

    @pytest.mark.parametrize(
        ("cluster_status", "passes"), [("green", True), ("yellow", True), ("red", False)]
    )
    async def test_a_red_elasticsearch_cluster_fails(
        self,
        cluster_status: str,
        passes: bool,
        aiohttp_server: AiohttpServer,
        session: aiohttp.ClientSession,
    ) -> None:
        url = await serve(aiohttp_server, fakes.elasticsearch_app(None, status=cluster_status))
        health = await probe_source(session, make_source(url, "elasticsearch"), SECONDS)
        cluster = health["checks"][1]
        assert (cluster["name"], cluster["status"]) == ("cluster", "pass" if passes else "fail")
        assert f"cluster 'docker-cluster' is {cluster_status}" in cluster["message"]

    async def test_graphite_renders_a_constant(
        self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
    ) -> None:
        url = await serve(aiohttp_server, fakes.graphite_app(None))
        health = await probe_source(session, make_source(url, "graphite"), SECONDS)
        assert health["checks"][1]["message"].endswith(", constantLine(1) returned 3 points")

    @pytest.mark.parametrize(("status", "passes"), [(200, True), (404, True), (500, False)])
    async def test_an_unknown_type_passes_below_500(
        self,
        status: int,
        passes: bool,
        aiohttp_server: AiohttpServer,
        session: aiohttp.ClientSession,
    ) -> None:
        url = await serve(aiohttp_server, fakes.generic_app(None, status=status))
        health = await probe_source(session, make_source(url, "jaeger"), SECONDS)
        assert health["status"] == ("pass" if passes else "fail")
        assert health["checks"][0]["message"].startswith(f"GET /: HTTP {status} in ")

    @pytest.mark.parametrize("url", ["", "not a url", "ftp://example.com", "localhost:9090"])
    async def test_a_source_without_an_http_url_fails_without_a_request(
        self, url: str, session: aiohttp.ClientSession
    ) -> None:
        health = await probe_source(session, make_source(url, "prometheus"), SECONDS)
        assert check_names(health) == [("reachable", "fail")]
        assert health["message"] == "the source has no absolute http(s) URL to probe"


# ------------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def self_signed_server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context whose certificate (for 127.0.0.1) no client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


class TestTLS:
    @pytest.mark.parametrize(
        ("json_data", "passes"),
        [({}, False), ({"tlsSkipVerify": False}, False), ({"tlsSkipVerify": True}, True)],
    )
    async def test_certificates_are_verified_unless_tls_skip_verify(
        self,
        json_data: dict[str, Any],
        passes: bool,
        self_signed_server_context: ssl.SSLContext,
        aiohttp_server: AiohttpServer,
        session: aiohttp.ClientSession,
    ) -> None:
        url = await serve(aiohttp_server, fakes.loki_app(None), ssl=self_signed_server_context)
        assert url.startswith("https://")
        source = make_source(url, "loki", json_data=json_data)
        health = await probe_source(session, source, SECONDS)
        assert health["status"] == ("pass" if passes else "fail")
        if not passes:
            assert "TLS certificate rejected (self-signed certificate)" in health["message"]
