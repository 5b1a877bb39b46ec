"""An aiohttp site whose connections meet the front protocol first.

Requests the router claims (the proxied routes) are served by the front protocol itself; a
connection whose request is anything else is handed to the runner's aiohttp server for good
(see `protocol.py`). The runner stays in charge of the application's lifecycle: `runner.cleanup()`
stops this site, which closes the listening socket and drains the front connections, before
aiohttp drains its own and runs the app's cleanup contexts (the upstream pool, the store).
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from gateway.front.protocol import FrontConnections, FrontProtocol, Router, ServerLimits


class FrontSite(web.BaseSite):
    """Listen on `host:port` (or on a bound `sock`) with the front protocol.

    `drain_timeout`: how long `stop()` lets exchanges in progress on front connections finish.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        router: Router,
        *,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        limits: ServerLimits | None = None,
        drain_timeout: float = 30.0,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._router = router
        self._host = host
        self._port = port
        self._sock = sock
        self._reuse_port = reuse_port
        self._limits = limits or ServerLimits()
        self._drain_timeout = drain_timeout
        self.connections = FrontConnections()

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on: the kernel's pick once started, when 0 was asked for."""
        server = self._server
        sockets = getattr(server, "sockets", None) or ()
        for sock in sockets:
            return int(sock.getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        aiohttp_server = self._runner.server
        assert aiohttp_server is not None, "runner.setup() first"
        router, connections, limits = self._router, self.connections, self._limits

        def connection() -> FrontProtocol:
            return FrontProtocol(router, aiohttp_server, connections, limits)

        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                connection, sock=self._sock, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                connection,
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=True,
                reuse_port=self._reuse_port or None,
            )

    async def stop(self) -> None:
        await super().stop()  # no new connections from here on
        await self.connections.shutdown(self._drain_timeout)
