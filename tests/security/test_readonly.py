"""The read-only classification of InfluxDB queries (gateway/security/): InfluxQL statements,
Flux scripts, and where in a request InfluxDB finds the query."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from gateway.security.flux import flux_refusal
from gateway.security.influxql import influxql_refusal, split_statements
from gateway.security.readonly import V1_QUERY, V2_QUERY, body_needed, query_refusal

FORM = "application/x-www-form-urlencoded"

# --- InfluxQL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM m",
        "select mean(value) from cpu where time > now() - 1h group by time(1m), host fill(null)",
        "  SELECT\t*\nFROM\r\nm  ;  ",
        'SELECT "DROP" FROM m',
        'SELECT "into" FROM "into"',
        "SELECT * FROM m WHERE t = 'a;DROP DATABASE x'",
        "SELECT * FROM m WHERE t = 'it\\'s; DROP DATABASE x'",
        "SELECT * FROM m -- ;DROP DATABASE x",
        "SELECT * FROM m /* ; DROP DATABASE x */",
        "SELECT * FROM m WHERE t =~ /a;DROP DATABASE x/",
        "SELECT * FROM m WHERE t =~ /it's; DROP DATABASE x/",
        "SELECT * FROM m WHERE t !~ /a\\/;DROP DATABASE x/",
        'SELECT * FROM "autogen"./cpu;DROP DATABASE x/',
        "SELECT /u;DROP DATABASE x/ FROM m GROUP BY /h;DROP/",
        "SELECT count(/v;DROP/) FROM m",
        "SELECT a / 2, b/c FROM m",
        "SELECT * FROM m; SELECT * FROM n;",
        "SHOW DATABASES",
        "show tag values with key =~ /a'b;DROP/",
        "SHOW MEASUREMENTS WITH MEASUREMENT = db./a;DROP/",
        "SHOW FIELD KEYS; SHOW RETENTION POLICIES ON db",
        "EXPLAIN SELECT * FROM m",
        "EXPLAIN ANALYZE SELECT * FROM m",
        "EXPLAIN ANALYZE VERBOSE SELECT * FROM m",
        ";;",
    ],
)
def test_queries_that_only_read_pass(query: str) -> None:
    assert influxql_refusal(query) is None


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("DROP DATABASE x", "DROP DATABASE"),
        ("drop   database x", "DROP DATABASE"),
        ("DELETE FROM m", "DELETE"),
        ("SELECT * INTO m2 FROM m", "SELECT … INTO"),
        ("select * into m2 from m", "SELECT … INTO"),
        ('SELECT * INTO"m2" FROM m', "SELECT … INTO"),
        ("SELECT * FROM (SELECT * INTO x FROM m)", "SELECT … INTO"),
        ("EXPLAIN ANALYZE SELECT * INTO m2 FROM m", "EXPLAIN SELECT … INTO"),
        ("CREATE RETENTION POLICY rp ON db DURATION 1d REPLICATION 1", "CREATE RETENTION POLICY"),
        ("ALTER RETENTION POLICY rp ON db DEFAULT", "ALTER RETENTION POLICY"),
        ("CREATE CONTINUOUS QUERY cq ON db BEGIN SELECT 1 END", "CREATE CONTINUOUS QUERY"),
        ("GRANT ALL TO u", "GRANT"),
        ("REVOKE ALL PRIVILEGES FROM u", "REVOKE"),
        ("KILL QUERY 3", "KILL QUERY"),
        ("SET PASSWORD FOR u = 'x'", "SET PASSWORD"),
        ("DROP SERIES FROM m", "DROP SERIES"),
        ("SELECT * FROM m; DROP MEASUREMENT m", "DROP MEASUREMENT"),
        ("SELECT * FROM m;DROP DATABASE x", "DROP DATABASE"),
        ("SELECT * FROM m -- comment\n; DROP DATABASE x", "DROP DATABASE"),
        ("SELECT * FROM m /* ; */ ; DROP DATABASE x", "DROP DATABASE"),
        ("SELECT * FROM m WHERE t = 'x' ; DROP DATABASE x", "DROP DATABASE"),
        ('SELECT * FROM m WHERE t = "a" ; DROP DATABASE x', "DROP DATABASE"),
        # In an expression, `.` then `/` divides (influxd reads `a./2` as `a / 2`): a regex
        # read there would hide the DROP that influxd runs.
        ("SELECT a./2 FROM m; DROP DATABASE x; SELECT b /* / */ FROM m", "DROP DATABASE"),
        ("SELECT a / 2 FROM m; DROP DATABASE x; SELECT 1 / 2 FROM m", "DROP DATABASE"),
        ("SELECT * FROM m WHERE a = b./2; DROP DATABASE x", "DROP DATABASE"),
        # Where influxd reads a regex, `/*` opens one, not a comment.
        ("SELECT * FROM m WHERE a =~ /*x/ ; DROP DATABASE x", "DROP DATABASE"),
    ],
)
def test_statements_that_change_data_are_named(query: str, named: str) -> None:
    assert influxql_refusal(query) == named


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("SELECT 'unterminated", "an unterminated quoted text at offset 7"),
        ('SELECT "unterminated', "an unterminated quoted text at offset 7"),
        ("SELECT 'two\nlines'", "an unterminated quoted text at offset 7"),
        ("SELECT * FROM m /* open", "an unterminated comment at offset 16"),
        ("SELECT * FROM m WHERE a =~ /open", "an unterminated regex at offset 27"),
        ("SELECT * FROM m WHERE h = é", "the character 'é' at offset 26"),
    ],
)
def test_what_the_lexer_cannot_follow_is_not_read_only(query: str, reason: str) -> None:
    assert influxql_refusal(query) == (
        f"an InfluxQL query that could not be classified as read-only ({reason})"
    )


@pytest.mark.parametrize(
    ("query", "head"),
    [("UPDATE m SET x = 1", "UPDATE"), ('"SELECT" * FROM m', "a quoted name or literal")],
)
def test_unknown_statements_are_not_read_only(query: str, head: str) -> None:
    assert influxql_refusal(query) == (
        f"an InfluxQL statement that could not be classified as read-only (it starts with {head})"
    )


def test_statements_are_split_on_semicolons_outside_quotes_comments_and_regexes() -> None:
    statements = split_statements(
        "SELECT 'a;b' FROM \"c;d\" WHERE e =~ /f;g/ -- h;i\n; SHOW DATABASES /* ; */"
    )
    assert [[text for _, text in statement][:2] for statement in statements] == [
        ["SELECT", "string"],
        ["SHOW", "DATABASES"],
    ]


# --- Flux ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        'from(bucket: "b") |> range(start: -1h) |> filter(fn: (r) => r._measurement == "cpu")',
        "from(bucket: v.bucket) |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        "  |> aggregateWindow(every: 1m, fn: mean)",
        'import "strings"\nimport "experimental"\n'
        'from(bucket: "b") |> range(start: 2024-01-01T00:00:00Z) |> experimental.group(columns: '
        '["host"], mode: "extend")',
        'from(bucket: "b") |> filter(fn: (r) => r.direction == "to")',
        'from(bucket: "b") |> filter(fn: (r) => r.host =~ /to/ and r.x !~ /"to(/)',
        '// |> to(bucket: "x")\nfrom(bucket: "b")',
        'x = "${r.host} went to ${r.city}"',
        "a = b / c / 2",
    ],
)
def test_flux_that_only_reads_passes(script: str) -> None:
    assert flux_refusal(script) is None


@pytest.mark.parametrize(
    ("script", "named"),
    [
        ('from(bucket: "b") |> range(start: -1h) |> to(bucket: "c")', "Flux's to()"),
        ('import "experimental"\ndata |> experimental.to(bucket: "c")', "Flux's to()"),
        ('import "influxdata/influxdb"\ndata |> influxdb.wideTo(bucket: "c")', "Flux's wideTo()"),
        ('write = to\nfrom(bucket: "b") |> write(bucket: "c")', "Flux's to()"),
        ('import "experimental"\nexperimental["to"]', 'Flux\'s ["to"]'),
        ('x = "${string(v: to)}"', "Flux's to()"),
        ('f(x: /"/) |> to(bucket: "b") |> map(fn: (r) => "/")', "Flux's to()"),
        ("a = 4 / to / 2", "Flux's to()"),
        ('import "http"\nhttp.post(url: "http://example.com")', 'the Flux package "http"'),
        ('import "sql"\ndata |> sql.to(driverName: "postgres")', 'the Flux package "sql"'),
        ('import s "slack"', 'the Flux package "slack"'),
        ('import "influxdata/influxdb/monitor"', 'the Flux package "influxdata/influxdb/monitor"'),
        ('import "experimental/mqtt"', 'the Flux package "experimental/mqtt"'),
        ('import "contrib/sranka/telegram"', 'the Flux package "contrib/sranka/telegram"'),
        ('import "influxdata/influxdb/secrets"', 'the Flux package "influxdata/influxdb/secrets"'),
        ('import "csv"', 'the Flux package "csv"'),
    ],
)
def test_flux_that_writes_or_reaches_out_is_named(script: str, named: str) -> None:
    assert flux_refusal(script) == named


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ('from(bucket: "b', "an unterminated string at offset 13"),
        ('x = "${ a ', "an unterminated ${…} in a string"),
        ("r.x =~ /open", "an unterminated regex at offset 7"),
        ("a = #", "the character '#' at offset 4"),
    ],
)
def test_flux_the_lexer_cannot_follow_is_not_read_only(script: str, reason: str) -> None:
    assert flux_refusal(script) == (
        f"a Flux script that could not be classified as read-only ({reason})"
    )


# --- where InfluxDB finds the query -------------------------------------------------------------


def test_a_v1_query_is_read_from_the_url_and_a_form_body() -> None:
    drop = urlencode({"q": "DROP DATABASE x"})
    show = urlencode({"q": "SHOW DATABASES"})
    assert query_refusal("GET", V1_QUERY, show, None, None, None) is None
    assert query_refusal("GET", V1_QUERY, drop, None, None, None) == "DROP DATABASE"
    assert query_refusal("HEAD", V1_QUERY, drop, None, None, None) == "DROP DATABASE"
    body = drop.encode()
    assert query_refusal("POST", V1_QUERY, "db=x", FORM, None, body) == "DROP DATABASE"
    # influxd takes the body's q first, the URL's next: both are classified.
    assert query_refusal("POST", V1_QUERY, show, FORM, None, body) == "DROP DATABASE"
    assert query_refusal("POST", V1_QUERY, drop, FORM, None, show.encode()) == "DROP DATABASE"
    # Only a form body holds a q for influxd: any other body is not read by it, nor here.
    assert query_refusal("POST", V1_QUERY, show, "text/plain", None, None) is None
    assert not body_needed("POST", V1_QUERY, "text/plain")
    assert body_needed("POST", V1_QUERY, "Application/X-WWW-Form-Urlencoded; charset=utf-8")
    assert not body_needed("GET", V1_QUERY, FORM)


def test_every_q_counts_however_the_form_is_split() -> None:
    # Go before 1.17 also split forms on ";": there, `x=1;q=DROP…` is a q of its own.
    hidden = "x=1;q=DROP+DATABASE+d&q=SHOW+DATABASES"
    assert query_refusal("GET", V1_QUERY, hidden, None, None, None) == "DROP DATABASE"
    assert query_refusal("GET", V1_QUERY, "%71=DROP+DATABASE+d", None, None, None) == (
        "DROP DATABASE"
    )
    assert query_refusal(
        "GET", V1_QUERY, "q=SHOW%20DATABASES%3BDROP%20DATABASE%20d", None, None, None
    ) == ("DROP DATABASE")


def test_a_multipart_body_is_refused_unread() -> None:
    refusal = query_refusal("POST", V1_QUERY, "", "multipart/form-data; boundary=x", None, None)
    assert refusal == (
        "a query that could not be classified as read-only "
        "(a multipart/form-data body, whose q may be an uploaded file)"
    )
    assert not body_needed("POST", V1_QUERY, "multipart/form-data; boundary=x")


def v2(body: object, content_type: str = "application/json") -> str | None:
    raw = body if isinstance(body, str) else json.dumps(body)
    return query_refusal("POST", V2_QUERY, "org=o", content_type, None, raw.encode())


def test_a_v2_query_is_read_from_its_json_or_flux_body() -> None:
    read = 'from(bucket: "b") |> range(start: -1h)'
    write = read + ' |> to(bucket: "c")'
    assert v2({"query": read, "type": "flux", "dialect": {"annotations": ["group"]}}) is None
    assert v2({"query": write, "type": "flux"}) == "Flux's to()"
    assert v2({"QUERY": write}) == "Flux's to()"  # Go's decoder matches names without case
    assert v2(read, "application/vnd.flux") is None
    assert v2(write, "application/vnd.flux") == "Flux's to()"
    # Go decodes the first JSON value and ignores what follows.
    assert v2(json.dumps({"query": write}) + " trailing") == "Flux's to()"
    assert v2({"query": "SHOW DATABASES", "type": "influxql"}) is None
    assert v2({"query": "DROP DATABASE x", "type": "influxql"}) == "DROP DATABASE"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (read := 'from(bucket: "b")', "a body that is neither JSON nor application/vnd.flux"),
        ([read], "a JSON body that is not an object"),
        ({"query": read, "Query": read}, 'the field "Query"'),
        ({"query": read, "spec": {}}, 'the field "spec"'),
        ({"type": "flux"}, 'no "query" string'),
        ({"query": read, "type": "sql"}, 'the query type "sql"'),
        (
            {"query": read, "extern": {"body": [{"type": "CallExpression"}]}},
            "an extern that calls or imports",
        ),
        ({"query": read, "extern": {"body": [{"name": "to"}]}}, "an extern that calls or imports"),
    ],
)
def test_a_v2_body_that_cannot_be_classified_is_not_read_only(body: object, reason: str) -> None:
    assert v2(body) == f"a query that could not be classified as read-only ({reason})"


def test_a_compressed_v2_body_is_not_read_only() -> None:
    refusal = query_refusal("POST", V2_QUERY, "", "application/json", "gzip", b"\x1f\x8b")
    assert refusal == (
        "a query that could not be classified as read-only (a body with Content-Encoding gzip)"
    )
    assert v2({"query": 'from(bucket: "b")', "extern": {"body": [{"value": 1}]}}) is None
