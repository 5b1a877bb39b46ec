"""A Loki-like upstream for many sources at once, counting the probes of each.

Source N is at `{url}/sN`; the Loki probe asks `GET /sN/ready`. Each source answers 200 or,
once `fail(N)`, 503. Served from a thread (the test drives `gateway serve` processes
synchronously, and their probes must be answered meanwhile).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CountingUpstream:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probes: dict[str, list[float]] = defaultdict(list)  # source path -> monotonic times
        self._failing: set[str] = set()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source, _, rest = self.path.lstrip("/").partition("/")
                status = 404
                if rest == "ready":
                    status = upstream._probed(source)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _probed(self, source: str) -> int:
        with self._lock:
            self._probes[source].append(time.monotonic())
            return 503 if source in self._failing else 200

    def fail(self, source: str) -> None:
        with self._lock:
            self._failing.add(source)

    def probes(self, source: str, since: float = 0.0) -> list[float]:
        """Monotonic times of the probes of `source` at or after `since`."""
        with self._lock:
            return [at for at in self._probes[source] if at >= since]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
