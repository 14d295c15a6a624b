import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from django.test import Client

from accounts.models import User
from diploi import shared
from projects.models import Membership, Project, Role
from projects.sample import commit_all, create_sample_repository
from projects.stack import refresh_stack


def _own_redis_database() -> None:
    """With pytest-xdist, each worker gets a Redis database of its own (its channel layer, its broker,
    what `redis_layer` empties; database 0 stays a run's without workers), so tests running side by
    side never see each other's messages. pytest-django gives each worker its own test database."""
    from django.conf import settings

    from diploi.settings import redis_channel_layer

    worker, url = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("REDIS_URL", "")
    if not worker.startswith("gw") or not url:
        return
    url = re.sub(r"(/\d+)?$", f"/{int(worker[2:]) + 1}", url.rstrip("/"), count=1)
    os.environ["REDIS_URL"] = settings.REDIS_URL = settings.CELERY_BROKER_URL = url
    settings.CHANNEL_LAYERS = redis_channel_layer(url)
    settings.CACHES = {**settings.CACHES, "shared": {**settings.CACHES["shared"], "LOCATION": url}}


_own_redis_database()


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    """Each test gets its own data directory (git mirrors, repositories, deployments)."""
    settings.DATA_DIR = tmp_path / "data"
    # Real hashing costs ~0.3 s per password; the launcher test still logs in with the real one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.DATA_DIR.mkdir()
    settings.DIPLOI_ROUTER = "off"  # deployments by port; the router's tests start one (the `router` fixture)
    yield settings.DATA_DIR
    if os.geteuid() == 0:  # the deployments' own filesystems (as root) go with the test's folder
        from deployments.runtimes.local import disks

        disks.unmount_under(tmp_path)


@pytest.fixture
def teams(settings) -> None:
    """Team mode although deployments are not confined: what an operator gets with
    DIPLOI_ALLOW_UNCONFINED=1 (tests of sign-up and members, not of the refusal)."""
    settings.DIPLOI_ALLOW_UNCONFINED = True


@pytest.fixture
def unconfined(settings) -> None:
    """A machine that cannot confine deployments (here: the sandbox switched off)."""
    settings.DIPLOI_CONFINE = "off"


@pytest.fixture
def local_repositories(settings, tmp_path: Path) -> None:
    """Projects may use repositories in the test's temporary folder, as an operator allows with
    DIPLOI_LOCAL_REPOSITORIES."""
    settings.DIPLOI_LOCAL_REPOSITORIES = [str(tmp_path)]


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    return create_sample_repository(tmp_path / "sample-repo")


@dataclass
class Cast:
    owner: User
    developer: User
    viewer: User
    outsider: User
    project: Project

    def client(self, user: User | None, **kwargs) -> Client:
        client = Client(**kwargs)
        if user is not None:
            client.force_login(user)
        return client


@pytest.fixture
def cast(db, sample_repo: Path) -> Cast:
    """A project with one member of each role, and a user who is not a member."""
    users = {
        name: User.objects.create_user(name, email=f"{name}@example.com", password="pw-" + name)
        for name in ("owner", "developer", "viewer", "outsider")
    }
    project = Project.objects.create(name="Shop", slug="shop", repository=str(sample_repo), default_branch="main")
    for role in (Role.OWNER, Role.DEVELOPER, Role.VIEWER):
        Membership.objects.create(project=project, user=users[role.value], role=role)
    refresh_stack(project)
    return Cast(project=project, **users)


@pytest.fixture(autouse=True)
def fresh_fragments(settings) -> None:
    """Rendered fragments are cached by what they show; each test starts with none (ids repeat
    between tests on SQLite), in this process's memory rather than the shared Redis."""
    locmem = "django.core.cache.backends.locmem.LocMemCache"
    settings.CACHES = {"default": {"BACKEND": locmem}, "shared": {"BACKEND": locmem, "LOCATION": uuid.uuid4().hex}}
    shared.clear()


@pytest.fixture(autouse=True)
def fresh_runtime():
    """get_runtime() is cached per process; each test has its own data directory, so its own runtime."""
    from deployments.runtimes import get_runtime

    get_runtime.cache_clear()
    yield
    get_runtime.cache_clear()


@pytest.fixture
def runtime(data_dir: Path):
    """The local runtime of this test's data directory; its supervisor (and every process) stops after."""
    from deployments.runtimes import get_runtime

    rt = get_runtime()
    yield rt
    rt.supervisor.shutdown()


def provision_again(deployment_id: int) -> None:
    """A change written straight to the rows, provisioned as an action would: one more change asked
    for, then the task (which makes no pass for changes a pass already covered)."""
    from django.db.models import F

    from deployments.models import Deployment
    from deployments.provisioning import tasks

    Deployment.objects.filter(pk=deployment_id).update(wanted=F("wanted") + 1)
    tasks.provision(deployment_id)


