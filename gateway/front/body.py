"""A request body as it arrives: buffered chunks for the handler, with flow control.

The protocol feeds each body chunk llhttp reports into the request's `RequestBody` and counts
what all buffered bodies of the connection hold, pausing reading beyond the limit; the handler
iterates the body, and every chunk it takes is reported back (`body_consumed`) so that reading
resumes once the buffers have drained. A request whose client sent `Expect: 100-continue` gets
its `100 Continue` when the handler first waits for body bytes, unless its response has started.
Once the handler is gone, the rest of the body is dropped as it arrives (`discard_rest`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, Protocol

from gateway.front.waiting import wake

# The rest of a request body is read and dropped after the response when at most this much of it
# is still to come; beyond, the connection closes instead (RFC 9112 §9.6 lets it do either).
DISCARD_MAX: Final = 64 * 1024


class BodyConnection(Protocol):
    """What a request body needs from its connection."""

    def body_consumed(self, size: int) -> None:
        """The handler took `size` buffered bytes: reading may resume."""

    def send_continue(self) -> None:
        """Tell the client to send the body it holds back (100 Continue)."""


class RequestBody:
    """The body of one request; the async iterator `Exchange.body()` returns.

    `received` counts every body byte llhttp reported, `complete` says the whole body has
    arrived; both are read by the exchange to decide the connection's fate after its response.
    """

    __slots__ = (
        "_chunks", "_conn", "_continue_allowed", "_error", "_loop", "_waiter",
        "awaiting_continue", "complete", "content_length", "discarding", "received",
    )  # fmt: skip

    def __init__(
        self,
        conn: BodyConnection,
        loop: asyncio.AbstractEventLoop,
        content_length: int | None,
        expect_continue: bool,
        *,
        complete: bool = False,
    ) -> None:
        self._conn = conn
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue_allowed = True  # false once the response has started
        self.content_length = content_length
        self.awaiting_continue = expect_continue  # the client waits for a 100 not sent yet
        self.complete = complete
        self.discarding = False  # the handler is gone: the rest is dropped
        self.received = 0

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self.complete:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if self.awaiting_continue and self._continue_allowed:
                # RFC 9110 §10.1.1: the client waits for this before it sends the body.
                self.awaiting_continue = False
                self._conn.send_continue()
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunk = chunks.popleft()
        self._conn.body_consumed(len(chunk))
        return chunk

    # The protocol's side.

    def receive(self, chunk: bytes) -> bool:
        """Take a chunk llhttp reported; False when it was dropped rather than buffered."""
        self.received += len(chunk)
        if self.discarding:
            return False
        self._chunks.append(chunk)
        wake(self._waiter)
        return True

    def end(self) -> None:
        self.complete = True
        wake(self._waiter)

    def fail(self, error: Exception) -> None:
        """The body cannot end: the reader gets `error` (ConnectionResetError when the
        connection is gone, the refusal of a malformed body (a GatewayError) when llhttp
        refused its framing)."""
        if not self.complete and self._error is None:
            self._error = error
            wake(self._waiter)

    def discard_rest(self) -> int:
        """The handler is gone: drop what is buffered (returning its size) and what comes."""
        if not self.complete:
            self.discarding = True
        if not self._chunks:
            return 0
        size = sum(map(len, self._chunks))
        self._chunks.clear()
        return size

    @property
    def error(self) -> Exception | None:
        """Why the body cannot end, once the protocol said so (`fail`)."""
        return self._error

    # The exchange's side.

    def response_started(self) -> None:
        """A 100 Continue can no longer be sent (the client keeps holding the body back)."""
        self._continue_allowed = False

    def rest_can_be_dropped(self) -> bool:
        """The unread rest can be read and dropped after the response: its size is known and
        small, and the client is not holding it back for a 100 Continue that will not come."""
        length = self.content_length
        return (
            length is not None
            and not self.awaiting_continue
            and length - self.received <= DISCARD_MAX
        )
