"""An aiohttp site whose connections meet the front protocol first.

Requests the router claims (the proxied routes) are served by the front protocol itself; a
connection whose request is anything else is handed to the runner's aiohttp server for good
(see `protocol.py`), whose handlers answer what aiohttp's parser refuses in the gateway's JSON
(see `fallback.py`). The runner stays in charge of the application's lifecycle: `runner.cleanup()`
stops this site, which closes the listening socket and drains the front connections, before
aiohttp drains its own and runs the app's cleanup contexts (the upstream pool, the store).
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from gateway.front.connections import FrontConnections
from gateway.front.exchange import Router
from gateway.front.fallback import json_errors_handlers
from gateway.front.limits import ServerLimits
from gateway.front.protocol import FrontProtocol


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> socket.socket:
    """A socket listening on `host:port` now, before the application starts (provisioning,
    `gateway_ready`): a port that is taken fails the start first, with nothing done yet. Until
    the site serves it, connections wait in its backlog. OSError if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # the workers of one supervisor share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
        self._front_runner = runner
        self._listen_backlog = backlog
        self._router = router
        self._host = host
        self._port = port
        self._sock = sock
        self._reuse_port = reuse_port
        self._limits = limits or ServerLimits()
        self._drain_timeout = drain_timeout
        self._listener: asyncio.Server | None = None
        self.connections = FrontConnections()

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on: the kernel's pick once started, when 0 was asked for."""
        if self._listener is not None:
            for sock in self._listener.sockets:
                return int(sock.getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        aiohttp_server = self._front_runner.server
        assert aiohttp_server is not None, "runner.setup() first"
        router, connections, limits = self._router, self.connections, self._limits
        fallback = json_errors_handlers(aiohttp_server)

        def connection() -> FrontProtocol:
            return FrontProtocol(router, fallback, connections, limits)

        loop = asyncio.get_running_loop()
        if self._sock is not None:
            listener = await loop.create_server(
                connection, sock=self._sock, backlog=self._listen_backlog
            )
        else:
            listener = await loop.create_server(
                connection,
                self._host,
                self._port,
                backlog=self._listen_backlog,
                reuse_address=True,
                reuse_port=self._reuse_port or None,
            )
        self._listener = listener
        # The one private attribute of aiohttp's BaseSite we touch, and we must: BaseSite.stop()
        # closes the server it holds, and BaseRunner.addresses lists its sockets. aiohttp offers
        # no public way to give a site its server (its own sites assign it just so).
        self._server = listener

    async def stop(self) -> None:
        await super().stop()  # no new connections from here on
        await self.connections.shutdown(self._drain_timeout)
