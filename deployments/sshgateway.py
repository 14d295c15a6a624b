"""The SSH gateway: one port for every deployment, authorised by the keys users registered.

The username names the target, `<component>-<deployment>` (or `<deployment>` for the stack's first
component; `.<project>` may follow when a user reaches two deployments of the same name). A key is
accepted when it is registered by an owner or developer of that project, looked up on every login,
so a removed key or membership stops working at once. Refusals say why in an authentication banner
(OpenSSH prints it on stderr). Sessions are `runtime.open_shell` (shell with a PTY, or a command
with its exit status), SFTP and scp confined to `runtime.files_root`, and `ssh -L` to the
deployment's own ports; each one is recorded on the deployment's Overview.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import SSHKey
from deployments.models import Deployment, SSHSession, State
from deployments.runtimes import get_runtime
from deployments.runtimes.base import DeploymentSpec, RuntimeFailure, Shell, Tunnel, Unreachable
from deployments.spec import current_spec
from projects.models import WRITE_ROLES, Membership

log = logging.getLogger(__name__)
HOST_KEY = "ssh_host_ed25519_key"


SFTP_END_GRACE = 2.0  # seconds an SFTP server gets to exit after the client's end of input
FORWARD_QUEUE = 64  # chunks from the client waiting for a forwarded port before the channel pauses


def db(func: Callable) -> Callable:
    """Database work off the event loop, in the thread pool, with Django's connection housekeeping."""
    return database_sync_to_async(func, thread_sensitive=False)


def host_key_path() -> Path:
    return settings.DATA_DIR / HOST_KEY


def load_host_key() -> asyncssh.SSHKey:
    """The gateway's host key: generated on first start and kept, so clients can pin it."""
    path = host_key_path()
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="diploi-gateway")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(key.export_private_key())
        tmp.chmod(0o600)
        tmp.rename(path)
        path.with_suffix(".pub").write_bytes(key.export_public_key())
    return asyncssh.read_private_key(str(path))


def host_key_fingerprint() -> str | None:
    """SHA256 fingerprint of the gateway's host key, for the dashboard (None before its first start)."""
    from accounts.sshkeys import parse_public_key

    pub = host_key_path().with_suffix(".pub")
    return parse_public_key(pub.read_text()).fingerprint if pub.exists() else None


def ssh_username(component: str, deployment: Deployment, default_component: str, qualify: bool = False) -> str:
    """The username the dashboard shows; `resolve` reads it back."""
    name = deployment.slug if component == default_component else f"{component}-{deployment.slug}"
    return f"{name}.{deployment.project.slug}" if qualify else name


# --- who may go where ---------------------------------------------------------------------------


class Refused(Exception):
    """A login or session is refused; the message is shown to the user."""


@dataclass(frozen=True)
class Target:
    user_id: int
    key_pk: int
    fingerprint: str
    deployment_id: int
    component: str


def resolve(username: str, fingerprint: str) -> Target:
    """The deployment and component `username` names, for the owner of the key; Refused says why."""
    key = SSHKey.objects.select_related("user").filter(fingerprint=fingerprint).first()
    if key is None or not key.user.is_active:
        raise Refused("This key is not registered with Diploi: add it on your SSH keys page.")
    name, _, project_slug = username.partition(".")
    memberships = {m.project_id: m.role for m in Membership.objects.filter(user=key.user)}
    candidates = Deployment.objects.filter(project_id__in=memberships).select_related("project", "release")
    if project_slug:
        candidates = candidates.filter(project__slug=project_slug)
    found: list[tuple[Deployment, str]] = []
    for d in candidates.filter(slug__in=_suffixes(name)):
        component = name[: -len(d.slug)].removesuffix("-")
        try:
            services = current_spec(d).services
        except Exception as e:  # noqa: BLE001 - e.g. a stack file broken on this branch
            raise Refused(f"{d.name} cannot be described right now: {e}") from None
        components = [s.identifier for s in services if s.kind == "component"]
        if not component and components:
            found.append((d, components[0]))
        elif component in {s.identifier for s in services}:
            found.append((d, component))
    if not found:
        raise Refused(f"No deployment or component named “{username}” that you can reach.")
    if len(found) > 1:
        names = ", ".join(sorted(f"{ssh_username(c, d, '', qualify=True)}" for d, c in found))
        raise Refused(f"“{username}” is ambiguous; use one of: {names}")
    d, component = found[0]
    if memberships[d.project_id] not in WRITE_ROLES:
        raise Refused(f"Viewers of {d.project.name} cannot open SSH sessions; ask an owner for developer access.")
    if d.state == State.DELETING:
        raise Refused(f"{d.name} is being deleted.")
    return Target(key.user_id, key.pk, fingerprint, d.pk, component)


