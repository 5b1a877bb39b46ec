"""Proxy policy: traversal never escapes the base path; Grafana's allow-lists per type."""

from __future__ import annotations

import pytest

from gateway.errors import Forbidden
from gateway.proxy.policy import (
    ProxyPath,
    UnsafePath,
    check_route,
    join_upstream_path,
    strip_query_params,
)
from gateway.registry.models import Role


class TestPaths:
    @pytest.mark.parametrize(
        "raw",
        [
            "..",
            "../admin",
            "api/v1/query/../../admin/tsdb",
            "api/%2e%2e/admin",
            "api/%2E%2E/admin",
            "api/.%2e/admin",
            "api/%252e%252e/admin",  # double-encoded
            "api/%25252e%25252e/admin",  # triple-encoded
            "api/v1%2fadmin",
            "api/v1%2Fadmin",
            "api/v1%252fadmin",
            "api/v1%5cadmin",
            "api\\..\\admin",
            "api/%00",
            "./api",
        ],
    )
    def test_traversal_and_encoded_separators_are_refused(self, raw: str) -> None:
        with pytest.raises(UnsafePath) as caught:
            ProxyPath.parse(raw)
        assert caught.value.status == 400
        assert caught.value.message.startswith("invalid proxy path")

    @pytest.mark.parametrize(
        ("raw", "clean"),
        [
            ("api/v1/query", "api/v1/query"),
            ("/api/v1/query", "api/v1/query"),
            ("api//v1/query/", "api/v1/query"),
            ("api/v1/label/__name__/values", "api/v1/label/__name__/values"),
            ("a%20b/c%3Fd", "a b/c?d"),
            ("..foo/bar..", "..foo/bar.."),
            ("", ""),
        ],
    )
    def test_safe_paths_keep_their_encoding_and_get_a_clean_form(
        self, raw: str, clean: str
    ) -> None:
        path = ProxyPath.parse(raw)
        assert path.raw == raw.lstrip("/")
        assert path.clean == clean

    @pytest.mark.parametrize(
        ("url", "raw", "joined"),
        [
            ("http://p:9090", "api/v1/query", "/api/v1/query"),
            ("http://p:9090/", "api/v1/query", "/api/v1/query"),
            ("http://p:9090/prom/", "api/v1/query", "/prom/api/v1/query"),
            ("http://p:9090/prom", "", "/prom"),
            ("http://p:9090", "", "/"),
            ("http://p:9090/base", "a%20b", "/base/a%20b"),
        ],
    )
    def test_join_puts_the_remainder_under_the_base_path(
        self, url: str, raw: str, joined: str
    ) -> None:
        assert join_upstream_path(url, ProxyPath.parse(raw)) == joined

    @pytest.mark.parametrize(
        ("query", "kept"),
        [
            ("", ""),
            ("query=up&time=1", "query=up&time=1"),
            ("query=up&auth_token=abc&token=x", "query=up"),
            ("auth%5Ftoken=abc&q=%2B1", "q=%2B1"),
            ("tokens=1&token_x=2", "tokens=1&token_x=2"),
        ],
    )
    def test_auth_query_parameters_are_stripped_and_the_rest_kept_verbatim(
        self, query: str, kept: str
    ) -> None:
        assert strip_query_params(query) == kept


class TestAllowLists:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "api/v1/query"),
            ("GET", "api/v1/admin/tsdb/snapshot"),  # GET is never denied by the rule
            ("POST", "api/v1/query"),
            ("POST", "api/v1/query_range"),
            ("POST", "api/v1/series"),
            ("POST", "api/v1/labels"),
            ("POST", "api/v1/query_exemplars"),
        ],
    )
    def test_prometheus_allows_reads_and_listed_posts_for_viewers(
        self, method: str, path: str
    ) -> None:
        check_route("prometheus", method, path, Role.VIEWER)

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "api/v1/admin/tsdb/delete_series"),
            ("PUT", "api/v1/query"),
            ("DELETE", "api/v1/series"),
            ("POST", "api/v1/queryx"),  # segment-wise, unlike Grafana's string prefix
            ("POST", ""),
        ],
    )
    def test_prometheus_refuses_unlisted_writes_with_grafanas_message(
        self, method: str, path: str
    ) -> None:
        with pytest.raises(Forbidden) as caught:
            check_route("prometheus", method, path, Role.ADMIN)
        assert caught.value.message == (
            f"non allow-listed {method}s not allowed on proxied prometheus datasource"
        )

    def test_a_route_requiring_a_higher_role_is_denied(self) -> None:
        with pytest.raises(Forbidden, match="plugin proxy route access denied"):
            check_route("prometheus", "GET", "api/v1/status/flags", Role.EDITOR)
        check_route("prometheus", "GET", "api/v1/status/flags", Role.ADMIN)
        with pytest.raises(Forbidden, match="plugin proxy route access denied"):
            check_route("prometheus", "POST", "rules", Role.VIEWER)
        check_route("prometheus", "DELETE", "rules/ns", Role.EDITOR)

    def test_loki_follows_its_plugin_routes(self) -> None:
        check_route("loki", "POST", "api/v1/query_range", Role.VIEWER)
        check_route("loki", "GET", "loki/api/v1/query_range", Role.VIEWER)
        with pytest.raises(Forbidden, match="non allow-listed POSTs not allowed on proxied loki"):
            check_route("loki", "POST", "loki/api/v1/push", Role.ADMIN)
        with pytest.raises(Forbidden, match="access denied"):
            check_route("loki", "DELETE", "loki/api/v1/rules/ns", Role.VIEWER)

    @pytest.mark.parametrize(
        ("method", "path", "message"),
        [
            ("DELETE", "logs", "deletes not allowed on proxied Elasticsearch datasource"),
            ("PUT", "logs/_doc/1", "puts not allowed on proxied Elasticsearch datasource"),
            (
                "POST",
                "logs/_delete_by_query",
                "posts not allowed on proxied Elasticsearch datasource except on /_msearch",
            ),
        ],
    )
    def test_elasticsearch_only_posts_to_msearch(
        self, method: str, path: str, message: str
    ) -> None:
        with pytest.raises(Forbidden) as caught:
            check_route("elasticsearch", method, path, Role.ADMIN)
        assert caught.value.message == message
        check_route("elasticsearch", "POST", "_msearch", Role.VIEWER)
        check_route("elasticsearch", "GET", "logs/_mapping", Role.VIEWER)

    def test_other_types_allow_every_method(self) -> None:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            check_route("influxdb", method, "write", Role.VIEWER)


@pytest.mark.parametrize("raw", ["..;/admin", "a/..;x/b", "a/%2e%2e;jsessionid=1/b", ".;/x"])
def test_dot_segments_with_path_parameters_are_refused(raw: str) -> None:
    with pytest.raises(UnsafePath):
        ProxyPath.parse(raw)
