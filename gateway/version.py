"""Build identity reported by /health, /api/health and metrics."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


@functools.cache
def commit() -> str:
    """GATEWAY_BUILD_COMMIT (set by the Docker build), else the checkout's HEAD, else "unknown"."""
    if os.environ.get("GATEWAY_BUILD_COMMIT"):
        return os.environ["GATEWAY_BUILD_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            result = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                capture_output=True, text=True, timeout=2, check=False,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        if result.returncode == 0:
            return result.stdout.strip()
    return "unknown"
