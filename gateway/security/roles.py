"""The least role an action needs, checked against a token's role.

Refusals are `PermissionDenied` (403): Grafana's message names the permission, InfluxDB's names
the permission and the role it needs, so a client sees what token to use instead.
"""

from __future__ import annotations

from gateway.errors import PermissionDenied
from gateway.registry.models import Principal, Role

_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}


class RoleRequired(PermissionDenied):
    def __init__(self, action: str, needed: Role, held: Role) -> None:
        super().__init__(action)
        self.influx_message = (
            f"{action} needs the {needed.value} role; this token's role is {held.value}"
        )


def has_role(principal: Principal, needed: Role) -> bool:
    """Whether the token's role is `needed` or above."""
    return _RANK[principal.role] >= _RANK[needed]


def require_role(principal: Principal, needed: Role, action: str) -> None:
    """Raise RoleRequired unless the token's role is `needed` or above."""
    if not has_role(principal, needed):
        raise RoleRequired(action, needed, principal.role)
