"""Which upstream addresses a data source may reach (SSRF policy).

Two settings: `proxy.allowed_hosts` (exact `host:port` entries or CIDR networks; empty allows
everything) and `proxy.denied_networks` (link-local and cloud metadata by default). An address
passes when it is in no denied network and, if allow rules exist, its `host:port` is listed or
the address lies in an allowed network.

The check runs twice, for the source's `url` and for each of its `jsonData.replicaUrls`: when a
source is saved (so a bad URL is refused with 400 up front: IP literals and `host:port` rules,
without DNS) and at connect time against the addresses the name resolves to then (a DNS answer
that changed since, "rebinding", gives 403 and no connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway.errors import TargetNotAllowed
from gateway.proxy.upstream import IPAddress, addresses_of
from gateway.registry.models import REPLICA_URLS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEFAULT_PORTS = {"http": 80, "https": 443}
RESOLVE_TIMEOUT = 5.0


class TargetRefused(Exception):
    """The upstream is not allowed; `str()` says why without naming any credential."""


@dataclass(frozen=True, slots=True)
class SsrfPolicy:
    allowed_host_ports: frozenset[str]
    allowed_networks: tuple[IPNetwork, ...]
    denied_networks: tuple[IPNetwork, ...]

    @classmethod
    def from_rules(cls, allowed: Iterable[str], denied: Iterable[str]) -> SsrfPolicy:
        host_ports, networks = set(), []
        for rule in allowed:
            if "/" in rule:
                networks.append(ipaddress.ip_network(rule, strict=False))
            else:
                host_ports.add(rule.lower())
        return cls(
            allowed_host_ports=frozenset(host_ports),
            allowed_networks=tuple(networks),
            denied_networks=tuple(ipaddress.ip_network(rule, strict=False) for rule in denied),
        )

    @property
    def restricts_hosts(self) -> bool:
        return bool(self.allowed_host_ports or self.allowed_networks)

    def permitted(self, host: str, port: int, addresses: Sequence[IPAddress]) -> list[IPAddress]:
        """The addresses of `host:port` that may be connected to; raises TargetRefused if none."""
        listed = _host_port(host, port) in self.allowed_host_ports
        passing, reasons = [], []
        for address in addresses:
            denied = next(
                (net for net in self.denied_networks for form in _forms(address) if form in net),
                None,
            )
            if denied is not None:
                reasons.append(f"{address} is in the denied network {denied}")
            elif self.restricts_hosts and not listed and not self._in_allowed(address):
                reasons.append(f"{host}:{port} ({address}) is not in proxy.allowed_hosts")
            else:
                passing.append(address)
        if not passing:
            raise TargetRefused(reasons[0] if reasons else f"{host} has no address")
        return passing

    def _in_allowed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)

    def literal_refusal(self, url: str) -> str | None:
        """Why `url`'s host may not be contacted, when it is an IP literal; else None.

        aiohttp's session never asks a resolver about a literal, so callers of the shared
        session check literals here — a source can hold one that no save-time check saw
        (provisioned, or saved before `denied_networks` changed).
        """
        parts = urlsplit(url)
        host = parts.hostname
        literal = _literal(host) if host else None
        if host is None or literal is None:
            return None
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
            self.permitted(host, port, [literal])
        except (TargetRefused, ValueError) as exc:
            return str(exc)
        return None

    async def check_source_url(self, url: str | None) -> None:
        """`check_url` for a source being saved through an API: a refusal is a 400 there."""
        if not url:
            return
        try:
            await self.check_url(url)
        except TargetRefused as exc:
            raise TargetNotAllowed(str(exc)) from None

    async def check_source_targets(self, url: str | None, json_data: Mapping[str, Any]) -> None:
        """`check_source_url` for the source's `url` and each of its `jsonData.replicaUrls`
        (already validated as URLs); a refusal names the entry."""
        await self.check_source_url(url)
        replicas = json_data.get(REPLICA_URLS)
        if not isinstance(replicas, list):
            return
        for index, replica in enumerate(replicas):
            if not isinstance(replica, str) or not replica:
                continue
            try:
                await self.check_url(replica)
            except TargetRefused as exc:
                raise TargetNotAllowed(str(exc), f"jsonData.{REPLICA_URLS}[{index}]") from None

    async def check_url(self, url: str) -> None:
        """Save-time check of a source URL; raises TargetRefused.

        An IP literal gets the whole check. A name is matched against the `host:port` rules
        without DNS — saving must not hang on a resolver, and what a name resolves to now says
        little about later — and is resolved only when a CIDR allow rule is the one way it
        could be allowed. Where it connects is checked at connect time either way.
        """
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            return
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:
            return  # an invalid port is the URL validator's to report
        literal = _literal(host)
        if literal is not None:
            self.permitted(host, port, [literal])
            return
        if not self.restricts_hosts or _host_port(host, port) in self.allowed_host_ports:
            return
        if not self.allowed_networks:
            raise TargetRefused(f"{host}:{port} is not in proxy.allowed_hosts")
        try:
            addresses = await resolve(host, port)
        except (OSError, TimeoutError):
            raise TargetRefused(
                f"{host} does not resolve, so it cannot be matched to proxy.allowed_hosts"
            ) from None
        self.permitted(host, port, addresses)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _forms(address: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address embedded in it: `::ffff:169.254.169.254`, 6to4 and
    NAT64 reach the same IPv4 host, so a deny rule on the IPv4 form must catch them too."""
    forms: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in (address.ipv4_mapped, address.sixtofour):
            if embedded is not None:
                forms.append(embedded)
        if address in _NAT64:
            forms.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return forms


class PolicyResolver(AbstractResolver):
    """aiohttp resolver for the shared ClientSession: resolves, then keeps only the addresses
    the policy permits, so probes and bucket listings cannot be rebound to a denied address.

    (aiohttp skips resolvers for IP literals; those are checked when the source is saved.)
    """

    def __init__(self, policy: SsrfPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        addresses = [ipaddress.ip_address(result["host"]) for result in results]
        try:
            permitted = set(self._policy.permitted(host, port, addresses))
        except TargetRefused as exc:
            raise OSError(f"refused by the SSRF policy: {exc}") from exc
        return [r for r in results if ipaddress.ip_address(r["host"]) in permitted]

    async def close(self) -> None:
        await self._inner.close()


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (literals resolve to themselves), in resolver order."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
    )
    return addresses_of(infos)


def _literal(host: str) -> IPAddress | None:
    """The address `host` spells, in any form the C library would connect to: inet_aton also
    reads `2852039166`, `0xa9.0xfe.0xa9.0xfe` and `169.254.43518` as 169.254.169.254."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host and all(ch in "0123456789abcdefxABCDEFX." for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _host_port(host: str, port: int) -> str:
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
