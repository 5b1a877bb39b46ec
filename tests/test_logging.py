"""Request ids and the one canonical log line per request."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog
from prometheus_client import CollectorRegistry

from gateway.logging import configure_logging, request_log
from gateway.metrics import GatewayMetrics
from gateway.registry.models import Org, Principal, Role
from gateway.requests import record_refusal, record_request
from tests.conftest import ADMIN_TOKEN
from tests.types import AppClient


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Request-Id": "abc-123"}, "abc-123"),
        (
            {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ({"Zap-Trace-Span": "3fd0c6b2a1:1:0:1"}, "3fd0c6b2a1:1:0:1"),
        ({"X-Request-Id": "a", "Zap-Trace-Span": "b"}, "a"),
    ],
)
async def test_request_id_is_taken_from_the_client_and_echoed(
    client: AppClient, headers: dict[str, str], expected: str
) -> None:
    response = await client.get("/ping", headers=headers)
    assert response.headers["X-Request-Id"] == expected


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Request-Id": "has spaces and <html>"}, {"X-Request-Id": "x" * 300}],
)
async def test_a_missing_or_unsafe_request_id_is_replaced(
    client: AppClient, headers: dict[str, str]
) -> None:
    response = await client.get("/ping", headers=headers)
    generated = response.headers["X-Request-Id"]
    assert len(generated) == 32
    int(generated, 16)


async def test_one_canonical_line_per_request(client: AppClient) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.get(
            "/api/nothing",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-Id": "rid-1"},
        )
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "GET"
    assert line["status"] == 404
    assert line["org"] == 1
    assert line["path"] == "<unmatched>"
    assert isinstance(line["duration_ms"], float)
    assert ADMIN_TOKEN not in repr(logs)


async def test_the_log_line_names_the_route_template_not_the_raw_path(
    client: AppClient,
) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.get("/ready?secret=1")
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["path"] == "/ready"


class TestConfiguration:
    """configure_logging on the real root logger, restored afterwards."""

    @pytest.fixture(autouse=True)
    def restore_logging(self) -> Iterator[None]:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        yield
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
        request_log.disable()

    def test_aiohttp_stdlib_logs_render_as_json_lines(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json", "info")
        logging.getLogger("aiohttp.server").error("Error handling request")
        record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert record["event"] == "Error handling request"
        assert record["logger"] == "aiohttp.server"
        assert record["level"] == "error"
        assert "timestamp" in record

    def test_fields_named_like_secrets_are_redacted(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json", "info")
        structlog.get_logger("t").info("oops", authorization="Bearer abc", password="pw", ok=1)
        record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert record["authorization"] == "[redacted]"
        assert record["password"] == "[redacted]"
        assert record["ok"] == 1

    def test_credentials_quoted_in_stdlib_messages_and_tracebacks_are_redacted(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json", "info")
        try:
            raise ValueError("bad header line: 'Authorization : Bearer SECRET-IN-TRACE'")
        except ValueError:
            logging.getLogger("aiohttp.server").exception(
                "Error handling request: %r", "Cookie: session=SECRET-COOKIE"
            )
        err = capsys.readouterr().err
        record = json.loads(err.strip().splitlines()[-1])
        assert "SECRET" not in err
        assert "Authorization : [redacted]" in record["exception"]
        assert "Traceback (most recent call last)" in record["exception"]
        assert "Cookie: [redacted]" in record["event"]

    def test_level_filters(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("json", "warning")
        structlog.get_logger("t").info("quiet")
        structlog.get_logger("t").warning("loud")
        err = capsys.readouterr().err
        assert "quiet" not in err
        assert "loud" in err


class TestRequestLine:
    """The request line written straight to bytes (gateway/logging.py RequestLog) says what the
    structlog path says, in the same order, and steps aside where that path must take it."""

    @pytest.fixture(autouse=True)
    def restore_logging(self) -> Iterator[None]:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        yield
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        request_log.disable()

    @staticmethod
    def record(org: int | None = 3) -> None:
        principal = None
        if org is not None:
            created = datetime(2024, 1, 1, tzinfo=UTC)
            principal = Principal(1, Org(org, "0" * 16, "o", created), Role.VIEWER)
        metrics = GatewayMetrics(CollectorRegistry())
        logger = structlog.get_logger("gateway.request")
        record_request(metrics, logger, "GET", "/api/x/{uid}", 200, 0.012345, principal)

    @staticmethod
    def last_line(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
        record: dict[str, object] = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        return record

    def test_same_fields_in_the_same_order_as_the_structlog_path(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json", "info")
        structlog.contextvars.bind_contextvars(worker=1, request_id="rid-7")
        assert request_log.active
        self.record()
        fast = self.last_line(capsys)
        structlog.get_logger("gateway.request").info(
            "request", method="GET", path="/api/x/{uid}", status=200, duration_ms=12.35, org=3
        )
        slow = self.last_line(capsys)
        assert list(fast) == list(slow)
        assert {**fast, "timestamp": None} == {**slow, "timestamp": None}
        assert fast["duration_ms"] == 12.35
        stamp = str(fast["timestamp"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        written = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs(written.timestamp() - time.time()) < 5

    def test_a_refusal_line_has_the_fields_of_a_request_line_and_its_own_id(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json", "info")
        structlog.contextvars.bind_contextvars(worker=1)
        self.record()
        normal = self.last_line(capsys)
        record_refusal("GET", "/x/" + "a" * 300, 414, 0.5, "refused-1")
        refused = self.last_line(capsys)
        assert set(refused) == {*normal, "request_id"}
        assert refused["request_id"] == "refused-1"
        assert (refused["method"], refused["status"], refused["org"]) == ("GET", 414, None)
        assert refused["path"] == "/x/" + "a" * 197 + "..."
        # The id was bound for that line only.
        assert "request_id" not in structlog.contextvars.get_contextvars()

    def test_no_principal_is_org_null(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("json", "info")
        self.record(org=None)
        assert self.last_line(capsys)["org"] is None

    def test_context_fields_named_like_secrets_are_redacted(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json", "info")
        structlog.contextvars.bind_contextvars(token="dsg_secret", Authorization="Bearer x")
        self.record()
        err = capsys.readouterr().err
        record = json.loads(err.strip().splitlines()[-1])
        assert record["token"] == "[redacted]"
        assert record["Authorization"] == "[redacted]"
        assert "dsg_secret" not in err
        assert "Bearer x" not in err

    def test_capture_logs_still_sees_the_line(self) -> None:
        configure_logging("json", "info")
        with structlog.testing.capture_logs() as logs:
            assert not request_log.active
            self.record()
        assert [entry["event"] for entry in logs] == ["request"]
        assert request_log.active  # the processors are back

    def test_console_takes_the_ordinary_path(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("console", "info")
        assert not request_log.active
        self.record()
        err = capsys.readouterr().err
        assert "request" in err
        assert "/api/x/{uid}" in err
        assert not err.lstrip().startswith("{")

    def test_nothing_below_the_level(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("json", "warning")
        assert not request_log.active
        self.record()
        assert capsys.readouterr().err == ""

    def test_a_later_configure_takes_over(self) -> None:
        configure_logging("json", "info")
        structlog.configure(processors=[structlog.processors.JSONRenderer()])
        assert not request_log.active

    async def test_lines_of_one_loop_turn_are_written_together_and_in_order(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json", "info")
        self.record(org=1)
        self.record(org=2)
        assert capsys.readouterr().err == ""  # held until the end of this turn of the loop
        await asyncio.sleep(0)
        assert [json.loads(line)["org"] for line in capsys.readouterr().err.splitlines()] == [1, 2]
        self.record(org=3)
        structlog.get_logger("t").warning("after")  # any other line writes the held ones first
        events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert [(event["event"], event.get("org")) for event in events] == [
            ("request", 3),
            ("after", None),
        ]
        self.record(org=4)
        request_log.disable()  # and so does the end (disable, or the process's exit)
        assert json.loads(capsys.readouterr().err)["org"] == 4
