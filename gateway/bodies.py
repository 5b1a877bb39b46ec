"""Reading a whole request body under a size limit, whichever server carries the request.

Both carriers of the proxied routes, the front server's `Exchange` and aiohttp's
`AiohttpExchange`, read bodies this way, and the resolver turns `BodyTooLarge` into a 413; so it
lives outside either server's package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator


class BodyTooLarge(ValueError):
    """The request body is longer than the limit the caller gave."""


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """All of `chunks` joined; BodyTooLarge as soon as they pass `limit` bytes."""
    parts = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)
