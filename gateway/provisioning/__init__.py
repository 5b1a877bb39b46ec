"""Provisioning of data sources from Grafana-format YAML files (`apiVersion: 1`).

Hooks used by the rest of the gateway:
- `provisioning_ctx(app)`: cleanup context; applies the files at start-up (an invalid file raises
  StartupError) and re-applies them on SIGHUP.
- `check_files(path, environ)`: every problem as "file:line: message", touching no database.
- `check_folder(settings, environ)`: the same plus the SSRF policy's refusals (`--check`).

Modules: `files` reads and checks the folder (YAML composed into nodes, `nodes` types their
values, `expand` substitutes environment variables), `targets` applies the SSRF policy,
`apply` writes one all-or-nothing batch,
`service` runs it at start-up and on SIGHUP.
"""

from __future__ import annotations

from gateway.provisioning.files import check_files
from gateway.provisioning.service import check_folder, provisioning_ctx

__all__ = ["check_files", "check_folder", "provisioning_ctx"]
