"""The SSH gateway: one port for every deployment, authorised by the keys users registered.

The username names the target, `<component>-<deployment>` (or `<deployment>` for the stack's first
component; `.<project>` may follow when a user reaches two deployments of the same name). A key is
accepted when it is registered by an owner or developer of that project, looked up on every login,
so a removed key or membership stops working at once. Before the client has proved it holds the key,
answers are generic; after, a refusal says why as the reason of the disconnect (OpenSSH prints it on
stderr). Who may go where is in authorise.py. Sessions are `runtime.open_shell` (shell with a PTY, or a command
with its exit status), SFTP and scp confined to `runtime.files_root`, and `ssh -L` to the
deployment's own ports; each one is recorded on the deployment's Overview.
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import asyncssh
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import SSHKey
from deployments.models import SSHSession
from deployments.runtimes import get_runtime
from deployments.runtimes.base import RuntimeFailure, Shell, Unreachable
from deployments.ssh.authorise import Refused, Target, Unregistered, resolve, spec_of, still_allowed
from deployments.ssh.forward import Forward
from deployments.ssh.hostkey import ensure_host_key
from deployments.ssh.limits import Limits, Registry
from deployments.ssh.naming import recorded_command
from deployments.ssh.sftp import ConfinedSFTP

log = logging.getLogger(__name__)
SFTP_END_GRACE = 2.0  # seconds an SFTP server gets to exit after the client's end of input
# Answers before a signature are the same for everyone: they name no user, project or deployment.
BLOCKED = "Too many failed logins from your address; try again in a minute."
UNREGISTERED = "No key you offered is registered with Diploi: add yours on your SSH keys page."


def db(func: Callable) -> Callable:
    """Database work off the event loop, in the thread pool, with Django's connection housekeeping."""
    return database_sync_to_async(func, thread_sensitive=False)


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
        self.outcome: Target | Refused = Refused("This login was refused.")
        self.probes = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.address = f"{peer[0]}:{peer[1]}"
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connections.discard(self)
        for _ in range(self.probes):  # keys probed (or signed) without getting in
            self.gateway.registry.failed(self.host)

    def begin_auth(self, username: str) -> bool:
        if self.gateway.registry.blocked(self.host):
            self.refuse(BLOCKED)
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
        """Before the client has signed anything, say only whether the key is one Diploi knows; every
        probed key that does not get in counts against the address's limit. Where the key may go is
        worked out here but told only to whoever holds it, once its signature is checked."""
        if self.gateway.registry.blocked(self.host):
            return False
        fingerprint = key.get_fingerprint("sha256")
        try:
            self.outcome = await db(resolve)(username, fingerprint)
        except Unregistered:
            self.gateway.registry.failed(self.host)
            self.refuse(UNREGISTERED)
            return False
        except Refused as e:
            self.outcome = e
        self.probes += 1  # a failure unless the client signs with it and gets in
        return True

    def auth_completed(self) -> None:
        """The client signed with the key last validated: its outcome holds."""
        if isinstance(self.outcome, Target):
            self.target, self.probes = self.outcome, 0
        elif self.conn is not None:
            # OpenSSH prints a disconnect's reason with non-ASCII escaped: keep the quotes readable.
            reason = str(self.outcome).replace("“", '"').replace("”", '"')
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, f"diploi: {reason}")

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
        key = asyncssh.read_private_key(str(await asyncio.to_thread(ensure_host_key)))
        self.server = await asyncssh.create_server(
            lambda: Connection(self),
            host,
            port,
            server_host_keys=[key],
            encoding=None,  # sessions: Connection.session_requested
            login_timeout=settings.DIPLOI_SSH_LOGIN_TIMEOUT,
            keepalive_interval=30,
            agent_forwarding=False,
            x11_forwarding=False,
        )
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
        if target is None:  # signed in, but refused (the connection is being closed)
            raise Refused("This login was refused.")

        def record() -> int:
            still_allowed(target)
            SSHKey.objects.filter(pk=target.key_pk).update(last_used=timezone.now())
            return SSHSession.objects.create(
                deployment_id=target.deployment_id,
                user_id=target.user_id,
                key_fingerprint=target.fingerprint,
                component=target.component,
                kind=kind,
                command=recorded_command(command),
                source=conn.address,
            ).pk

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

    async def run_shell(
        self, conn: Connection, target: Target, process: asyncssh.SSHServerProcess, command: str | None, sftp: bool = False
    ) -> int:
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
            start = self.runtime.files_start(spec, target.component)
            started = await self.begin(conn, SSHSession.Kind.SFTP)
        except (Refused, RuntimeFailure) as e:
            log.info("ssh: sftp refused for %s: %s", conn.address, e)
            chan.close()
            raise
        return ConfinedSFTP(chan, self, conn, root, start, started)

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
