"""Series names as Grafana's Go backends print them."""

from __future__ import annotations

import re
from collections.abc import Mapping

# Prometheus' and Loki's legend template: {{ label }}.
LEGEND_TEMPLATE = re.compile(r"\{\{\s*(.+?)\s*\}\}")


def fill_legend(template: str, labels: Mapping[str, str]) -> str:
    """Each {{ name }} becomes the label's value, or nothing when the series lacks it."""
    return LEGEND_TEMPLATE.sub(lambda match: labels.get(match.group(1), ""), template)


def go_quote(text: str) -> str:
    """Go's %q for label text: quote, backslash and control characters escaped."""
    escaped = []
    for char in text:
        if char in ('"', "\\"):
            escaped.append("\\" + char)
        elif char == "\n":
            escaped.append("\\n")
        elif char == "\t":
            escaped.append("\\t")
        elif char == "\r":
            escaped.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\x{ord(char):02x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def quoted_labels(labels: Mapping[str, str]) -> list[str]:
    """`key="value"` for each label, sorted as Grafana sorts them."""
    return sorted(f"{key}={go_quote(value)}" for key, value in labels.items())
