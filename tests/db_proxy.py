"""A TCP proxy between a service and PostgreSQL that injects network faults on demand.

It forwards bytes untouched; the tests ask it to drop the answer to the next COMMIT (the
server committed, the client never hears so), to cut every open connection (what a client
sees of a server restart), or to refuse new connections (a server that is down). Clients
connect with `sslmode=disable` so that the proxy can see the statements go by.

Apart from the COMMIT it knows nothing of PostgreSQL: the client library's tests put it in front
of a gRPC server, and mute its answers to lose the answer of a call that did its work.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from psycopg import conninfo


@dataclass(eq=False)  # hashed by identity: a set holds the open links
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    drop_next_answer: bool = False
    marked: bool = False  # has sent the marker of the COMMIT to cut

    def cut(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()


@dataclass
class DatabaseProxy:
    target_host: str
    target_port: int
    port: int = 0
    refusing: bool = False
    answers_muted: bool = False  # the server's bytes are dropped; connections stay open
    commits_to_cut: int = 0
    cut_markers: tuple[bytes, ...] = (b"",)  # only a COMMIT on a connection that sent one
    links: set[_Link] = field(default_factory=set)
    _server: asyncio.Server | None = None

    def url(self, database_url: str) -> str:
        """`database_url` (pointing at the target) rerouted through the proxy."""
        return conninfo.make_conninfo(
            database_url, host="127.0.0.1", port=str(self.port), sslmode="disable"
        )

    def cut_after_next_commit(self, *markers: bytes) -> None:
        """The next COMMIT reaches the server, but its answer is dropped with the connection.
        With `markers` (an idempotency key, a wallet id's 16 bytes: parameters travel as they
        are), only a COMMIT on a connection that has sent one of them counts, not one of some
        other work (a NOTIFY, say)."""
        self.commits_to_cut += 1
        self.cut_markers = markers or (b"",)

    def cut_all(self) -> None:
        """Cuts every open connection, as a database restart does."""
        for link in list(self.links):
            link.cut()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, server_writer)
        self.links.add(link)
        try:
            await asyncio.gather(
                self._to_server(reader, link), self._to_client(server_reader, link)
            )
        finally:
            self.links.discard(link)
            link.cut()

    async def _to_server(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                if self.commits_to_cut and any(marker in chunk for marker in self.cut_markers):
                    link.marked = True
                if self.commits_to_cut and link.marked and b"COMMIT" in chunk:
                    self.commits_to_cut -= 1
                    link.drop_next_answer = True
                link.server.write(chunk)
                await link.server.drain()
        link.cut()

    async def _to_client(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                if link.drop_next_answer:
                    break  # the server has answered the COMMIT: the client never hears it
                if self.answers_muted:
                    continue
                link.client.write(chunk)
                await link.client.drain()
        link.cut()


@contextlib.asynccontextmanager
async def database_proxy(database_url: str) -> AsyncIterator[DatabaseProxy]:
    """A running proxy in front of the server of `database_url` (a TCP address)."""
    params = conninfo.conninfo_to_dict(database_url)
    proxy = DatabaseProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
