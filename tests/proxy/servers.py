"""Upstreams for the pool's tests: a scripted raw HTTP/1.1 server and a throwaway CA.

`RawServer` accepts on a free 127.0.0.1 port and runs a handler per connection, so a test can make
an upstream misbehave in exactly one way (close after the head, stall mid-body, send garbage, ...).
It counts the connections it accepted and those that ended, which is how tests see reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.proxy.upstream import Origin


@dataclass
class ReceivedRequest:
    method: str
    target: str
    raw_head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header_values(self, name: bytes) -> list[bytes]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: bytes) -> bytes | None:
        values = self.header_values(name)
        return values[0] if values else None


class Peer:
    """One accepted connection, as the server sees it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.index = index  # 0 for the server's first connection
        self.requests_served = 0

    async def read_head(self) -> ReceivedRequest | None:
        """The next request head, or None when the client closed the connection."""
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        request_line, *lines = raw[:-4].split(b"\r\n")
        method, target, _version = request_line.split(b" ")
        headers = []
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip()))
        return ReceivedRequest(method.decode(), target.decode(), raw, headers)

    async def read_body(self, request: ReceivedRequest) -> bytes:
        length = request.header(b"content-length")
        if length is not None:
            request.body = await self.reader.readexactly(int(length))
        elif request.header(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")  # no trailers from our client
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            request.body = b"".join(parts)
        return request.body

    async def read_request(self) -> ReceivedRequest | None:
        request = await self.read_head()
        if request is not None:
            await self.read_body(request)
        return request

    async def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            # asyncio drops a write to a closed transport; uvloop raises RuntimeError. Either
            # way the client has gone, which is what many tests are about.
            raise ConnectionResetError("the client closed the connection")
        self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        reason: str = "OK",
    ) -> None:
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers]
        await self.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.requests_served += 1

    async def serve(self, body: bytes = b"ok", max_requests: int | None = None) -> None:
        """Answer requests on this connection with `body`, keep-alive, until it ends."""
        while max_requests is None or self.requests_served < max_requests:
            request = await self.read_request()
            if request is None:
                return
            await self.respond(body=body)

    def reset(self) -> None:
        """Abort the connection: the client sees a reset rather than an orderly close."""
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class RawServer:
    handler: Handler
    connections: int = 0
    ended: int = 0
    errors: list[BaseException] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _ssl: ssl.SSLContext | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> RawServer:
        self._ssl = ssl_context
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=ssl_context)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def origin(self) -> Origin:
        return Origin("https" if self._ssl else "http", "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, self.connections)
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client going away is what many tests are about
        except asyncio.CancelledError:
            # Cancelled by close(). Python 3.11's stream server logs a cancelled handler task as an
            # error, so end normally.
            pass
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self.ended += 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def wait_ended(self, count: int, within: float = 2.0) -> None:
        async with asyncio.timeout(within):
            while self.ended < count:
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
        assert not self.errors, self.errors


@dataclass(frozen=True)
class ThrowawayCA:
    """A CA, and a server certificate it signed for `localhost` and 127.0.0.1, as PEM files."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_ca(
    directory: Path, names: tuple[str, ...] = ("localhost",), *, with_loopback_ip: bool = True
) -> ThrowawayCA:
    """Generate a throwaway CA and a server certificate for `names` (and 127.0.0.1); EC: fast."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    if with_loopback_ip:
        alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ThrowawayCA(ca_file, cert_file, key_file)
