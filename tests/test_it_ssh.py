"""The SSH gateway over loopback: asyncssh clients and the OpenSSH binaries against a running deployment."""

import asyncio
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import asyncssh
import pytest

from accounts.models import SSHKey
from accounts.sshkeys import parse_public_key
from deployments.models import Deployment, EnvVar, SSHSession, State
from tests.conftest import http_get, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]
SSH = shutil.which("ssh")


class GatewayThread:
    """The gateway on a free loopback port, in its own thread and event loop (as its own process would be)."""

    def __init__(self, limits=None) -> None:
        from deployments.ssh.server import Gateway

        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(limits)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(self.gateway.start("127.0.0.1", 0))
            self.port = server.get_port()
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True, name="ssh-gateway").start()
        assert ready.wait(30), "the gateway did not start"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def gateway(runtime):
    started = []

    def start(limits=None) -> GatewayThread:
        started.append(GatewayThread(limits))
        return started[-1]

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def dev(cast, runtime) -> Deployment:
    """A running development deployment of the sample with an env var of its own."""
    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks

    d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    EnvVar.objects.create(deployment=d, service="", key="SOME_ENV", value="it works")
    tasks.provision(d.pk)
    d.refresh_from_db()
    wait_until(lambda: http_get(d.endpoints["web"]), what="the page")
    return d


def new_key(tmp_path: Path, name: str, user=None) -> Path:
    """A private key file; registered for `user` when given."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / name
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    if user is not None:
        public = parse_public_key(key.export_public_key().decode())
        SSHKey.objects.create(user=user, title=name, key_type=public.key_type, public_key=public.openssh, fingerprint=public.fingerprint)
    return path


def ssh(port: int, key: Path, user: str, *command: str, quiet: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    """The OpenSSH client, as a person would run the dashboard's command (plus a throwaway known-hosts).
    `quiet` hides the client's own notices, and with them the gateway's banner."""
    argv = [
        SSH,
        "-p",
        str(port),
        "-i",
        str(key),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"LogLevel={'ERROR' if quiet else 'INFO'}",
        f"{user}@127.0.0.1",
        *command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def client(port: int, key: Path, user: str = "dev", **kwargs):
    return asyncssh.connect("127.0.0.1", port, username=user, client_keys=[str(key)], known_hosts=None, agent_path=None, **kwargs)


def code_folder(runtime, d: Deployment) -> Path:
    from deployments.provisioning.spec import current_spec

    return Path(runtime.files_root(current_spec(d), "web"))


@pytest.mark.skipif(SSH is None, reason="OpenSSH's ssh is not installed (.ci/run installs openssh-client)")
def test_a_developer_runs_commands_with_the_deployment_env_and_exit_status(cast, dev, runtime, gateway, tmp_path) -> None:
    from deployments.ssh.hostkey import host_key_fingerprint

    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)
    result = ssh(g.port, key, "dev", "echo $SOME_ENV && pwd", quiet=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["it works", str(code_folder(runtime, dev) / "web")]
    assert ssh(g.port, key, "web-dev", "exit 3").returncode == 3  # the component named explicitly
    assert ssh(g.port, key, "dev.shop", "echo ok >&2", quiet=True).stderr == "ok\n"  # qualified with the project; stderr apart

    async def host_key() -> str:
        async with client(g.port, key) as conn:
            return conn.get_server_host_key().get_fingerprint("sha256")

    assert asyncio.run(host_key()) == host_key_fingerprint()
    sessions = list(SSHSession.objects.filter(deployment=dev).order_by("started"))
    assert [(s.kind, s.exit_status, s.user, s.component) for s in sessions] == [
        ("exec", 0, cast.developer, "web"),
        ("exec", 3, cast.developer, "web"),
        ("exec", 0, cast.developer, "web"),
    ]
    assert all(s.ended and s.source.startswith("127.0.0.1:") for s in sessions)
    assert SSHKey.objects.get(user=cast.developer).last_used is not None

    page = cast.client(cast.developer).get("/projects/shop/d/dev/").content.decode()
    assert "Recent sessions" in page and "<code>exit …</code>" in page and host_key_fingerprint() in page
    assert "SOME_ENV" not in page  # a command's arguments are not kept (they may hold secrets)
    assert f"ssh -p {2222} dev@localhost" in page


def test_an_interactive_terminal_follows_the_window_size(cast, dev, gateway, tmp_path) -> None:
    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)

    async def session() -> tuple[str, str]:
        async with client(g.port, key) as conn:
            process = await conn.create_process(term_type="xterm", term_size=(100, 30), encoding="utf-8")
            process.stdin.write("stty size\n")
            first = await read_until(process, "30 100")
            process.change_terminal_size(120, 40)
            process.stdin.write("stty size; exit 4\n")
            second = await read_until(process, "40 120")
            await process.wait_closed()
            return first + second, process.exit_status

    output, status = asyncio.run(asyncio.wait_for(session(), 60))
    assert "30 100" in output and "40 120" in output and status == 4
    assert SSHSession.objects.get(kind="shell").exit_status == 4


async def forward_answers(conn, targets: list[tuple[str, int]]) -> list[str]:
    """Open a forward to each host:port: "host:port open", or the gateway's reason for refusing it."""
    answers = []
    for host, port in targets:
        try:
            reader, writer = await conn.open_connection(host, port)
            writer.close()
            answers.append(f"{host}:{port} open")
        except asyncssh.ChannelOpenError as e:
            answers.append(e.reason)
    return answers


