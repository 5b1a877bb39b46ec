"""The org a request acts in: its token's, which `X-Grafana-Org-Id` may only repeat.

Shared by Grafana's API (gateway/api/grafana.py) and the data source proxy (gateway/proxy/).
"""

from __future__ import annotations

from gateway.errors import Forbidden, PermissionDenied
from gateway.registry.models import Principal

ORG_HEADER = "X-Grafana-Org-Id"
ORG_MISMATCH = "API key does not belong to the requested organization"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def acting_org_id(principal: Principal, org_header: str | None, *, needs: str | None = None) -> int:
    """A token belongs to one org, so `X-Grafana-Org-Id` may only name that org. `needs` names
    the action a write requires."""
    requested = (org_header or "").strip()
    if requested and parse_int64(requested) != principal.org.id:
        raise Forbidden(ORG_MISMATCH)
    if needs is not None and not principal.role.can_write:
        raise PermissionDenied(needs)
    return principal.org.id


def parse_int64(text: str) -> int | None:
    """`text` as Go's `strconv.ParseInt(text, 10, 64)` reads it, or None."""
    sign, digits = (text[0], text[1:]) if text[:1] in ("+", "-") else ("", text)
    significant = digits.lstrip("0")
    # isdecimal() alone would take non-ASCII digits; the length bound keeps int() (which
    # refuses over 4,300 digits with a ValueError) away from attacker-sized input.
    if not (digits.isascii() and digits.isdecimal()) or len(significant) > 19:
        return None
    number = int(sign + (significant or "0"))
    return number if _INT64_MIN <= number <= _INT64_MAX else None
