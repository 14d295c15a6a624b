"""Live updates at scale: page requests/s, monitor cost, websocket fan-out and memory.

    DATABASE_URL=postgres:///test REDIS_URL=redis://127.0.0.1:6379/0 uv run python bench/live.py [--only pages,fanout]

Needs a PostgreSQL server (it creates and drops its own database, `diploi_bench`, next to the one
DATABASE_URL names) and a Redis (database 15); both only on this machine. Starts daphne (as `up` does:
with a pool of PostgreSQL connections), a Celery worker and the monitor in a temporary data directory,
and prints with baselines measured in the same run:
1. the Overview page and the project page with 1,000 deployments in PostgreSQL, p50/p99 and
   requests/s, next to a trivial view (/healthz) on the same server, with one and with two web
   processes on the port;
2. publish → fragment received over the websocket, p50/p99, for N clients over 50 deployments and N
   clients on one deployment, next to a Redis pub/sub round trip, with one and with two web processes
   (the clients run in processes of their own: bench/wsclients.py);
3. monitor CPU seconds (monitor + supervisord) and wall time per tick for 10/50/200/1,000 deployments that
   really run (a small Python HTTP server each, sandboxed, health-checked), next to just reading their rows;
4. resident memory of web, worker and monitor with those deployments running and N clients
   connected, next to a Python process that only set Django up.
"""

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DATA = Path(tempfile.mkdtemp(prefix="diploi-bench-"))
BENCH_DB = "diploi_bench"