def _suffixes(name: str) -> list[str]:
    """Every way `name` may end in a deployment slug: the whole name and what follows each '-'."""
    return [name] + [name[i + 1 :] for i, c in enumerate(name) if c == "-"]


def spec_of(target: Target) -> DeploymentSpec:
    d = Deployment.objects.select_related("project", "release").get(pk=target.deployment_id)
    if d.state == State.DELETING:
        raise Refused(f"{d.name} is being deleted.")
    return current_spec(d)


def still_allowed(target: Target) -> None:
    """Checked again when each session starts: the key, the membership and the deployment."""
    if not SSHKey.objects.filter(pk=target.key_pk, user_id=target.user_id).exists():
        raise Refused("This key was removed.")
    role = Membership.objects.filter(user_id=target.user_id, project__deployments=target.deployment_id).values_list("role", flat=True).first()
    if role not in WRITE_ROLES:
        raise Refused("You no longer have developer access to this project.")


# --- limits ------------------------------------------------------------------------------------


@dataclass
class Limits:
    per_user: int
    per_deployment: int
    idle_timeout: float
    failures_per_minute: int


class Registry:
    """Open sessions and recent authentication failures, for the limits (one gateway process)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.by_user: dict[int, int] = defaultdict(int)
        self.by_deployment: dict[int, int] = defaultdict(int)
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def open(self, target: Target) -> None:
        if self.by_user[target.user_id] >= self.limits.per_user:
            raise Refused(f"You already have {self.limits.per_user} SSH sessions open; close one first.")
        if self.by_deployment[target.deployment_id] >= self.limits.per_deployment:
            raise Refused(f"This deployment already has {self.limits.per_deployment} SSH sessions open; try again later.")
        self.by_user[target.user_id] += 1
        self.by_deployment[target.deployment_id] += 1

    def close(self, target: Target) -> None:
        self.by_user[target.user_id] -= 1
        self.by_deployment[target.deployment_id] -= 1

    def failed(self, address: str) -> None:
        self.failures[address].append(time.monotonic())

    def blocked(self, address: str) -> bool:
        recent = self.failures.get(address)
        if recent is None:
            return False
        while recent and recent[0] < time.monotonic() - 60:
            recent.popleft()
        if not recent:
            del self.failures[address]  # forget addresses that behave
        return len(recent) >= self.limits.failures_per_minute


# --- the server --------------------------------------------------------------------------------


class Connection(asyncssh.SSHServer):
    """One client connection: authentication, then the target its sessions go to."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.target: Target | None = None
        self.conn: asyncssh.SSHServerConnection | None = None
        self.address = ""
        self.told = False
        self.last_active = time.monotonic()
        self.forwards = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.address = f"{peer[0]}:{peer[1]}"
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connections.discard(self)

    def begin_auth(self, username: str) -> bool:
        if self.gateway.registry.blocked(self.host):
            self.refuse("Too many failed logins from your address; try again in a minute.")
        return True

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    def refuse(self, reason: str) -> None:
        if not self.told and self.conn is not None:
            self.conn.send_auth_banner(f"diploi: {reason}\r\n")
            self.told = True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self.gateway.registry.blocked(self.host):
            return False
        try:
            self.target = await db(resolve)(username, key.get_fingerprint("sha256"))
            return True
        except Refused as e:
            self.gateway.registry.failed(self.host)
            self.refuse(str(e))
            return False

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def session_requested(self) -> "Session":
        return Session(self.gateway)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        target = self.target
        if target is None:
            return False
        return self.gateway.forward(self, target, dest_host, dest_port)


class Session(asyncssh.SSHServerProcess):
    """One session channel: a shell or command (`Gateway.session`), SFTP, or scp. When the runtime's
    files are on this machine (`sftp_command` is None) SFTP and scp are served here, confined to
    `files_root`; otherwise the `sftp` subsystem runs the runtime's SFTP server as a command in the
    service, and scp is a command like any other."""

    def __init__(self, gateway: "Gateway") -> None:
        self.in_service = gateway.runtime.sftp_command is not None
        super().__init__(gateway.session, None if self.in_service else gateway.sftp, asyncssh.sftp.MIN_SFTP_VERSION, not self.in_service)

    def subsystem_requested(self, subsystem: str) -> bool:
        return (self.in_service and subsystem == "sftp") or super().subsystem_requested(subsystem)

    def session_started(self) -> None:
        if not (self.in_service and self.channel.get_subsystem() == "sftp"):
            return super().session_started()
        # As asyncssh starts a process session, for a subsystem it would otherwise serve itself.
        stdin = asyncssh.SSHReader(self, self.channel)
        stdout = asyncssh.SSHWriter(self, self.channel)
        stderr = asyncssh.SSHWriter(self, self.channel, asyncssh.constants.EXTENDED_DATA_STDERR)
        self.channel.get_connection().create_task(self._start_process(stdin, stdout, stderr), stdin.logger)


