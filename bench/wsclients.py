"""Websocket clients for bench/live.py, in a process of their own (several of them spread the
clients' own work over the cores, as browsers on other machines would).

    python -m bench.wsclients URL COOKIE ORIGIN INDEX:DEPLOYMENT_ID ...

Connects every client (each waits for its first fragment), prints "ready", then reads commands on
stdin, one per line:
- `watch MARKER`: prints "watching"; once every client has received a message containing MARKER
  (or after 30 s) prints one JSON line {"marker": ..., "seen": {index: CLOCK_MONOTONIC seconds}};
- `close`: closes the clients and exits.
Times are CLOCK_MONOTONIC, comparable with the parent's.
"""

import asyncio
import json
import sys
import time

import websockets


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


async def main(url: str, cookie: str, origin: str, targets: list[tuple[int, int]]) -> None:
    seen: dict[str, dict[int, float]] = {}
    limit = asyncio.Semaphore(50)
    sockets = []

    async def read(index: int, ws) -> None:
        try:
            async for message in ws:
                t = now()
                for marker, where in seen.items():
                    if index not in where and marker in message:
                        where[index] = t
        except websockets.ConnectionClosed:
            pass

    async def connect(index: int, pk: int) -> None:
        async with limit:
            ws = await websockets.connect(
                f"{url}/ws/deployments/{pk}/",
                origin=origin,
                additional_headers={"Cookie": cookie},
                open_timeout=60,
                max_size=2**22,
                ping_interval=None,
            )
            await asyncio.wait_for(ws.recv(), 60)  # the current state
            sockets.append(ws)
            asyncio.create_task(read(index, ws))

    await asyncio.gather(*(connect(i, pk) for i, pk in targets))
    print("ready", flush=True)

    async def report(marker: str) -> None:
        deadline = time.monotonic() + 30
        while len(seen[marker]) < len(targets) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        print(json.dumps({"marker": marker, "seen": seen.pop(marker)}), flush=True)

    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "close":
            break
        seen[line[1]] = {}
        print("watching", flush=True)
        asyncio.create_task(report(line[1]))
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


if __name__ == "__main__":
    url, cookie, origin, *pairs = sys.argv[1:]
    asyncio.run(main(url, cookie, origin, [tuple(map(int, p.split(":"))) for p in pairs]))
