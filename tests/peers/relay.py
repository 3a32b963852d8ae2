"""A TCP relay that can be cut: a node's only way to its broker, for partition tests.

``CuttableRelay(target_port)`` listens on ``port`` and relays every connection to the target.
``cut()`` aborts every relayed connection (both ends see it go at once, as when a switch port
dies and the kernel resets) and refuses new ones; ``restore()`` listens again.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.conftest import free_port


class CuttableRelay:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttableRelay:
        await self.restore()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            cw.transport.abort()
            return
        self.connections += 1
        self._writers |= {cw, bw}
        pipes = [asyncio.create_task(self._pipe(cr, bw)), asyncio.create_task(self._pipe(br, cw))]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pipes:
                t.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._tasks.difference_update(pipes)
            for w in (cw, bw):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
