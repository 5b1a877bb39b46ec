"""The open-files limit a serving gateway needs.

Every proxied request holds two sockets (the client's and the upstream's), and systemd and most
shells start services with a soft limit of 1024 open files: a few hundred requests in flight
would then fail with EMFILE. Go programs (Grafana, Caddy, Prometheus) raise their soft limit to
the hard limit at start; `gateway serve` does the same, once, before anything opens.
"""

from __future__ import annotations

import resource
from typing import NamedTuple

# What "no hard limit" is taken to mean: Linux refuses a soft limit above fs.nr_open (1,048,576
# by default), so asking for infinity would only fail.
_CEILING = 1 << 20
# macOS reports an unlimited hard limit but refuses more than kern.maxfilesperproc; OPEN_MAX
# (10,240) is what its setrlimit(2) page says to ask for then, and what Go falls back to.
_OPEN_MAX = 10240


class OpenFiles(NamedTuple):
    before: int
    after: int  # equal to `before` when the system refused every higher limit


def raise_open_files_limit() -> OpenFiles | None:
    """Raise the soft RLIMIT_NOFILE towards the hard one; None when it is there already (or
    cannot be read)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    for wanted in (target, min(target, _OPEN_MAX)):
        if wanted <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            continue
        return OpenFiles(soft, wanted)
    return OpenFiles(soft, soft)
