"""The org a request acts in: its token's, which `X-Grafana-Org-Id` may only repeat.

Shared by Grafana's API (gateway/api/grafana.py) and the data source proxy (gateway/proxy/).
"""

from __future__ import annotations

from gateway.errors import Forbidden, PermissionDenied
from gateway.registry.models import Principal
from gateway.registry.rules import parse_int64

ORG_HEADER = "X-Grafana-Org-Id"
ORG_MISMATCH = "API key does not belong to the requested organization"


def acting_org_id(principal: Principal, org_header: str | None, *, needs: str | None = None) -> int:
    """A token belongs to one org, so `X-Grafana-Org-Id` may only name that org. `needs` names
    the action a write requires.

    As Grafana's authn service reads the header (`orgIDFromHeader`), a value that is not a
    64-bit integer, and 0, name no org: the token's own is used."""
    if not org_header and needs is None:  # the usual case: no header, a read
        return principal.org.id
    requested = parse_int64((org_header or "").strip()) or 0
    if requested and requested != principal.org.id:
        raise Forbidden(ORG_MISMATCH)
    if needs is not None and not principal.role.can_write:
        raise PermissionDenied(needs)
    return principal.org.id
