"""Request ids and the one canonical log line per request."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway.logging import configure_logging
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
