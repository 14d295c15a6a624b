"""Websocket clients for bench/live.py, in a process of their own (several of them spread the
clients' own work over the cores, as browsers on other machines would).

    python -m bench.wsclients URL COOKIE ORIGIN INDEX:DEPLOYMENT_ID ...

Connects every client (each waits for its first fragment), prints "ready", then reads commands on
stdin, one per line:
- `watch MARKER`: prints "watching"; once every client has received a message containing MARKER
  (or after 30 s) prints one JSON line {"marker": ..., "seen": {index: CLOCK_MONOTONIC seconds}};
- `close`: closes the clients and exits.
Times are CLOCK_MONOTONIC, comparable with the parent's.

Each client is an asyncio protocol that speaks just enough of RFC 6455 to stand in for a browser:
the opening handshake, reading the server's (unmasked) frames, answering pings. The clients share
the bench's two cores with the server; a full websocket library costs several times more per
message than this, which would be the clients' cost counted as the server's latency.
"""

import asyncio
import base64
import json
import os
import struct
import sys
import time
import urllib.parse

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (clients must mask theirs), for payloads under 126 bytes."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class Client(asyncio.Protocol):
    def __init__(self, index: int, request: bytes, seen: dict[str, dict[int, float]]) -> None:
        self.index, self.request, self.seen = index, request, seen
        self.buffer = b""
        self.upgraded = False
        self.first = asyncio.get_running_loop().create_future()  # the handshake answered and a first message read

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail(ConnectionError(head.split(b"\r\n")[0].decode()))
                return
            self.upgraded, self.buffer = True, rest
        self.frames()

    def frames(self) -> None:
        buffer, at = self.buffer, 0
        while len(buffer) - at >= 2:
            opcode, length = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                if len(buffer) - start < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif length == 127:
                if len(buffer) - start < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            if len(buffer) - start < length:
                break
            payload = buffer[start : start + length]
            at = start + length
            self.message(opcode, payload)
        self.buffer = buffer[at:]

    def message(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self.transport.write(masked_frame(PONG, payload))
        elif opcode == CLOSE:
            self.fail(ConnectionError("closed by the server"))
        elif opcode == TEXT:
            t = now()
            if not self.first.done():
                self.first.set_result(None)
            for marker, where in self.seen.items():
                if self.index not in where and marker.encode() in payload:
                    where[self.index] = t

    def fail(self, error: Exception) -> None:
        if not self.first.done():
            self.first.set_exception(error)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_exception(exc or ConnectionError("connection lost"))


async def main(url: str, cookie: str, origin: str, targets: list[tuple[int, int]]) -> None:
    seen: dict[str, dict[int, float]] = {}
    limit = asyncio.Semaphore(50)
    clients: list[Client] = []
    where = urllib.parse.urlsplit(url)
    loop = asyncio.get_running_loop()

    async def connect(index: int, pk: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws/deployments/{pk}/ HTTP/1.1\r\nHost: {where.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
        async with limit:
            _, client = await loop.create_connection(lambda: Client(index, request, seen), where.hostname, where.port)
            await asyncio.wait_for(client.first, 60)  # the current state
            clients.append(client)

    await asyncio.gather(*(connect(i, pk) for i, pk in targets))
    print("ready", flush=True)

    async def report(marker: str) -> None:
        deadline = time.monotonic() + 30
        while len(seen[marker]) < len(targets) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        print(json.dumps({"marker": marker, "seen": seen.pop(marker)}), flush=True)

    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "close":
            break
        seen[line[1]] = {}
        print("watching", flush=True)
        asyncio.create_task(report(line[1]))
    for client in clients:
        client.transport.write(masked_frame(CLOSE, struct.pack("!H", 1000)))
        client.transport.close()


if __name__ == "__main__":
    url, cookie, origin, *pairs = sys.argv[1:]
    asyncio.run(main(url, cookie, origin, [tuple(map(int, p.split(":"))) for p in pairs]))
