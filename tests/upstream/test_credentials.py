"""Credential headers by Grafana's injection rules (gateway/upstream/credentials.py)."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from gateway.upstream.credentials import (
    NO_CREDENTIALS,
    InfluxQueryLanguage,
    influx_query_language,
    source_credentials,
    url_without_userinfo,
)
from tests.health.sources import basic, make_source

URL_BASE = "http://upstream.example:9090"


def credentials_of(type: str = "prometheus", **fields: Any) -> tuple[dict[str, str], str]:
    credentials = source_credentials(make_source(fields.pop("url", URL_BASE), type, **fields))
    return dict(credentials.headers), credentials.description


class TestAuthorization:
    def test_a_source_without_credentials_sends_no_headers(self) -> None:
        assert credentials_of() == ({}, NO_CREDENTIALS)

    def test_basic_auth_uses_the_basic_auth_user_and_password(self) -> None:
        headers, described = credentials_of(
            basic_auth=True,
            basic_auth_user="grafana",
            secure_json_data={"basicAuthPassword": "pässword"},
        )
        assert headers == {"Authorization": basic("grafana", "pässword")}
        assert described == "basic auth"

    def test_basic_auth_off_ignores_the_basic_auth_password(self) -> None:
        headers, _ = credentials_of(
            basic_auth=False,
            basic_auth_user="grafana",
            secure_json_data={"basicAuthPassword": "pw"},
        )
        assert headers == {}

    def test_a_colon_in_the_user_does_not_raise(self) -> None:
        headers, _ = credentials_of(basic_auth=True, basic_auth_user="a:b")
        assert headers == {"Authorization": basic("a:b", "")}

    def test_an_influxql_source_sends_user_and_password(self) -> None:
        headers, described = credentials_of(
            "influxdb", user="reader", secure_json_data={"password": "pw"}
        )
        assert headers == {"Authorization": basic("reader", "pw")}
        assert described == "InfluxDB user and password"

    def test_basic_auth_takes_precedence_over_the_influxdb_user(self) -> None:
        headers, described = credentials_of(
            "influxdb",
            user="reader",
            basic_auth=True,
            basic_auth_user="proxy-user",
            secure_json_data={"password": "pw", "basicAuthPassword": "proxy-pw"},
        )
        assert headers == {"Authorization": basic("proxy-user", "proxy-pw")}
        assert described == "basic auth"

    def test_user_and_password_are_not_sent_for_other_types(self) -> None:
        headers, _ = credentials_of("prometheus", user="reader", secure_json_data={"password": "x"})
        assert headers == {}

    def test_a_flux_source_sends_its_token(self) -> None:
        headers, described = credentials_of(
            "influxdb", json_data={"version": "Flux"}, secure_json_data={"token": "t0k"}
        )
        assert headers == {"Authorization": "Token t0k"}
        assert described == "token"

    def test_a_token_is_not_sent_for_influxql(self) -> None:
        headers, _ = credentials_of("influxdb", secure_json_data={"token": "t0k"})
        assert headers == {}

    def test_userinfo_in_the_url_is_the_weakest_choice(self) -> None:
        url = "http://u:p@upstream.example"
        assert credentials_of(url=url) == (
            {"Authorization": basic("u", "p")},
            "basic auth from the URL",
        )
        headers, _ = credentials_of(url=url, basic_auth=True, basic_auth_user="grafana")
        assert headers == {"Authorization": basic("grafana", "")}

    def test_url_without_userinfo_keeps_everything_else(self) -> None:
        stripped = url_without_userinfo(URL("https://u:p@h:8086/base/?x=1"))
        assert str(stripped) == "https://h:8086/base/?x=1"


class TestCustomHeaders:
    def test_pairs_are_read_in_order_until_the_first_missing_name(self) -> None:
        names = {"httpHeaderName1": "X-Org", "httpHeaderName2": "X-Key", "httpHeaderName4": "X-4"}
        values = {"httpHeaderValue1": "1", "httpHeaderValue2": "k", "httpHeaderValue4": "4"}
        headers, described = credentials_of(json_data=names, secure_json_data=values)
        assert headers == {"X-Org": "1", "X-Key": "k"}
        assert described == "custom headers X-Org, X-Key"

    def test_a_name_without_a_value_is_skipped_without_stopping(self) -> None:
        headers, _ = credentials_of(
            json_data={"httpHeaderName1": "X-Empty", "httpHeaderName2": "X-Key"},
            secure_json_data={"httpHeaderValue2": "k"},
        )
        assert headers == {"X-Key": "k"}

    def test_a_custom_authorization_wins_over_basic_auth_and_token(self) -> None:
        headers, described = credentials_of(
            "influxdb",
            basic_auth=True,
            basic_auth_user="grafana",
            json_data={"version": "Flux", "httpHeaderName1": "authorization"},
            secure_json_data={"token": "t0k", "httpHeaderValue1": "Bearer jwt"},
        )
        assert headers == {"authorization": "Bearer jwt"}
        assert described == "custom header authorization"

    def test_credentials_and_custom_headers_are_both_named(self) -> None:
        _, described = credentials_of(
            basic_auth=True,
            json_data={"httpHeaderName1": "X-Scope-OrgID"},
            secure_json_data={"httpHeaderValue1": "tenant"},
        )
        assert described == "basic auth and custom header X-Scope-OrgID"

    @pytest.mark.parametrize(
        ("name", "value"),
        [("X-Bad\r\nInjected", "v"), ("X Space", "v"), ("X-Ok", "v\r\nInjected: yes")],
    )
    def test_a_header_that_could_split_the_request_is_dropped(self, name: str, value: str) -> None:
        headers, _ = credentials_of(
            json_data={"httpHeaderName1": name}, secure_json_data={"httpHeaderValue1": value}
        )
        assert headers == {}


class TestSecrets:
    def test_secrets_cover_inputs_and_the_header_values_built_from_them(self) -> None:
        credentials = source_credentials(
            make_source(
                "http://u:url-pw@h",
                basic_auth=True,
                basic_auth_user="grafana",
                secure_json_data={"basicAuthPassword": "pw", "unused": "other"},
            )
        )
        encoded = basic("grafana", "pw")
        assert credentials.secrets >= {"pw", "other", "url-pw", encoded, encoded.split()[1]}

    def test_repr_shows_no_secret(self) -> None:
        credentials = source_credentials(
            make_source(URL_BASE, basic_auth=True, secure_json_data={"basicAuthPassword": "pw1"})
        )
        assert "pw1" not in repr(credentials)
        assert basic("", "pw1") not in repr(credentials)


@pytest.mark.parametrize(
    ("type", "version", "language"),
    [
        ("influxdb", None, InfluxQueryLanguage.INFLUXQL),
        ("influxdb", "", InfluxQueryLanguage.INFLUXQL),
        ("influxdb", "InfluxQL", InfluxQueryLanguage.INFLUXQL),
        ("influxdb", "flux", InfluxQueryLanguage.FLUX),
        ("influxdb", "SQL", InfluxQueryLanguage.SQL),
        ("influxdb", "v9", None),
        ("prometheus", "Flux", None),
    ],
)
def test_influx_query_language(
    type: str, version: str | None, language: InfluxQueryLanguage | None
) -> None:
    json_data = {} if version is None else {"version": version}
    assert influx_query_language(make_source(URL_BASE, type, json_data=json_data)) is language
