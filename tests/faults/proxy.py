"""A TCP proxy the fault scenarios control: cut the network, then heal it and deliver late.

While cut, bytes are held, not dropped, in each direction, as a partition does to TCP segments
that are retransmitted once it heals: a client that gives up on a request (socket timeout) and
retries on a new connection still has its first request delivered when the proxy heals. That is
the "late request" every state step must survive.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

__all__ = ["TcpProxy"]

_CHUNK = 1 << 16


@dataclass
class _Direction:
    """One direction of all connections: open, or holding what arrives until healed."""

    open: asyncio.Event = field(default_factory=asyncio.Event)
    held_bytes: int = 0

    def __post_init__(self) -> None:
        self.open.set()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``cut()`` holds traffic, ``heal()`` delivers it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = _Direction()  # client -> server
        self.down = _Direction()  # server -> client
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self, *, up: bool = True, down: bool = True) -> None:
        """Hold traffic (requests with ``up``, replies with ``down``) from now until ``heal()``."""
        if up:
            self.up.open.clear()
        if down:
            self.down.open.clear()

    def heal(self) -> None:
        """Deliver everything held, in order, even to a server whose client has gone."""
        self.up.open.set()
        self.down.open.set()

    def held_bytes(self) -> int:
        return self.up.held_bytes + self.down.held_bytes

    async def drop_connections(self) -> None:
        """Close every proxied connection at once (a reset, not a partition)."""
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(0)

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, server_writer))
        up = asyncio.create_task(self._pump(client_reader, server_writer, self.up))
        down = asyncio.create_task(self._pump(server_reader, client_writer, self.down))
        self._tasks.update((up, down))
        up.add_done_callback(self._tasks.discard)
        down.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: _Direction
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not way.open.is_set():
                    way.held_bytes += len(data)
                    await way.open.wait()
                    way.held_bytes -= len(data)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # Half-close: a late request still gets its reply read (and dropped) by the proxy.
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()