def wait_until(check, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll `check` until it returns something truthy; its last exception or value explains a failure."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def http_get(url: str, timeout: float = 3.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


# --- packages and projects served by a real git daemon -------------------------------------


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_daemon(tmp_path: Path, settings):
    """`git daemon` serving the bare repositories under a folder, over git:// on loopback."""
    settings.DIPLOI_ALLOW_PRIVATE_REPOSITORIES = True  # loopback is a private address
    base = tmp_path / "served"
    base.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield base, f"git://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def publish(base: Path, name: str, files: dict[str, str], tag: str = "") -> str:
    """Commit `files` to the served repository `name` (created on first use); returns the commit."""
    work = base.parent / f"work-{name}"
    if not work.exists():
        git("init", "--quiet", "--initial-branch", "main", str(work), cwd=base.parent)
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    commit = commit_all(work, f"Publish {name}")
    if tag:
        git("tag", "-f", tag, cwd=work)
    bare = base / f"{name}.git"
    if not bare.exists():
        git("clone", "--quiet", "--bare", str(work), str(bare), cwd=base.parent)
    else:
        git("push", "--quiet", "--force", "--tags", str(bare), "main", cwd=work)
    return commit


# --- the whole platform, started as a user would ---------------------------------------------

BASE_DIR = Path(__file__).resolve().parent.parent
GRACE = 3


def page_text(response) -> str:
    """What a person reads on a page: tags dropped, entities decoded, white space folded."""
    import html

    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def session_output(runtime, spec, service: str, command: str) -> tuple[int, str]:
    """A non-interactive session's exit status and output (stdout)."""
    shell = runtime.open_shell(spec, service, command, pty=False)
    out = b""
    while chunk := shell.read():
        out += chunk
    return shell.close(), out.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Platform:
    def __init__(self, data_dir: Path, port: int, teams: bool = False, env: dict[str, str] | None = None, verbose: bool = True) -> None:
        drop = ("REDIS_URL", "DATABASE_URL", "DIPLOI_DATA_DIR", "DIPLOI_ALLOW_UNCONFINED")
        env = {**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})}
        if teams:  # the operator allows sign-up and members although deployments are not confined
            env["DIPLOI_ALLOW_UNCONFINED"] = "1"
        env["DIPLOI_SHUTDOWN_GRACE"] = str(GRACE)
        env.setdefault("DIPLOI_ROUTER", "off")  # the router's own tests start `up` with it
        env.setdefault("DIPLOI_HTTPS_PORT", str(free_port()))
        env.setdefault("DIPLOI_HTTP_PORT", str(free_port()))
        env["DIPLOI_MONITOR_INTERVAL"] = "1"
        # The README's screenshot shows the default SSH port when it is free.
        self.ssh_port = 2222 if os.environ.get("DIPLOI_SCREENSHOT") and port_free(2222) else free_port()
        env["DIPLOI_SSH_PORT"] = str(self.ssh_port)
        self.port = port
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            # --verbose: the tests follow the processes' own output (a worker ready, a restart)
            [sys.executable, "manage.py", "up", "--port", str(port), "--data-dir", str(data_dir), *(["--verbose"] if verbose else [])],
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.output()):
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the launcher's output:\n{self.output()[-3000:]}")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=GRACE * 3 + 20)

    def kill(self) -> None:
        """Test clean-up only: whatever is still running after a failed assertion. What the platform
        printed goes to the test's captured output, which pytest shows when the test failed."""
        print(f"--- the launcher's output, last part ---\n{self.output()[-8000:]}")
        if self.proc.poll() is not None:
            return
        for p in [*self.descendants(), psutil.Process(self.proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


@pytest.fixture
def platform(tmp_path: Path):
    """The whole platform started by `manage.py up` on a free port, in this test's own data directory."""
    p = Platform(tmp_path / "data", free_port())
    yield p
    p.kill()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real Redis: REDIS_URL when it answers (CI starts one), else the embedded server."""
    import redis as redis_client

    from deployments.management import embedded_redis

    url = os.environ.get("REDIS_URL", "")
    if url:
        try:
            redis_client.Redis.from_url(url, socket_connect_timeout=1).ping()
            yield url
            return
        except redis_client.ConnectionError:
            pass
    port = free_port()
    proc = subprocess.Popen(
        embedded_redis.redis_command(port, tmp_path_factory.mktemp("redis"), persistent=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        embedded_redis.wait_until_ready(url, proc)
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def redis_layer(settings, redis_url: str) -> str:
    """The production channel layer (Redis) instead of the in-memory one, with a clean slate."""
    import redis as redis_client
    from channels.layers import channel_layers

    redis_client.Redis.from_url(redis_url).flushdb()
    from diploi.settings import redis_channel_layer

    settings.CHANNEL_LAYERS = redis_channel_layer(redis_url)
    channel_layers.backends.clear()
    yield redis_url
    channel_layers.backends.clear()


# `uv run pytest -m "not slow"` is the fast loop: these start real processes, servers, a browser or
# need the Kubernetes control plane. Everything else runs in a few seconds.
SLOW_MODULES = {
    "test_it_confinement",
    "test_it_starters",
    "test_it_containers",
    "test_it_faults",
    "test_it_browser",
    "test_it_helm",
    "test_it_image",
    "test_it_kubernetes",
    "test_it_launcher",
    "test_it_live",
    "test_it_local_runtime",
    "test_it_releases",
    "test_it_ssh",
}
SLOW_FIXTURES = {"platform", "browser", "kube", "gateway", "redis_layer"}


# Tests that share one thing of the machine never run side by side on two pytest-xdist workers: the
# Kubernetes control plane's (a test restarts it; the fixture empties its namespaces) go to one worker
# together (pytest_xdist_make_scheduler); the two that add the cloud metadata stand-in address to the
# loopback interface take turns (one_at_a_time).
SHARED = {"test_it_kubernetes": "kube", "test_it_kubernetes_watch": "kube", "test_it_helm": "kube"}
SHARED_FIXTURES = {"platform_ports": "metadata"}


def pytest_xdist_make_scheduler(config, log):
    """Tests are handed out one by one, but a SHARED module's as one unit (xdist_group markers do not
    reach pytest-xdist 3.8's scheduler under pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
            return SHARED.get(module, nodeid)

    return Scheduling(config, log)


# What the PostgreSQL pass runs (`-m database`): tests of the database's own behaviour — what they
# store, query, lock, count. Not those whose database is another (`platform` starts `up` on its own
# SQLite), nor the runtimes' tests, whose subject is processes and clusters (a deployment row is only
# their input).
NOT_DATABASE_MODULES = {
    "test_it_local_runtime",
    "test_it_starters",
    "test_it_containers",
    "test_it_confinement",
    "test_it_hostile",
    "test_it_image",
    "test_it_helm",
    "test_it_kubernetes",
    "test_it_kubernetes_watch",
}
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_setup", "live_server"}


def pytest_itemcollected(item) -> None:
    module = item.module.__name__.rsplit(".", 1)[-1]
    fixtures = set(getattr(item, "fixturenames", ()))
    if module in SLOW_MODULES or SLOW_FIXTURES & fixtures:
        item.add_marker(pytest.mark.slow)
    uses_db = bool(DATABASE_FIXTURES & fixtures) or item.get_closest_marker("django_db") is not None
    if uses_db and "platform" not in fixtures and module not in NOT_DATABASE_MODULES:
        item.add_marker(pytest.mark.database)


@pytest.fixture(autouse=True)
def one_at_a_time(request):
    """A test using a SHARED_FIXTURES fixture holds its group's lock (a file of the machine's temporary
    folder) while it runs."""
    group = next((g for f, g in SHARED_FIXTURES.items() if f in request.fixturenames), None)
    if not group:
        yield
        return
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / f"diploi-tests-{os.getuid()}-{group}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def dns_server(settings):
    """A DNS server on loopback (UDP) answering from a dict the test fills: {(name, "CNAME"|"TXT"): [rdata
    text, …]}; names it does not know are NXDOMAIN. Custom domains are checked against it
    (DIPLOI_DNS_SERVERS), through the same resolver code as against the world's DNS."""
    import socket
    import threading

    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    records: dict[tuple[str, str], list[str]] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name, kind = question.name.to_text().rstrip(".").lower(), dns.rdatatype.to_text(question.rdtype)
            if values := records.get((name, kind)):
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", kind, *values))
            elif not any(known == name for known, _ in records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    settings.DIPLOI_DNS_SERVERS = [f"127.0.0.1:{sock.getsockname()[1]}"]
    yield records
    stop.set()
    thread.join()
    sock.close()


# --- the router (Caddy) and an ACME server (Pebble) -------------------------------------------


@contextlib.contextmanager
def asking(port: int, host: str, cafile: Path, path: str = "/"):
    """A client asking https://host:port/path continuously (on loopback, at most 50,000 times) while the
    block runs: yields the list of (status, body) it got, 0 and the error for a refused or cut one."""
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set() and len(answers) < 50_000:
            try:
                status, _, body = https_request(port, host, path, cafile=cafile)
                answers.append((status, body))
            except Exception as e:  # noqa: BLE001 - a refused or cut connection is a failed request
                answers.append((0, repr(e)))

    client = threading.Thread(target=ask, daemon=True)
    client.start()
    try:
        yield answers
    finally:
        stop.set()
        client.join(timeout=30)


def https_request(port: int, host: str, path: str = "/", cafile: Path | None = None, timeout: float = 5.0) -> tuple[int, dict, str]:
    """GET https://host:port/path from 127.0.0.1 (the system resolver knows no *.localhost), the
    certificate verified against `cafile` alone (None: the system's CAs). Status, headers, body."""
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout), server_hostname=host)

    conn = Connection(host, port, timeout=timeout, context=context)
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{port}", "User-Agent": "diploi-tests"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode(errors="replace")
    finally:
        conn.close()


class RouterProcess:
    """The router as `up` runs it (Caddy with only its admin API until its routes are loaded)."""

    def __init__(self, data_dir: Path) -> None:
        from deployments.runtimes.local.router import Router

        self.router = Router(data_dir)
        self.proc: subprocess.Popen | None = None
        self.log = data_dir / "router.log"

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.router.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.router.answers, timeout=30, what="the router's admin API")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def router(settings, data_dir: Path):
    """A running router in front of this test's local runtime, on free ports."""
    settings.DIPLOI_ROUTER = "caddy"
    settings.DIPLOI_HTTPS_PORT, settings.DIPLOI_HTTP_PORT = free_port(), free_port()
    settings.SITE_URL = f"https://localhost:{settings.DIPLOI_HTTPS_PORT}"
    from deployments.status.monitor import Monitor

    process = RouterProcess(data_dir)
    process.start()
    Monitor().sync_routes()  # as the monitor's first tick does under `up`
    yield process
    process.kill()
    print(f"--- the router's log, last part ---\n{process.log.read_text()[-4000:]}")


