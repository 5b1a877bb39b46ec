"""`gateway serve --workers N`: N worker processes share one port through SO_REUSEPORT.

The supervisor serves nothing itself. It starts the workers, forwards SIGTERM/SIGINT (drain)
and SIGHUP (re-apply provisioning), restarts a worker that dies unexpectedly, and exits 0 once
every worker has drained. A worker that fails to start (exit code 2: bad settings, port taken)
stops them all: restarting it would only fail again.

Each worker is a whole gateway — its own registry connection, caches and health monitor (so
probe traffic grows with N; only worker 0 counts probes and logs state changes, so those are
not multiplied). Metric values are shared through a temporary directory (prometheus-client's
multiprocess mode), so a scrape answered by any worker counts the requests of all of them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Sequence

import structlog
from prometheus_client.multiprocess import mark_process_dead

from gateway.config import Settings
from gateway.errors import StartupError
from gateway.metrics import MULTIPROC_ENV

log = structlog.get_logger("gateway.supervisor")

WORKER_INDEX_ENV = "GATEWAY_WORKER_INDEX"
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
HEALTHY_RUN = 60.0  # a worker that ran this long before failing starts its backoff afresh
STARTUP_FAILED = 2


async def supervise(settings: Settings, worker_args: Sequence[str]) -> int:
    """Run `settings.workers` workers (`gateway serve <worker_args>`) until told to stop."""
    if settings.port == 0:
        raise StartupError("server.port: several workers cannot share port 0; choose a port")
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as metrics_dir:
        pool = _Workers(settings.workers, worker_args, metrics_dir)
        return await pool.run()


class _Workers:
    def __init__(self, count: int, worker_args: Sequence[str], metrics_dir: str) -> None:
        self._count = count
        self._argv = [sys.executable, "-m", "gateway", "serve", *worker_args]
        self._metrics_dir = metrics_dir
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        for index in range(self._count):
            await self._start(index)
        log.info("workers_started", workers=self._count)
        codes = await asyncio.gather(*(self._watch(index) for index in range(self._count)))
        if STARTUP_FAILED in codes:
            return STARTUP_FAILED
        return 0 if all(code == 0 for code in codes) else 1

    async def _start(self, index: int) -> None:
        env = {
            **os.environ,
            MULTIPROC_ENV: self._metrics_dir,
            WORKER_INDEX_ENV: str(index),
            "GATEWAY_WORKERS": "1",  # a worker serves; it never supervises again
        }
        self._processes[index] = await asyncio.create_subprocess_exec(*self._argv, env=env)

    async def _watch(self, index: int) -> int:
        """Wait for worker `index`; restart it while the gateway is not stopping.

        Only a worker's first start may stop the gateway: later, the others keep serving while
        a failing worker is retried with a growing delay (a provisioning file being edited, say,
        stops a restart, not the service).
        """
        first_start, failures = True, 0
        while True:
            process = self._processes[index]
            started = asyncio.get_running_loop().time()
            code = await process.wait()
            mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                return code
            if code == STARTUP_FAILED and first_start:
                log.error("worker_failed_to_start", worker=index)
                self._stop(signal.SIGTERM)
                return code
            ran = asyncio.get_running_loop().time() - started
            failures = 0 if ran > HEALTHY_RUN else failures + 1
            delay = min(RESTART_DELAY * 2**failures, MAX_RESTART_DELAY)
            log.error("worker_exited", worker=index, code=code, restart_in=delay)
            first_start = False
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                await self._start(index)
            else:
                return code

    def _stop(self, signum: int) -> None:
        if not self._stopping.is_set():
            log.info("workers_stopping", signal=signal.Signals(signum).name)
        self._stopping.set()
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signum)
