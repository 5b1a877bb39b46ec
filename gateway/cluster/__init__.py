"""Shared probing: the gateways of a cluster (one PostgreSQL registry) split the probing.

- `membership`: each gateway process's row in `cluster_member`, its heartbeats, who is live;
- `hashing`: which live member probes a source (rendezvous hashing over source and member);
- `stored`: health states in `source_health` / `target_health`, written by the owner, read by all;
- `service`: `SharedProbing`, which runs the above beside the health monitor.

With a SQLite registry there is no cluster: `open_shared_probing` yields None and the monitor
probes every source, as a single gateway always has.
"""

from __future__ import annotations

from gateway.cluster.service import SharedProbing, open_shared_probing, serving_members

__all__ = ["SharedProbing", "open_shared_probing", "serving_members"]
