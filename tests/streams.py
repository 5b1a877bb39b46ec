"""Random HTTP/1.1 message parts, and random cuts of a byte stream: for the tests that feed the
front server requests, and the upstream pool responses, in pieces (seeded: a failure names its
seed)."""

from __future__ import annotations

import random

_VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " \t"


def mixed_case(name: str, rng: random.Random) -> str:
    return "".join(rng.choice((c.lower(), c.upper())) for c in name)


def field_value(rng: random.Random) -> str:
    """Visible ASCII with spaces and tabs inside; none around it (llhttp strips them there, as
    RFC 9112 says)."""
    return "".join(rng.choices(_VALUE_CHARS, k=rng.randint(0, 60))).strip(" \t")


def framed_body(rng: random.Random, *, trailer: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(a random body, its framing field line, the body as framed): by its Content-Length, or
    chunked in random sizes, some chunks with an extension, `trailer` after the last."""
    body = rng.randbytes(rng.choice([0, 1, rng.randint(2, 6000)]))
    if rng.random() < 0.5:
        return body, b"Content-Length: %d" % len(body), body
    framed = b""
    rest = body
    while rest:
        size = rng.randint(1, len(rest))
        extension = b";ext=1" if rng.random() < 0.2 else b""
        framed += b"%x%s\r\n%s\r\n" % (size, extension, rest[:size])
        rest = rest[size:]
    return body, b"Transfer-Encoding: chunked", framed + b"0\r\n" + trailer + b"\r\n"


def cut(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` in pieces: byte by byte, or cut at a few random places."""
    if len(data) <= 400 and rng.random() < 0.3:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