def bench_database() -> str:
    """A fresh database on the server DATABASE_URL points at; returns its URL."""
    import psycopg

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("bench/live.py measures PostgreSQL: set DATABASE_URL=postgres:///<any database on the server>")
    parts = urllib.parse.urlsplit(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    return urllib.parse.urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def drop_database(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def bench_redis() -> str:
    """Database 15 of the Redis REDIS_URL points at, emptied: no group members left from other runs."""
    import redis

    url = os.environ.get("REDIS_URL", "")
    if not url:
        raise SystemExit("bench/live.py measures the Redis channel layer: set REDIS_URL=redis://127.0.0.1:6379/0")
    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/15"))
    redis.Redis.from_url(url).flushdb()
    return url


ADMIN_URL = os.environ.get("DATABASE_URL", "")
os.environ["REDIS_URL"] = bench_redis()
os.environ.update(
    DATABASE_URL=bench_database(), DIPLOI_DATA_DIR=str(DATA / "data"), DJANGO_SETTINGS_MODULE="diploi.settings", DIPLOI_MONITOR_INTERVAL="2"
)

import django  # noqa: E402

django.setup()
logging.getLogger("channels_redis").setLevel(logging.WARNING)  # a slow reader's full queue is reported in the figures

import psutil  # noqa: E402
from django.test import Client  # noqa: E402

from accounts.models import User  # noqa: E402
from bench.sample import sample_project  # noqa: E402
from deployments.live import events  # noqa: E402
from deployments.management.launcher import WEB_DB_POOL  # noqa: E402
from deployments.models import Deployment, Sample, Stage, State  # noqa: E402
from deployments.runtimes import get_runtime  # noqa: E402
from deployments.runtimes.local import disks  # noqa: E402
from deployments.status.monitor import OBSERVED, Monitor  # noqa: E402
from projects.models import Project  # noqa: E402

GREEN = {
    "colour": "green",
    "reason": "Running",
    "tree": {"containers": [["web", "green", "running"], ["redis", "green", "running"]], "services": [["web", "green", "answering"]]},
}


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def figures(samples: list[float]) -> str:
    return f"p50 {pct(samples, 50) * 1000:7.2f} ms  p99 {pct(samples, 99) * 1000:7.2f} ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(DATA / f"{name}.log", "w")
    return subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


WEB_ENV = dict(os.environ, DIPLOI_DB_POOL=os.environ.get("DIPLOI_DB_POOL", str(WEB_DB_POOL)))  # as `up` starts them


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_web(processes: int) -> tuple[str, list[subprocess.Popen]]:
    """daphne on a free port; with several processes, each adopts one listening socket (as `up` does)."""
    if processes == 1:
        port = free_port()
        web = start("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "diploi.asgi:application"], WEB_ENV)
        return wait_web(f"http://127.0.0.1:{port}", [web])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    argv = [sys.executable, "-m", "deployments.management.shared_socket", "diploi.asgi:application"]
    webs = [
        subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=WEB_ENV,
            stdin=listener,
            stdout=open(DATA / f"web-{i}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in range(processes)
    ]
    port = listener.getsockname()[1]
    listener.close()
    return wait_web(f"http://127.0.0.1:{port}", webs)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        stop(proc)


def wait_web(url: str, webs: list[subprocess.Popen]) -> tuple[str, list[subprocess.Popen]]:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return url, webs
        except OSError:
            if time.monotonic() > deadline or any(w.poll() is not None for w in webs):
                raise SystemExit(f"daphne did not start; see {DATA}/web*.log") from None
            time.sleep(0.1)


def rss_mib(proc: subprocess.Popen) -> float:
    """Resident size of a process and its children (a prefork worker's pool included)."""
    p = psutil.Process(proc.pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def setup(count: int) -> tuple[User, Project, list[int]]:
    user, project = sample_project(DATA)
    Deployment.objects.bulk_create(
        Deployment(
            project=project,
            name=f"d{i:04}",
            slug=f"d{i:04}",
            stage=Stage.DEVELOPMENT,
            branch="main",
            commit=project.stack_commit,
            state=State.RUNNING,
            status=GREEN,
            endpoints={"web": f"http://d{i:04}.localhost:8000"},
        )
        for i in range(count)
    )
    ids = list(Deployment.objects.order_by("slug").values_list("pk", flat=True))
    Sample.objects.bulk_create(Sample(deployment_id=pk, cpu_percent=i % 7, memory_bytes=2**24) for pk in ids for i in range(5))
    return user, project, ids


def http_bench(base: str, cookie: str, path: str, requests: int, workers: int = 8) -> tuple[list[float], float]:
    def one(_: int) -> float:
        req = urllib.request.Request(base + path, headers={"Cookie": cookie})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            assert r.status == 200
        return time.perf_counter() - t

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(workers * 2)))  # warm
        t = time.perf_counter()
        samples = list(pool.map(one, range(requests)))
        return samples, requests / (time.perf_counter() - t)


async def pubsub_baseline(rounds: int = 300) -> list[float]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub()
    await pubsub.subscribe("diploi-bench")
    await pubsub.get_message(timeout=1)  # the subscription confirmation
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        await client.publish("diploi-bench", "x")
        while await pubsub.get_message(timeout=5) is None:
            pass
        samples.append(time.perf_counter() - t)
    await pubsub.aclose()
    await client.aclose()
    return samples


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # the clients' clock too (bench/wsclients.py)


class Clients:
    """N session-authenticated websocket clients, spread over a few processes (bench/wsclients.py);
    each client reports when it first sees a marker."""

    def __init__(self, url: str, cookie: str, origin: str, processes: int) -> None:
        self.url, self.cookie, self.origin, self.processes = url, cookie, origin, processes
        self.workers: list[asyncio.subprocess.Process] = []
        self.count = 0

    async def connect(self, deployment_ids: list[int]) -> None:
        for w in range(self.processes):
            pairs = [f"{i}:{pk}" for i, pk in enumerate(deployment_ids) if i % self.processes == w]
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.wsclients", self.url, self.cookie, self.origin, *pairs,
                cwd=BASE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=2**24,
            )  # fmt: skip
            self.workers.append(worker)
        for worker in self.workers:
            if (await worker.stdout.readline()).strip() != b"ready":
                raise SystemExit("a websocket client process did not connect its clients")
        self.count = len(deployment_ids)

    async def watch(self, marker: str) -> None:
        for worker in self.workers:
            worker.stdin.write(f"watch {marker}\n".encode())
            await worker.stdin.drain()
        for worker in self.workers:
            await worker.stdout.readline()  # "watching"

    async def seen(self) -> dict[int, float]:
        seen = {}
        for worker in self.workers:
            seen.update({int(i): t for i, t in json.loads(await worker.stdout.readline())["seen"].items()})
        return seen

    async def close(self) -> None:
        for worker in self.workers:
            worker.stdin.write(b"close\n")
            await worker.stdin.drain()
        for worker in self.workers:
            await worker.wait()
        self.workers, self.count = [], 0


async def fanout(clients: Clients, targets: dict[int, list[int]], rounds: int) -> tuple[list[float], int]:
    """Change each target deployment and publish its event, `rounds` times; latencies per client."""
    from asgiref.sync import sync_to_async

    latencies, missing = [], 0
    for _ in range(rounds):
        marker = f"bench-{uuid.uuid4().hex[:12]}"
        await clients.watch(marker)
        await sync_to_async(Deployment.objects.filter(pk__in=list(targets)).update)(state_reason=marker)
        sent = {}
        for pk in targets:
            sent[pk] = monotonic()
            await asyncio.to_thread(events.publish, pk, events.STATUS)
        seen = await clients.seen()
        for pk, indexes in targets.items():
            latencies += [seen[i] - sent[pk] for i in indexes if i in seen]
            missing += len([i for i in indexes if i not in seen])
        await asyncio.sleep(0.2)
    return latencies, missing


LIGHT_APP = """import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    c.close()
"""
LIGHT_STACK = """diploiVersion: v1.0
components:
  - name: Web
    identifier: web
    package: python
"""


def light_project(owner: User) -> Project:
    """A project whose deployments each run one small HTTP server (a few MiB): a thousand fit here."""
    from projects.models import Membership, Role
    from projects.sample import commit_all
    from projects.stack import refresh_stack

    repo = DATA / "light"
    repo.mkdir()
    (repo / "diploi.yaml").write_text(LIGHT_STACK)
    (repo / "app.py").write_text(LIGHT_APP)
    from projects.git import run_git

    run_git("init", "--quiet", "--initial-branch", "main", cwd=repo)
    commit_all(repo, "light")
    project = Project.objects.create(name="Light", slug="light", repository=str(repo), default_branch="main")
    Membership.objects.create(project=project, user=owner, role=Role.OWNER)
    refresh_stack(project)
    project.refresh_from_db()
    return project


CREATE_AT_ONCE = 8


def run_light(project: Project, owner: User, count: int) -> list[int]:
    """Create and provision deployments of the light project until `count` run; their ids."""
    from django.db import connection

    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks

    def create(i: int) -> int:
        try:
            d = do_create_deployment(project, f"l{i:04}", Stage.DEVELOPMENT, "main", actor=owner)
            tasks.provision(d.pk)
            return d.pk
        finally:
            connection.close()

    have = list(Deployment.objects.filter(project=project).values_list("pk", flat=True))
    with ThreadPoolExecutor(CREATE_AT_ONCE) as pool:  # as several workers would: each waits for its one to answer
        have += pool.map(create, range(len(have), count))
    # A deployment the worker took first (its task was queued on create) is still on its way.
    deadline = time.monotonic() + 60 + count
    while Deployment.objects.filter(pk__in=have, state__in=(State.PENDING, State.PROVISIONING)).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return have


def monitor_cost(project: Project, owner: User, counts: list[int]) -> list[int]:
    supervisor_pid = int((DATA / "data" / "runtime" / "supervisord.pid").read_text())
    supervisord = psutil.Process(supervisor_pid)
    # The page phase's rows are not observed meanwhile (failed: neither observed nor driven again by the reconciler).
    Deployment.objects.exclude(project=project).update(state=State.FAILED)
    ids: list[int] = []
    for n in counts:
        t = time.monotonic()
        ids = run_light(project, owner, n)
        started = time.monotonic() - t
        running = Deployment.objects.filter(pk__in=ids, state=State.RUNNING).count()
        if running < n:
            failed = Deployment.objects.filter(pk__in=ids).exclude(state=State.RUNNING).values_list("state", "state_reason").first()
            raise SystemExit(f"only {running} of {n} deployments run; one that does not: {failed}")
        monitor = Monitor()
        monitor.tick()  # cold: reads the stack file once per deployment, first CPU reading
        ticks = 5
        before, sup_before, wall = time.process_time(), sum(supervisord.cpu_times()[:2]), time.monotonic()
        for _ in range(ticks):
            observed = monitor.tick()
            assert observed == n, f"the monitor observed {observed} of {n}"
        wall = (time.monotonic() - wall) / ticks
        cpu = (time.process_time() - before + sum(supervisord.cpu_times()[:2]) - sup_before) / ticks
        t = time.process_time()
        for _ in range(ticks):
            list(Deployment.objects.filter(state__in=OBSERVED).select_related("project", "release"))
        base = (time.process_time() - t) / ticks
        green = sum(1 for d in Deployment.objects.filter(pk__in=ids) if (d.status or {}).get("colour") == "green")
        print(f"  {n:>4} deployments ({running} running, {green} green): {cpu:7.3f} CPU s/tick ({cpu / n * 1000:5.2f} ms each)", end="")
        print(f", {wall:6.3f} s of wall time   baseline (read the rows) {base:7.4f} s   {cpu / base:6.0f}×   (started in {started:.0f} s)")
    return ids


def ratios(latencies: list[float], base: list[float], missing: int) -> str:
    p50, p99 = pct(latencies, 50) / pct(base, 50), pct(latencies, 99) / pct(base, 99)
    return f"({p50:.0f}× / {p99:.0f}× baseline){f'  MISSING {missing}' if missing else ''}"


async def websocket_phase(url: str, cookie: str, ids: list[int], n: int, rounds: int, processes: int) -> Clients:
    base = await pubsub_baseline()
    print(f"  baseline: Redis pub/sub round trip                {figures(base)}")
    spread = ids[:50]
    clients = Clients(url.replace("http", "ws"), cookie, url, processes)
    await clients.connect([spread[i % len(spread)] for i in range(n)])
    targets = {pk: [i for i in range(n) if spread[i % len(spread)] == pk] for pk in spread}
    latencies, missing = await fanout(clients, targets, rounds)
    print(f"  {n} clients over {len(spread)} deployments:             {figures(latencies)}   {ratios(latencies, base, missing)}")
    await clients.close()

    clients = Clients(url.replace("http", "ws"), cookie, url, processes)
    await clients.connect([ids[0]] * n)
    latencies, missing = await fanout(clients, {ids[0]: list(range(n))}, rounds)
    print(f"  {n} clients on one deployment:                  {figures(latencies)}   {ratios(latencies, base, missing)}")
    return clients  # left connected for the memory figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--monitor", default="10,50,200,1000", help="running deployments the monitor is measured with")
    parser.add_argument("--client-processes", type=int, default=2, help="processes the websocket clients are spread over")
    parser.add_argument("--only", default="pages,fanout,monitor,memory", help="sections to run")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: still stop what it started (finally below)

    user, project, ids = setup(args.deployments)
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    runtime = get_runtime()
    runtime.supervisor.ensure_running()
    worker = start("worker", [sys.executable, "-m", "celery", "-A", "diploi", "worker", "--loglevel", "WARNING", "--concurrency", "2"])
    webs: list[subprocess.Popen] = []
    monitor = None
    clients = None
    loop = asyncio.new_event_loop()
    try:
        print(f"machine: {os.cpu_count()} CPUs; PostgreSQL {BENCH_DB}; {args.deployments} deployments; everything on loopback\n")
        overview = f"/projects/sample/d/{Deployment.objects.get(pk=ids[0]).slug}/"
        for processes in (1, 2) if "pages" in sections else ():
            url, webs = start_web(processes)
            what = f"{args.deployments} deployments in PostgreSQL, {args.requests} requests, 8 at a time"
            print(f"1.{processes} Pages, {what}, {processes} web process(es):")
            trivial, trivial_rps = http_bench(url, cookie, "/healthz", args.requests)
            print(f"  baseline: /healthz                                {figures(trivial)}  {trivial_rps:7.0f} req/s")
            for label, path in (
                ("Overview of one deployment", overview),
                (f"project page (first 50 of {args.deployments})", "/projects/sample/"),
            ):
                samples, rps = http_bench(url, cookie, path, args.requests)
                print(
                    f"  {label:<48}{figures(samples)}  {rps:7.0f} req/s   ({pct(samples, 50) / pct(trivial, 50):.1f}× / "
                    f"{pct(samples, 99) / pct(trivial, 99):.1f}× baseline; {rps / trivial_rps:.0%} of its req/s)"
                )
            stop_all(webs)
            webs = []

        Deployment.objects.filter(pk__in=ids).update(state=State.RUNNING)
        for processes in (1, 2) if "fanout" in sections else ():
            url, webs = start_web(processes)
            what = f"{args.rounds} rounds, {processes} web process(es), clients in {args.client_processes} processes"
            print(f"\n2.{processes} Websocket fan-out, publish → fragment received, {what}:")
            clients = loop.run_until_complete(websocket_phase(url, cookie, ids, args.clients, args.rounds, args.client_processes))
            loop.run_until_complete(clients.close())
            clients = None
            stop_all(webs)
            webs = []

        light_ids: list[int] = []
        if "monitor" in sections:
            print("\n3. Monitor cost per tick, deployments that really run (one small HTTP server each), 5 ticks:")
            owner = User.objects.get(username="bench")
            light_ids = monitor_cost(light_project(owner), owner, [int(n) for n in args.monitor.split(",")])

        if "memory" in sections:
            url, webs = start_web(2)
            clients = Clients(url.replace("http", "ws"), cookie, url, args.client_processes)
            loop.run_until_complete(clients.connect([ids[0]] * args.clients))
            print(f"\n4. Resident memory with {len(light_ids)} deployments running and {clients.count} connected clients (after 10 s):")
            Deployment.objects.filter(pk__in=ids).update(state=State.FAILED)
            monitor = start("monitor", [sys.executable, "manage.py", "monitor"])
            loop.run_until_complete(asyncio.sleep(10))
            bare = subprocess.run(
                [sys.executable, "-c", "import django, os, psutil; django.setup(); print(psutil.Process().memory_info().rss)"],
                cwd=BASE_DIR,
                capture_output=True,
                text=True,
                check=True,
            )
            base = int(bare.stdout) / 2**20
            print(f"  baseline: python with Django set up               {base:7.1f} MiB")
            for name, proc in (
                *((f"web (daphne) {i}", web) for i, web in enumerate(webs)),
                ("worker (celery, 2 pool processes)", worker),
                ("monitor", monitor),
            ):
                print(f"  {name:<48}{rss_mib(proc):7.1f} MiB   ({rss_mib(proc) / base:.1f}× baseline)")
    finally:
        if clients is not None:
            loop.run_until_complete(clients.close())
        for proc in (monitor, worker, *webs):
            if proc is not None:
                stop(proc)
        from deployments.provisioning import tasks

        runtime.supervisor.shutdown()  # every deployment's processes stopped at once, before their folders go
        for pk in Deployment.objects.filter(project__slug="light").values_list("pk", flat=True):
            tasks.destroy(pk)
        from django.db import connections

        connections.close_all()
        drop_database(ADMIN_URL)
        disks.unmount_under(DATA)  # the deployments' own filesystems (as root)
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
