"""The open-files limit a serving gateway needs.

Every proxied request holds two sockets (the client's and the upstream's), and systemd and most
shells start services with a soft limit of 1024 open files: a few hundred requests in flight
would then fail with EMFILE. Go programs (Grafana, Caddy, Prometheus) raise their soft limit to
the hard limit at start; `gateway serve` does the same, once, before anything opens.
"""

from __future__ import annotations

import resource

# What "no hard limit" is taken to mean: Linux refuses a soft limit above fs.nr_open (1,048,576
# by default), so asking for infinity would only fail.
_CEILING = 1 << 20


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to the hard one; (before, after) when it was raised, None
    when it was there already or the system refused (the gateway then runs with what it has)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return None
    return soft, target