PEBBLE_VERSION = "v2.10.3"


def _pebble_binaries() -> tuple[Path, Path]:
    """pebble and pebble-challtestsrv built from the Go module proxy into a cache (once), and the
    module's folder (its test certificates)."""
    cache = Path(os.environ.get("DIPLOI_PEBBLE_CACHE", Path.home() / ".cache" / "diploi-pebble")) / PEBBLE_VERSION
    module = "github.com/letsencrypt/pebble/v2"
    if not (cache / "pebble").exists() or not (cache / "pebble-challtestsrv").exists():
        if not shutil.which("go"):
            pytest.skip("Go is needed to build Pebble (scripts run by .ci/run have it)")
        env = {**os.environ, "GOBIN": str(cache), "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
        commands = [f"{module}/cmd/pebble@{PEBBLE_VERSION}", f"{module}/cmd/pebble-challtestsrv@{PEBBLE_VERSION}"]
        subprocess.run(["go", "install", *commands], env=env, check=True)
    found = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    return cache, Path(found) / f"{module}@{PEBBLE_VERSION}"


@dataclass
class Pebble:
    directory: str  # the ACME directory URL
    ca_root: Path  # Pebble's own TLS root (the ACME client must trust it)
    management: int  # port of its management interface (the roots of what it issues)
    challtestsrv: int  # port of pebble-challtestsrv's management API

    def issuing_root(self, path: Path) -> Path:
        """The root of the certificates Pebble issues (new at each start of Pebble)."""
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.ca_root))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0", context=context, timeout=5) as r:
            path.write_bytes(r.read())
        return path