async def answer_then_end(conn, host: str, port: int, request: bytes, last: bytes) -> int:
    """Send `request` through a forward to a port that answers (ending with `last`) and closes: how
    many writes after the answer the channel took to close — it must not stay half open. (The end
    itself may only show at a write: KWOK's port-forward waits for the client's side too.)"""
    reader, writer = await conn.open_connection(host, port)
    writer.write(request)
    answer = b""
    while not answer.endswith(last):
        chunk = await reader.read(65536)
        assert chunk, f"the forward ended before {last!r}: {answer!r}"
        answer += chunk
    writes = 0
    while not writer.channel.is_closing():
        assert writes < 100, "the channel stayed open after its port went away"
        writer.write(b"more\r\n")
        writes += 1
        await asyncio.sleep(0.05)
    await writer.channel.wait_closed()
    return writes


async def read_until(process, text: str) -> str:
    seen = ""
    while text not in seen:
        chunk = await process.stdout.read(4096)
        assert chunk, f"the session ended before {text!r}: {seen!r}"
        seen += chunk
    return seen


def test_sftp_edits_the_running_code_and_cannot_leave_it(cast, dev, runtime, gateway, tmp_path) -> None:
    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)
    root = code_folder(runtime, dev)
    (root / "web" / "outside").symlink_to("/etc")

    async def session() -> dict:
        found = {}
        async with client(g.port, key) as conn, conn.start_sftp_client() as sftp:
            found["cwd"] = await sftp.realpath(".")
            found["up"] = sorted(await sftp.listdir(".."))
            async with sftp.open("app.py") as f:  # where `ssh … cat app.py` reads it: the component's folder
                source = await f.read()
            async with sftp.open("app.py", "w") as f:
                await f.write(source.replace("Visits:", "Visitors:"))
            found["listing"] = sorted(await sftp.listdir(found["cwd"] + "/.."))
            platform = (str(runtime.data_dir / "diploi.sqlite3"), str(runtime.data_dir / "ssh_host_ed25519_key"), "outside/shadow")
            for path in ("../../../../etc/passwd", "/etc/passwd", "outside/passwd", "../../ports.json", "../../../ports.json", *platform):
                try:
                    await sftp.stat(path)
                    found[path] = "reachable"
                except asyncssh.SFTPError as e:
                    found[path] = type(e).__name__
        return found

    found = asyncio.run(asyncio.wait_for(session(), 60))
    assert "web" in found["up"] and "diploi.yaml" in found["up"]  # `..` reaches the rest of the code
    assert found["listing"] == found["up"]
    if runtime.sftp_command:
        # Confined: SFTP runs in the deployment's sandbox, starting in the component's folder; nothing
        # of the platform or the machine is there to reach, whatever the path or symlink.
        assert found["cwd"] == str(root / "web")
        platform_files = (str(runtime.data_dir / "diploi.sqlite3"), str(runtime.data_dir / "ssh_host_ed25519_key"))
        for path in ("../../ports.json", "../../../ports.json", *platform_files):
            assert found[path] in ("SFTPNoSuchFile", "SFTPPermissionDenied"), (path, found[path])
        assert found["outside/shadow"] in ("SFTPNoSuchFile", "SFTPPermissionDenied")  # the sandbox's own /etc
    else:
        # Unconfined: the gateway serves the files itself, chrooted to them.
        assert found["cwd"] == "/web"
        assert "etc" not in found["up"]
        assert found["outside/passwd"] == "SFTPPermissionDenied"
        for path in ("../../../../etc/passwd", "/etc/passwd", "../../ports.json", "../../../ports.json"):
            assert found[path] in ("SFTPNoSuchFile", "SFTPPermissionDenied"), (path, found[path])
    wait_until(lambda: "Visitors:" in http_get(dev.endpoints["web"]), timeout=30, what="the dev server to reload the edit")
    assert SSHSession.objects.filter(kind="sftp", deployment=dev).exists()