class Gateway:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits(
            per_user=settings.DIPLOI_SSH_MAX_SESSIONS_PER_USER,
            per_deployment=settings.DIPLOI_SSH_MAX_SESSIONS_PER_DEPLOYMENT,
            idle_timeout=settings.DIPLOI_SSH_IDLE_TIMEOUT,
            failures_per_minute=settings.DIPLOI_SSH_AUTH_FAILURES_PER_MINUTE,
        )
        self.registry = Registry(self.limits)
        self.connections: set[Connection] = set()
        # Shell streams block: each session reads in threads of its own pool, apart from the database's.
        self.pool = ThreadPoolExecutor(max_workers=512, thread_name_prefix="ssh-io")
        self.server: asyncssh.SSHAcceptor | None = None
        self.watcher: asyncio.Task | None = None
        self.pending: set[asyncio.Task] = set()
        self.sessions: set[asyncio.Task] = set()
        self.runtime = get_runtime()

    async def start(self, host: str, port: int) -> asyncssh.SSHAcceptor:
        key = await asyncio.to_thread(load_host_key)
        self.server = await asyncssh.create_server(
            lambda: Connection(self), host, port,
            server_host_keys=[key], encoding=None,  # sessions: Connection.session_requested
            login_timeout=settings.DIPLOI_SSH_LOGIN_TIMEOUT, keepalive_interval=30, agent_forwarding=False, x11_forwarding=False,
        )  # fmt: skip
        self.watcher = asyncio.get_running_loop().create_task(self.watch_idle())
        return self.server

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for c in list(self.connections):
            if c.conn is not None:
                c.conn.close()
        for task in self.sessions:
            task.cancel()  # their processes are killed and their ends recorded
        if self.sessions:
            await asyncio.wait(self.sessions, timeout=15)
        if self.pending:
            await asyncio.wait(self.pending, timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def later(self, coro: Awaitable) -> None:
        """Run `coro` from a callback; close() waits for it."""
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def watch_idle(self) -> None:
        while self.server is not None and self.server.is_serving():
            await asyncio.sleep(min(5.0, self.limits.idle_timeout / 2))
            for c in list(self.connections):
                if c.conn is not None and c.forwards == 0 and time.monotonic() - c.last_active > self.limits.idle_timeout:
                    log.info("ssh: closing idle connection from %s", c.address)
                    c.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Idle for too long")

    # --- sessions ---

    async def begin(self, conn: Connection, kind: str, command: str = "") -> tuple[Target, int]:
        """Checks and records a session; returns its target and record id."""
        target = conn.target
        assert target is not None  # sessions exist only after authentication

        def record() -> int:
            still_allowed(target)
            SSHKey.objects.filter(pk=target.key_pk).update(last_used=timezone.now())
            return SSHSession.objects.create(deployment_id=target.deployment_id, user_id=target.user_id, key_fingerprint=target.fingerprint,
                                             component=target.component, kind=kind, command=command[:200], source=conn.address).pk  # fmt: skip

        self.registry.open(target)
        try:
            return target, await db(record)()
        except BaseException:
            self.registry.close(target)
            raise

    async def end(self, target: Target, record: int, status: int | None, keep: bool = True) -> None:
        self.registry.close(target)
        session = SSHSession.objects.filter(pk=record)
        await db(lambda: session.update(ended=timezone.now(), exit_status=status) if keep else session.delete())()

    async def session(self, process: asyncssh.SSHServerProcess) -> None:
        task = asyncio.current_task()
        self.sessions.add(task)
        try:
            await self.run_session(process)
        finally:
            self.sessions.discard(task)

    async def run_session(self, process: asyncssh.SSHServerProcess) -> None:
        conn: Connection = process.get_extra_info("connection").get_owner()
        command = process.command
        kind = SSHSession.Kind.EXEC if command else SSHSession.Kind.SHELL
        if process.subsystem == "sftp":  # served by the service itself (Session)
            kind, command = SSHSession.Kind.SFTP, self.runtime.sftp_command
        try:
            target, record = await self.begin(conn, kind, "" if kind == SSHSession.Kind.SFTP else command or "")
        except Refused as e:
            process.stderr.write(f"diploi: {e}\r\n".encode())
            process.exit(1)
            return
        status: int | None = None
        try:
            status = await self.run_shell(conn, target, process, command, sftp=kind == SSHSession.Kind.SFTP)
        except (Refused, RuntimeFailure) as e:
            process.stderr.write(f"diploi: {e}\r\n".encode())
            status = 1
        finally:
            await self.end(target, record, status)
            process.exit(status if status is not None else 255)

    async def run_shell(self, conn: Connection, target: Target, process: asyncssh.SSHServerProcess, command: str | None,
                        sftp: bool = False) -> int:  # fmt: skip
        loop = asyncio.get_running_loop()
        spec = await db(spec_of)(target)
        terminal = process.get_terminal_type() is not None
        shell: Shell = await loop.run_in_executor(self.pool, lambda: self.runtime.open_shell(spec, target.component, command, terminal))
        if terminal:
            width, height = process.get_terminal_size()[:2]
            if width and height:
                shell.resize(width, height)

        async def pump(read: Callable[[], bytes], stream: asyncssh.SSHWriter) -> None:
            while data := await loop.run_in_executor(self.pool, read):
                conn.touch()
                stream.write(data)
                await stream.drain()  # a slow client slows the process down instead of filling memory

        async def feed() -> None:
            while True:
                try:
                    data = await process.stdin.read(65536)
                except asyncssh.TerminalSizeChanged as change:
                    shell.resize(change.width, change.height)
                    continue
                except (asyncssh.SignalReceived, asyncssh.BreakReceived):
                    await loop.run_in_executor(self.pool, shell.kill)
                    return
                if not data:
                    break
                conn.touch()
                await loop.run_in_executor(self.pool, shell.write, data)
            await loop.run_in_executor(self.pool, shell.close_stdin)
            if sftp:  # the client has no more requests; a server whose stdin's end did not reach it is ended
                await asyncio.sleep(SFTP_END_GRACE)
                if not output.done():
                    await loop.run_in_executor(self.pool, shell.kill)

        outputs = [pump(shell.read, process.stdout)]
        if not terminal:
            outputs.append(pump(shell.read_stderr, process.stderr))
        output = asyncio.ensure_future(asyncio.gather(*outputs))
        feeding = asyncio.create_task(feed())
        gone = asyncio.create_task(process.channel.wait_closed())
        try:
            await asyncio.wait({output, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not output.done():  # the client went away: end what it started
                await loop.run_in_executor(self.pool, shell.kill)
            await asyncio.gather(output, return_exceptions=True)
            return await loop.run_in_executor(self.pool, shell.close)
        except asyncio.CancelledError:  # the gateway is stopping
            await loop.run_in_executor(self.pool, shell.kill)
            raise
        finally:
            feeding.cancel()
            gone.cancel()

    async def sftp(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        conn: Connection = chan.get_connection().get_owner()
        try:
            target = conn.target
            spec = await db(spec_of)(target)
            root = os.path.realpath(self.runtime.files_root(spec, target.component))
            started = await self.begin(conn, SSHSession.Kind.SFTP)
        except (Refused, RuntimeFailure) as e:
            log.info("ssh: sftp refused for %s: %s", conn.address, e)
            chan.close()
            raise
        return ConfinedSFTP(chan, self, conn, root, started)

    def forward(self, conn: Connection, target: Target, host: str, port: int) -> Awaitable:
        async def open_forward() -> asyncssh.SSHTCPSession:
            spec = await db(spec_of)(target)
            loop = asyncio.get_running_loop()
            try:
                started = await self.begin(conn, SSHSession.Kind.FORWARD, f"{host}:{port}")
            except Refused as e:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(e)) from None
            try:
                tunnel = await loop.run_in_executor(self.pool, self.runtime.open_forward, spec, target.component, host, port)
            except Unreachable as e:
                await self.end(*started, None)
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(e)) from None
            except RuntimeFailure as e:  # not a port of the deployment: refused, and no session to record
                await self.end(*started, None, keep=False)
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(e)) from None
            return Forward(self, conn, started, tunnel)

        return open_forward()


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


class ConfinedSFTP(asyncssh.SFTPServer):
    """SFTP (and scp) inside the target's files: `..`, absolute paths and symlinks that lead
    outside are refused — every path is resolved on disk and must stay under the root."""

    def __init__(self, chan: asyncssh.SSHServerChannel, gateway: Gateway, conn: Connection, root: str, started: tuple[Target, int]) -> None:
        self.gateway, self.conn, self.started = gateway, conn, started
        self.root = root.encode()
        super().__init__(chan, chroot=self.root)

    def map_path(self, path: bytes) -> bytes:
        self.conn.touch()
        local = super().map_path(path)
        real = os.path.realpath(local)
        if real != self.root and not real.startswith(self.root + b"/"):
            raise asyncssh.SFTPPermissionDenied("Outside this deployment's files")
        return local

    def exit(self) -> None:
        self.gateway.later(self.gateway.end(*self.started, 0))
        super().exit()
