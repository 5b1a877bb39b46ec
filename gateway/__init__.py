"""Datasource Gateway: one registry, two APIs, a streaming proxy and health probes."""

__version__ = "0.1.0"