def test_port_forwarding_reaches_only_the_deployments_own_ports(cast, dev, gateway, tmp_path) -> None:
    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)

    async def session() -> tuple[str, list[str]]:
        async with client(g.port, key) as conn:
            listener = await conn.forward_local_port("127.0.0.1", 0, "localhost", 8000)  # the port the package declares
            page = await asyncio.to_thread(http_get, f"http://127.0.0.1:{listener.get_port()}/")
            listener.close()
            return page, await forward_answers(conn, [("localhost", 22), ("localhost", 5432), ("example.com", 80), ("redis", 6379)])

    page, refused = asyncio.run(asyncio.wait_for(session(), 60))
    assert "Visits:" in page
    assert refused[:3] == [
        "localhost:22 is not a port of this deployment",
        "localhost:5432 is not a port of this deployment",
        "example.com:80 is not a port of this deployment",
    ]
    assert refused[3] == "redis:6379 open"  # the add-on of this very deployment


def test_a_forward_whose_port_goes_away_ends(cast, dev, gateway, tmp_path) -> None:
    """Redis closes the connection after QUIT: the client gets the end, and what it still writes
    makes the channel close instead of leaving it half open."""
    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)

    async def session() -> int:
        async with client(g.port, key) as conn:
            return await answer_then_end(conn, "redis", 6379, b"QUIT\r\n", b"+OK\r\n")

    assert asyncio.run(asyncio.wait_for(session(), 60)) >= 1
    wait_until(
        lambda: SSHSession.objects.filter(kind="forward", deployment=dev, command="redis:6379", ended__isnull=False).exists(),
        what="the forward's session to end",
    )


