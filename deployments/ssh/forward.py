"""`ssh -L` through the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import asyncssh

from deployments.runtimes.base import Tunnel
from deployments.ssh.authorise import Target

if TYPE_CHECKING:
    from deployments.ssh.server import Connection, Gateway

FORWARD_QUEUE = 64  # chunks from the client waiting for a forwarded port before the channel pauses


class Forward(asyncssh.SSHTCPSession):
    """`ssh -L`: bytes between the SSH channel and the runtime's tunnel to the deployment's port
    (blocking reads and writes in the gateway's pool; writes in order through a queue)."""

    def __init__(self, gateway: Gateway, conn: Connection, started: tuple[Target, int], tunnel: Tunnel) -> None:
        self.gateway, self.conn, self.started, self.tunnel = gateway, conn, started, tunnel
        self.chan: asyncssh.SSHTCPChannel | None = None
        self.outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        conn.forwards += 1

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.chan = chan
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.copy_back()), loop.create_task(self.copy_out())]

    async def copy_back(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.run_in_executor(self.gateway.pool, self.tunnel.read):
            self.conn.touch()
            self.chan.write(data)
        with contextlib.suppress(asyncssh.Error, OSError):  # the client may have closed first
            self.chan.write_eof()

    async def copy_out(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (data := await self.outgoing.get()) is not None:
                await loop.run_in_executor(self.gateway.pool, self.tunnel.write, data)
                if self.outgoing.qsize() < FORWARD_QUEUE // 2:
                    self.chan.resume_reading()
            await loop.run_in_executor(self.gateway.pool, self.tunnel.close_write)
        except OSError:  # the port went away: so does the channel
            self.chan.close()

    def data_received(self, data: bytes, datatype) -> None:
        self.conn.touch()
        self.outgoing.put_nowait(data)
        if self.outgoing.qsize() >= FORWARD_QUEUE:  # the port is slower than the client
            self.chan.pause_reading()

    def eof_received(self) -> bool:
        self.outgoing.put_nowait(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.forwards -= 1
        self.conn.touch()
        for task in self.tasks:
            task.cancel()
        self.gateway.later(asyncio.get_running_loop().run_in_executor(self.gateway.pool, self.tunnel.close))
        self.gateway.later(self.gateway.end(*self.started, None))
