"""The SSRF policy on provisioned sources: the rule the APIs apply when a source is saved.

Both APIs refuse a source whose `url` or `jsonData.replicaUrls` entry the policy refuses
(`proxy.allowed_hosts`, `proxy.denied_networks`: gateway/proxy/ssrf.py); a file is held to the
same rule, at start-up, on SIGHUP and in `gateway provision --check`, so a file cannot place a
source the APIs would have refused (the metadata address, say). Where a name actually connects
is checked again at connect time, as for every source. Exactly the APIs' rule: a SQL type's
database address is checked too when it has the `scheme://host` form the policy can read.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.provisioning.model import Problem, ProvisioningFile
from gateway.proxy.ssrf import SsrfPolicy, TargetRefused
from gateway.registry.models import REPLICA_URLS


async def refused_targets(files: Iterable[ProvisioningFile], policy: SsrfPolicy) -> list[Problem]:
    """One problem per URL of the files' sources that `policy` refuses, on the source's line."""
    problems = []
    for source in (source for file in files for source in file.sources):
        spec = source.spec
        replicas = spec.json_data.get(REPLICA_URLS)
        urls = [("url", spec.url)]
        if isinstance(replicas, list):
            urls += [
                (f"jsonData.{REPLICA_URLS}[{index}]", replica)
                for index, replica in enumerate(replicas)
                if isinstance(replica, str)
            ]
        for field, url in urls:
            if not url:
                continue
            try:
                await policy.check_url(url)
            except TargetRefused as exc:
                problems.append(source.place.problem(f"{field}: not allowed: {exc}"))
    return problems