@pytest.mark.skipif(SSH is None, reason="OpenSSH's ssh is not installed (.ci/run installs openssh-client)")
def test_who_is_refused_and_why(cast, dev, gateway, tmp_path) -> None:
    from projects.models import Membership, Role

    g = gateway()
    developer = new_key(tmp_path, "developer", cast.developer)
    cases = {
        "viewer": (new_key(tmp_path, "viewer", cast.viewer), "dev", "Viewers of Shop cannot open SSH sessions"),
        "outsider": (new_key(tmp_path, "outsider", cast.outsider), "dev", 'No deployment or component named "dev" that you can reach'),
        "unregistered": (new_key(tmp_path, "stranger"), "dev", "No key you offered is registered with Diploi"),
        "wrong username": (developer, "nope-dev", 'No deployment or component named "nope-dev"'),
    }
    for case, (key, user, reason) in cases.items():
        result = ssh(g.port, key, user, "echo in")
        assert result.returncode == 255 and "in\n" not in result.stdout, case
        assert reason in result.stderr, (case, result.stderr)

    removed = new_key(tmp_path, "removed", cast.owner)
    assert ssh(g.port, removed, "dev", "true").returncode == 0
    SSHKey.objects.filter(user=cast.owner).delete()
    assert "No key you offered is registered" in ssh(g.port, removed, "dev", "true").stderr  # at once

    Membership.objects.filter(user=cast.developer).update(role=Role.VIEWER)
    assert "Viewers of Shop" in ssh(g.port, developer, "dev", "true").stderr
    Membership.objects.filter(user=cast.developer).update(role=Role.DEVELOPER)
    Deployment.objects.filter(pk=dev.pk).update(state=State.DELETING)
    assert "Dev is being deleted" in ssh(g.port, developer, "dev", "true").stderr
    assert not SSHSession.objects.exclude(user=cast.owner).exists()  # refusals open nothing

    async def password_only() -> None:
        async with asyncssh.connect(
            "127.0.0.1",
            g.port,
            username="dev",
            password="pw-developer",
            known_hosts=None,
            client_keys=None,
            agent_path=None,
            preferred_auth="password,keyboard-interactive",
        ):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(password_only())


@pytest.mark.skipif(SSH is None, reason="OpenSSH's ssh is not installed (.ci/run installs openssh-client)")
def test_before_a_signature_the_gateway_names_nothing(cast, dev, gateway, tmp_path) -> None:
    """Public keys are public: someone holding only a member's public key learns no project or
    deployment name (OpenSSH offers a key it has no private half of, and shows what comes back)."""
    from projects.models import Membership, Project, Role

    other = Project.objects.create(name="Secret Bank", slug="secret-bank", repository=cast.project.repository, default_branch="main")
    Membership.objects.create(project=other, user=cast.developer, role=Role.DEVELOPER)
    Deployment.objects.create(project=other, name="Dev", slug="dev", branch="main", state=State.RUNNING, commit=dev.commit)
    g = gateway()
    probes = {}
    for who, user in (("viewer", cast.viewer), ("developer", cast.developer)):
        new_key(tmp_path, who, user)
        public = tmp_path / f"{who}-public-only.pub"  # no private half beside it
        public.write_text(SSHKey.objects.get(user=user, title=who).public_key + "\n")
        probes[who] = public
    for who, username in (("viewer", "dev"), ("developer", "dev"), ("developer", "web-dev.secret-bank")):
        key = probes[who]
        r = subprocess.run(
            [SSH, "-v", "-p", str(g.port), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
            + ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", f"{username}@127.0.0.1", "true"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 255 and "Server accepts key" in r.stderr, r.stderr[-2000:]
        for secret in ("Shop", "Secret Bank", "Viewers", "ambiguous", "dev.shop", "reach"):
            assert secret not in r.stderr, (who, username, secret)
    assert not SSHSession.objects.exists()


def test_a_session_opened_after_access_is_lost_is_refused(cast, dev, gateway, tmp_path) -> None:
    from channels.db import database_sync_to_async

    from projects.models import Membership

    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)

    async def session() -> tuple[str, str]:
        async with client(g.port, key) as conn:
            first = (await conn.run("echo first")).stdout
            await database_sync_to_async(Membership.objects.filter(user=cast.developer).delete)()  # its connection is closed after
            second = await conn.run("echo second")
            return first, second.stderr

    first, refused = asyncio.run(asyncio.wait_for(session(), 60))
    assert first == "first\n" and "no longer have developer access" in refused


def test_fifty_sessions_at_once_while_one_client_stalls(cast, dev, gateway, tmp_path) -> None:
    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)
    staller = socket.create_connection(("127.0.0.1", g.port))  # connects, then says nothing

    async def one(i: int) -> str:
        async with client(g.port, key) as conn:
            done = await conn.run(f"echo $(({i} * {i}))")
            assert done.exit_status == 0, f"session {i}: exit status {done.exit_status}: {done.stderr!r}"  # (what failed says why)
            return done.stdout

    async def all_of_them() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(50)))

    try:
        outputs = asyncio.run(asyncio.wait_for(all_of_them(), 180))
    finally:
        staller.close()
    assert outputs == [f"{i * i}\n" for i in range(50)]
    assert SSHSession.objects.filter(deployment=dev, exit_status=0).count() == 50


