"""SSRF policy: denied networks, allowed host:port and CIDR rules, save-time URL checks."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.config import Settings
from gateway.proxy.ssrf import SsrfPolicy, TargetRefused, resolve

DEFAULT = SsrfPolicy.from_rules((), Settings().proxy_denied_networks)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


class TestDefaults:
    @pytest.mark.parametrize(
        "address",
        ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "100.100.100.200"],
    )
    def test_link_local_and_metadata_addresses_are_refused(self, address: str) -> None:
        with pytest.raises(TargetRefused, match="denied network"):
            DEFAULT.permitted("meta", 80, [ip(address)])

    @pytest.mark.parametrize(
        "address",
        [
            "::ffff:169.254.169.254",  # IPv4-mapped
            "::ffff:a9fe:a9fe",  # the same, in hex
            "2002:a9fe:a9fe::1",  # 6to4
            "64:ff9b::a9fe:a9fe",  # NAT64
        ],
    )
    def test_ipv4_embedded_in_ipv6_is_refused_too(self, address: str) -> None:
        with pytest.raises(TargetRefused, match="denied network"):
            DEFAULT.permitted("meta", 80, [ip(address)])

    async def test_a_mapped_literal_url_is_refused_on_save(self) -> None:
        with pytest.raises(TargetRefused):
            await DEFAULT.check_url("http://[::ffff:169.254.169.254]/latest/")

    @pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.1.1", "::1"])
    def test_loopback_and_private_addresses_are_allowed_by_default(self, address: str) -> None:
        assert DEFAULT.permitted("h", 80, [ip(address)]) == [ip(address)]

    def test_only_the_passing_addresses_of_a_name_are_kept(self) -> None:
        kept = DEFAULT.permitted("h", 80, [ip("169.254.169.254"), ip("10.0.0.5")])
        assert kept == [ip("10.0.0.5")]


class TestAllowedHosts:
    policy = SsrfPolicy.from_rules(["prom.internal:9090", "10.20.0.0/16"], ["169.254.0.0/16"])

    def test_an_exact_host_port_entry_allows_that_name_on_that_port(self) -> None:
        self.policy.permitted("PROM.internal", 9090, [ip("192.168.5.5")])
        with pytest.raises(TargetRefused, match=r"not in proxy\.allowed_hosts"):
            self.policy.permitted("prom.internal", 80, [ip("192.168.5.5")])

    def test_a_cidr_entry_allows_addresses_inside_it(self) -> None:
        self.policy.permitted("anything", 1234, [ip("10.20.3.4")])
        with pytest.raises(TargetRefused):
            self.policy.permitted("anything", 1234, [ip("10.21.3.4")])

    def test_denied_networks_win_over_allow_rules(self) -> None:
        policy = SsrfPolicy.from_rules(["meta:80", "169.254.0.0/16"], ["169.254.0.0/16"])
        with pytest.raises(TargetRefused, match="denied network"):
            policy.permitted("meta", 80, [ip("169.254.169.254")])


class TestSaveTimeCheck:
    async def test_a_literal_metadata_url_is_refused(self) -> None:
        with pytest.raises(TargetRefused, match=r"169\.254\.169\.254"):
            await DEFAULT.check_url("http://169.254.169.254/latest/meta-data/")

    async def test_a_bracketed_ipv6_link_local_url_is_refused(self) -> None:
        with pytest.raises(TargetRefused):
            await DEFAULT.check_url("http://[fe80::1]:9090/")

    async def test_names_are_not_resolved_without_cidr_allow_rules(self) -> None:
        """Saving never waits on DNS for a name; the connect-time check guards where it goes."""
        policy = SsrfPolicy.from_rules((), ["127.0.0.0/8", "::1/128"])
        await policy.check_url("http://localhost:9090/")
        await DEFAULT.check_url("http://no-such-host.invalid:9090/")

    async def test_a_name_must_match_a_host_port_rule_when_only_those_exist(self) -> None:
        policy = SsrfPolicy.from_rules(["prom.internal:9090"], ())
        await policy.check_url("http://prom.internal:9090/api")
        with pytest.raises(TargetRefused, match=r"other\.internal:9090 is not in"):
            await policy.check_url("http://other.internal:9090/")

    async def test_a_name_is_resolved_to_match_cidr_allow_rules(self) -> None:
        policy = SsrfPolicy.from_rules(["127.0.0.0/8"], ())
        await policy.check_url("http://localhost:9090/")
        refusing = SsrfPolicy.from_rules(["10.0.0.0/8"], ())
        with pytest.raises(TargetRefused, match="does not resolve"):
            await refusing.check_url("http://no-such-host.invalid:9090/")

    async def test_default_ports_follow_the_scheme(self) -> None:
        policy = SsrfPolicy.from_rules(["127.0.0.1:443"], ())
        await policy.check_url("https://127.0.0.1/")
        with pytest.raises(TargetRefused):
            await policy.check_url("http://127.0.0.1/")

    async def test_resolve_returns_literals_and_names(self) -> None:
        assert await resolve("127.0.0.1", 80) == [ip("127.0.0.1")]
        assert ip("127.0.0.1") in await resolve("localhost", 80)


@pytest.mark.parametrize(
    "url", ["http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/", "http://169.254.43518/"]
)
async def test_non_canonical_ipv4_literals_are_refused_on_save(url: str) -> None:
    with pytest.raises(TargetRefused, match="denied network"):
        await DEFAULT.check_url(url)