@pytest.fixture
def pebble(tmp_path: Path, settings):
    """Let's Encrypt's test ACME server on loopback, checking challenges against the router's ports
    (call after the ports are chosen: the `router` fixture first), with a DNS server
    (pebble-challtestsrv) that answers 127.0.0.1 for every name."""
    import json

    binaries, module = _pebble_binaries()
    certs = module / "test" / "certs"
    acme, management, dns_port, challenge_api = free_port(), free_port(), free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(certs / "localhost" / "cert.pem"),
            "privateKey": str(certs / "localhost" / "key.pem"),
            "httpPort": settings.DIPLOI_HTTP_PORT,
            "tlsPort": settings.DIPLOI_HTTPS_PORT,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (tmp_path / "pebble.json").write_text(json.dumps(config))
    log = open(tmp_path / "pebble.log", "w")  # noqa: SIM115 - closed below
    dns = subprocess.Popen(
        [binaries / "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dnsserver", f"127.0.0.1:{dns_port}",
         "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "", "-management", f"127.0.0.1:{challenge_api}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    server = subprocess.Popen(
        [binaries / "pebble", "-config", tmp_path / "pebble.json", "-dnsserver", f"127.0.0.1:{dns_port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    wait_until(lambda: not port_free(acme), timeout=30, what="Pebble to listen")
    yield Pebble(f"https://127.0.0.1:{acme}/dir", certs / "pebble.minica.pem", management, challenge_api)
    for p in (server, dns):
        p.kill()
        p.wait()
    log.close()
    print(f"--- Pebble's log, last part ---\n{(tmp_path / 'pebble.log').read_text()[-4000:]}")