def test_limits_sessions_failures_and_idle_connections(cast, dev, gateway, tmp_path) -> None:
    from deployments.ssh.limits import Limits

    g = gateway(Limits(per_user=2, per_deployment=10, idle_timeout=2, failures_per_minute=3))
    key = new_key(tmp_path, "dev-key", cast.developer)
    stranger = new_key(tmp_path, "stranger")

    async def sessions() -> str:
        async with client(g.port, key) as conn:
            held = [await conn.create_process("sleep 30") for _ in range(2)]
            third = await conn.run("echo three")
            for p in held:
                p.kill()
            return third.stderr

    assert "You already have 2 SSH sessions open" in asyncio.run(asyncio.wait_for(sessions(), 60))

    async def idle() -> float:
        async with client(g.port, key) as conn:
            started = asyncio.get_running_loop().time()
            await conn.create_process(term_type="xterm")  # a shell nobody types into
            await asyncio.wait_for(conn.wait_closed(), 30)
            return asyncio.get_running_loop().time() - started

    assert asyncio.run(idle()) >= 2

    async def attempt(path: Path) -> str:
        banner = []

        class Client(asyncssh.SSHClient):
            def auth_banner_received(self, msg: str, lang: str) -> None:
                banner.append(msg)

        try:
            async with asyncssh.connect(
                "127.0.0.1", g.port, username="dev", client_keys=[str(path)], known_hosts=None, agent_path=None, client_factory=Client
            ) as conn:
                await conn.run("true")
                return "in"
        except asyncssh.PermissionDenied:
            return "".join(banner)

    assert [asyncio.run(attempt(stranger)) for _ in range(3)] == [
        "diploi: No key you offered is registered with Diploi: add yours on your SSH keys page.\r\n"
    ] * 3
    assert "Too many failed logins" in asyncio.run(attempt(key))  # even the right key waits now


def test_the_gateway_command_keeps_its_host_key(data_dir) -> None:
    import asyncssh

    from deployments.ssh.hostkey import ensure_host_key, host_key_fingerprint

    def load_host_key() -> asyncssh.SSHKey:
        return asyncssh.read_private_key(str(ensure_host_key()))

    assert host_key_fingerprint() is None
    first = load_host_key().get_fingerprint("sha256")
    assert load_host_key().get_fingerprint("sha256") == first == host_key_fingerprint()
    assert oct(os.stat(data_dir / "ssh_host_ed25519_key").st_mode & 0o777) == "0o600"


def test_a_client_that_goes_away_ends_what_it_started(cast, dev, runtime, gateway, tmp_path) -> None:
    import psutil

    g = gateway()
    key = new_key(tmp_path, "dev-key", cast.developer)
    marker = tmp_path / "still-running"

    async def leave() -> None:
        conn = await client(g.port, key)
        await conn.create_process(f"sleep 300; touch {marker}")
        await asyncio.sleep(1)
        conn.abort()  # no goodbye: the network went away

    asyncio.run(leave())

    def sleeping() -> list:
        return [p for p in psutil.process_iter(["cmdline"]) if f"sleep 300; touch {marker}" in " ".join(p.info["cmdline"] or [])]

    wait_until(lambda: not sleeping(), what="the orphaned command to be killed")
    wait_until(lambda: SSHSession.objects.filter(deployment=dev, ended__isnull=False).exists(), what="the session's end to be recorded")
