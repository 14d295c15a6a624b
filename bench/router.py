"""What the router costs a request, and how fast a route change takes effect.

    uv run python bench/router.py [--routes 1,100,1000] [--seconds 5] [--clients 4]

Starts the router as `up` does (Caddy, ports opened before it, configured through its admin API) in a
temporary data directory, in front of one small keep-alive HTTP app on loopback, and prints for each
number of routes configured (one per deployment, two host names each):
- requests/s, p50 and p99 of GET / through the router (HTTPS, certificate verified against the router's
  CA, keep-alive) next to the same app asked directly (plain HTTP, keep-alive): the baseline, as a ratio;
- a route change: the admin API call for one deployment's route, and the time until a request sees the
  new upstream (median of 10);
- requests that failed while routes changed: clients that open a new connection per request, and clients
  that keep theirs (and do not retry), during 20 changes of another deployment's route (a change reloads
  Caddy's configuration; see docs/local-runtime.md).
"""

import argparse
import asyncio
import http.client
import multiprocessing
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DATA = Path(tempfile.mkdtemp(prefix="diploi-bench-router-"))
os.environ.update(DIPLOI_DATA_DIR=str(DATA / "data"), DJANGO_SETTINGS_MODULE="diploi.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from deployments.runtimes.local.router import Router, Site  # noqa: E402

HOST = "bench--router.localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_app(port: int, body: bytes) -> None:
    """A minimal HTTP/1.1 keep-alive server answering every request with `body` (in its own process)."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (len(body), body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def connection(target: tuple[str, int, str, str | None]) -> http.client.HTTPConnection:
    scheme, port, host, cafile = target
    if scheme == "http":
        return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    context = ssl.create_default_context(cafile=cafile)

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), 10), server_hostname=host)

    return Connection(host, port, timeout=10, context=context)


def client(target: tuple[str, int, str, str | None], seconds: float, fresh: bool, out: multiprocessing.Queue) -> None:
    """Requests for `seconds`, on one kept connection (or a new one each time): latencies and failures."""
    latencies, failed = [], 0
    conn = None if fresh else connection(target)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            c = connection(target) if fresh else conn
            c.request("GET", "/", headers={"Host": target[2]})
            answer = c.getresponse()
            answer.read()
            if answer.status != 200:
                failed += 1
            if fresh:
                c.close()
        except (OSError, http.client.HTTPException):
            failed += 1
            if not fresh:
                conn = connection(target)
            continue
        latencies.append(time.perf_counter() - start)
    out.put((latencies, failed))


def load(target: tuple[str, int, str, str | None], seconds: float, clients: int, fresh: bool = False) -> tuple[float, float, float, int]:
    """requests/s, p50 ms, p99 ms, failed: `clients` processes at once."""
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(target, seconds, fresh, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(x for r in results for x in r[0])
    failed = sum(r[1] for r in results)
    if not latencies:
        return 0.0, 0.0, 0.0, failed
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / seconds, statistics.median(latencies) * 1000, p99 * 1000, failed


def sites(count: int, upstream: str) -> list[Site]:
    """The measured deployment first, then count - 1 others (two host names each, like a deployment's)."""
    others = [
        Site(i, ((f"d{i}--p.localhost", ("127.0.0.1:1",)), (f"web--d{i}--p.localhost", ("127.0.0.1:1",))), down="x")
        for i in range(2, count + 1)
    ]
    return [Site(1, ((HOST, (upstream,)),), down="down"), *others]


def change_time(router: Router, https: int, cafile: str, ports: tuple[int, int]) -> tuple[float, float]:
    """Median ms of the admin call that points the deployment at the other app, and until a request sees it."""
    calls, effective = [], []
    for i in range(10):
        port = ports[(i + 1) % 2]
        start = time.perf_counter()
        router.put(Site(1, ((HOST, (f"127.0.0.1:{port}",)),), down="down"))
        calls.append(time.perf_counter() - start)
        want = b"B" if port == ports[1] else b"A"
        while True:
            c = connection(("https", https, HOST, cafile))
            c.request("GET", "/")
            if c.getresponse().read() == want:
                break
            c.close()
        effective.append(time.perf_counter() - start)
    return statistics.median(calls) * 1000, statistics.median(effective) * 1000


def failures_while_changing(router: Router, https: int, cafile: str, clients: int, fresh: bool) -> tuple[int, int]:
    """(failed, total) requests (on a new connection each, or kept ones) during 20 changes of another
    deployment's route."""
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(("https", https, HOST, cafile), 6.0, fresh, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    for i in range(20):
        router.put(Site(2, (("d2--p.localhost", (f"127.0.0.1:{2 + i % 2}",)),), down="x"))
        time.sleep(0.2)
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(r[1] for r in results), sum(len(r[0]) + r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routes", default="1,100,1000")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    settings.DIPLOI_HTTPS_PORT, settings.DIPLOI_HTTP_PORT = free_port(), free_port()
    https = settings.DIPLOI_HTTPS_PORT
    ports = (free_port(), free_port())
    apps = [multiprocessing.Process(target=serve_app, args=(p, b), daemon=True) for p, b in zip(ports, (b"A", b"B"), strict=True)]
    for app in apps:
        app.start()
    router = Router(DATA / "data")
    proc = subprocess.Popen(router.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not router.answers():
            time.sleep(0.05)
        cafile = str(router.root_certificate)
        time.sleep(0.5)
        direct = load(("http", ports[0], HOST, None), args.seconds, args.clients)
        print(f"{args.clients} clients, keep-alive, {args.seconds:.0f} s each; the app alone (baseline): {direct[0]:,.0f} req/s, "
              f"p50 {direct[1]:.2f} ms, p99 {direct[2]:.2f} ms")  # fmt: skip
        for count in (int(n) for n in args.routes.split(",")):
            start = time.perf_counter()
            router.load(sites(count, f"127.0.0.1:{ports[0]}"))
            loaded = (time.perf_counter() - start) * 1000
            threading.Event().wait(0.5)
            while True:  # the certificate for the measured host is issued in the background
                try:
                    c = connection(("https", https, HOST, cafile))
                    c.request("GET", "/")
                    c.getresponse().read()
                    break
                except (OSError, http.client.HTTPException):
                    time.sleep(0.2)
            routed = load(("https", https, HOST, cafile), args.seconds, args.clients)
            call, effective = change_time(router, https, cafile, ports)
            router.put(Site(1, ((HOST, (f"127.0.0.1:{ports[0]}",)),), down="down"))
            failed, total = failures_while_changing(router, https, cafile, args.clients, fresh=True)
            kept_failed, kept_total = failures_while_changing(router, https, cafile, args.clients, fresh=False)
            print(
                f"{count:>5} routes: load {loaded:,.0f} ms | through the router {routed[0]:,.0f} req/s "
                f"({routed[0] / direct[0]:.2f}× the app alone), p50 {routed[1]:.2f} ms ({routed[1] / direct[1]:.1f}×), "
                f"p99 {routed[2]:.2f} ms ({routed[2] / direct[2]:.1f}×), {routed[3]} failed | route change: admin call "
                f"{call:.0f} ms, effective after {effective:.0f} ms | during 20 changes of another route, failed: {failed} of {total} "
                f"requests on new connections, {kept_failed} of {kept_total} on kept ones"
            )
    finally:
        proc.kill()
        for app in apps:
            app.kill()


if __name__ == "__main__":
    main()
