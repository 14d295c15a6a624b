"""`manage.py up`: every process of the platform on one machine, under a supervisord of its own.

The platform's processes — the embedded Redis, the deployments' process supervisor, web, worker,
monitor and SSH gateway — are programs of a supervisord that `up` runs in the foreground (its
configuration is DATA_DIR/platform/supervisord.conf). One that dies is restarted, with backoff
while it keeps failing to start; `up` says so in its output and in DATA_DIR/platform/events.json,
which the dashboard shows, and when supervisord gives up on a program `up` asks again once a
minute. Only Ctrl-C or SIGTERM stops everything: supervisord stops the programs in reverse order
of start (Redis last, so that the worker can still acknowledge its tasks), each with a bounded grace
period, then its process group is killed; `up` kills whatever is left of the tree.
"""

import contextlib
import ctypes
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from django.conf import settings

from deployments.management import embedded_redis
from deployments.runtimes import hostnames
from deployments.runtimes.base import TransientFailure
from deployments.runtimes.local.router import Router
from deployments.runtimes.local.supervisor import answers, rpc_at, socket_path, supervisord_command

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
EVENTS_KEPT = 50
WEB_DB_POOL = 8  # PostgreSQL connections each web process keeps (DIPLOI_DB_POOL overrides)
# What supervisord's log says when a program dies, is given up on, or runs (again)
EXITED = re.compile(r" exited: (\S+) \((.+?); not expected\)")
GAVE_UP = re.compile(r" gave up: (\S+) entered FATAL state")
RUNNING = re.compile(r" success: (\S+) entered RUNNING state")
LOGIN = re.compile(r"username: \S+ password: \S+")  # what bootstrap says once, on the first start
_print_lock = threading.Lock()


def say(name: str, line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"{name:>8} | {line}\n")
        sys.stdout.flush()


class LaunchError(Exception):
    pass


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher itself is killed without a chance to clean up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Program:
    """One platform process as a supervisord program."""

    name: str
    argv: list[str]
    priority: int  # started in this order, stopped in the reverse one
    stopwaitsecs: float
    startsecs: int = 10  # up this long, it counts as started; dying sooner is a failed start (backoff)
    numprocs: int = 1  # more than one: processes that share `socket`, opened by supervisord (their fd 0)
    socket: str = ""
    environment: dict[str, str] = field(default_factory=dict)  # beside the launcher's own

    @property
    def processes(self) -> list[str]:
        """Its processes' names, as supervisord's log and logs folder name them."""
        return [self.name] if self.numprocs == 1 else [f"{self.name}-{i}" for i in range(self.numprocs)]

    def rpc_name(self, process: str) -> str:
        return process if self.numprocs == 1 else f"{self.name}:{process}"

    def section(self, logs: Path) -> str:
        command = " ".join(_quote(a) for a in self.argv)
        kind, log_name, shared = "program", self.name, ""
        if self.numprocs > 1:
            kind, log_name = "fcgi-program", f"{self.name}-%(process_num)d"
            shared = f"socket={self.socket}\nnumprocs={self.numprocs}\nprocess_name={self.name}-%(process_num)d\n"
        if self.environment:
            shared += "environment=" + ",".join(f'{k}="{v}"' for k, v in self.environment.items()) + "\n"
        return f"""\
[{kind}:{self.name}]
{shared}command={command}
priority={self.priority}
autostart=false
autorestart=true
startsecs={self.startsecs}
startretries=5
stopsignal=TERM
stopwaitsecs={max(1, round(self.stopwaitsecs))}
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={logs / log_name}.log
stdout_logfile_maxbytes=10MB
stdout_logfile_backups=2
"""


def _quote(arg: str) -> str:
    """One argument of a supervisord command line (shlex-split, and %-expanded by supervisord)."""
    return shlex.quote(arg).replace("%", "%%")


@dataclass
class LogTail:
    """New lines of a log file, each handed to `line` (by default printed with the program's name);
    survives the file's rotation."""

    name: str
    path: Path
    line: Callable[[str, str], None] = say
    offset: int = 0
    inode: int = 0
    partial: bytes = field(default=b"", repr=False)

    def skip_existing(self) -> None:
        with contextlib.suppress(OSError):
            st = self.path.stat()
            self.offset, self.inode = st.st_size, st.st_ino

    def pump(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.offset, self.inode = 0, st.st_ino
        if st.st_size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(1 << 20)
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            self.line(self.name, line.decode(errors="replace").rstrip())


class Events:
    """What happened to the platform's processes, for the dashboard: DATA_DIR/platform/events.json."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, process: str, message: str, ok: bool = False) -> None:
        say("up", f"{process}: {message}")
        try:
            kept = json.loads(self.path.read_text())
        except (OSError, ValueError):
            kept = []
        kept.append({"at": datetime.now(UTC).isoformat(timespec="seconds"), "process": process, "message": message, "ok": ok})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(kept[-EVENTS_KEPT:]))
        tmp.replace(self.path)


READY_SECONDS = 300


def _ready(ready: Callable[[], bool]) -> bool:
    """Whether `ready` says so; a process that answers half (the router's admin API restarting as the
    monitor loads its routes) is not ready yet, not a failed start."""
    try:
        return bool(ready())
    except (TransientFailure, OSError, http.client.HTTPException, xmlrpc.client.Fault):
        return False


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launcher:
    def __init__(
        self,
        host: str,
        port: int,
        data_dir: Path,
        grace: float,
        extra: list[tuple[str, list[str]]],
        retry_after: float = 60,
        web_processes: int = 1,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.verbose = verbose  # every process's output on the terminal too, not only in its log file
        self.web_processes = web_processes
        self.retry_after = retry_after  # seconds before `up` starts again a program supervisord gave up on
        self.port = port
        self.data_dir = data_dir
        self.grace = grace
        self.extra = extra
        self.base_dir = Path(__file__).resolve().parents[2]  # where manage.py is
        self.dir = data_dir / "platform"
        self.sock = socket_path(data_dir, "-platform")
        self.events = Events(self.dir / "events.json")
        self.programs: list[Program] = []
        self.tails: list[LogTail] = []
        self.failing: dict[str, float] = {}  # programs supervisord gave up on, and when `up` last retried
        self.proc: subprocess.Popen | None = None  # supervisord
        self.redis_port = 0  # the embedded Redis's, when there is one
        # The router in front of the local runtime's deployments and the dashboard (Caddy).
        self.router = Router(data_dir) if settings.DIPLOI_RUNTIME == "local" and settings.DIPLOI_ROUTER == "caddy" else None
        # Set from the signal handler; a threading.Event would deadlock there (its lock is not reentrant).
        self.stopping = False

    def manage(self, *args: str) -> list[str]:
        return [sys.executable, str(self.base_dir / "manage.py"), *args]

    def rpc(self) -> Any:
        return rpc_at(self.sock)

    def run(self) -> int:
        if port_in_use(self.host, self.port):
            raise LaunchError(
                f"Port {self.port} on {self.host} is already in use (is Diploi already running?). "
                f"Stop that process or choose another port: uv run manage.py up --port {self.port + 1}"
            )
        if answers(self.rpc()):
            raise LaunchError(f"Diploi is already running for the data directory {self.data_dir}")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        # What supervisord started stays this process's when supervisord dies (killed, out of memory):
        # its programs are then adopted here, not by init, and stopped with everything else.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)

        env = dict(os.environ, DIPLOI_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1")
        shown_host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0") else self.host
        url = f"http://{shown_host}:{self.port}/"
        if self.router:  # the dashboard is served through it, by name and over HTTPS
            for port in (settings.DIPLOI_HTTPS_PORT, settings.DIPLOI_HTTP_PORT):
                if port_in_use("0.0.0.0", port):
                    raise LaunchError(
                        f"Port {port} is already in use, and the router needs it. Free it, or choose other ports with "
                        "DIPLOI_HTTPS_PORT and DIPLOI_HTTP_PORT (or DIPLOI_ROUTER=off to reach deployments by port)"
                    )
            url = hostnames.url(settings.DIPLOI_PUBLIC_HOST, "https", settings.DIPLOI_HTTPS_PORT) + "/"
            upstream = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
            env["DIPLOI_DASHBOARD_UPSTREAM"] = f"{upstream}:{self.port}"
        env.setdefault("DIPLOI_SITE_URL", url.rstrip("/"))
        try:
            self._configure(env)
            self._start_supervisord(env)
            processes = [process for program in self.programs for process in program.processes]
            say("up", f"starting {len(processes)} processes: {', '.join(processes)}")
            if "redis" in self._names():
                self._start("redis")
                embedded_redis.wait_until_ready(env["REDIS_URL"])
                url_file = self.data_dir / "redis" / "url"
                self._detail("up", f"embedded Redis on port {self.redis_port}, with a password; REDIS_URL=$(cat {url_file})")
            say("up", "preparing the database")
            login = self._prepare(env)
            if self.stopping:
                return 0
            if "agent" in self._names():
                self._start("agent")
                self._wait(lambda: answers(rpc_at(socket_path(self.data_dir))), "agent", 30)
            for program in self.programs:
                if program.priority >= 250:  # the router, then web, worker, monitor, SSH
                    self._start(program.name)
            # (a loaded machine takes longer: the limits are generous, and what is awaited is said meanwhile)
            self._wait(lambda: _answers_tcp(self.host, self.port), "web", READY_SECONDS)  # the worker may come later: tasks wait for it
            if self.router:  # the monitor gives it the routes at its first tick
                self._wait(lambda: self.router.answers() and self.router.synced(), "monitor", READY_SECONDS)
            if self.stopping:
                return 0
            self._announce(url, login)
            return self._watch()
        finally:
            self.shutdown()

    def _detail(self, name: str, line: str) -> None:
        """A line of a process's own output: on the terminal only with --verbose (it is in its log file)."""
        if self.verbose:
            say(name, line)

    def _prepare(self, env: dict[str, str]) -> str:
        """The database migrated and, on the first start, the demo account and project made (bootstrap);
        their output goes to logs/setup.log. Returns the demo login bootstrap printed, if it did."""
        result = subprocess.run(self.manage("bootstrap"), env=env, cwd=self.base_dir, capture_output=True, text=True)
        output = result.stdout + result.stderr
        log = self.dir / "logs" / "setup.log"
        with open(log, "a") as f:
            f.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')}\n{output}")
        for line in output.splitlines():
            self._detail("setup", line)
        if result.returncode != 0:
            last = "\n".join(output.splitlines()[-15:])
            raise LaunchError(f"preparing the database failed (exit code {result.returncode}); from {log}:\n{last}")
        found = LOGIN.search(result.stdout)
        return found[0] if found else ""

    def _announce(self, url: str, login: str) -> None:
        """Where the dashboard is and how to log in, in a box after the few progress lines."""
        lines = [f"Diploi is running at {url}"]
        if login:
            lines += [f"Log in with {login}", "(shown once: change it under your name, top right)"]
        else:
            lines.append("Log in with your account (the demo password was shown on the first start)")
        if self.router and (settings.DIPLOI_TLS == "internal" or hostnames.is_private(settings.DIPLOI_PUBLIC_HOST)):
            lines += [
                f"Its certificates come from its own CA: trust {self.router.root_certificate}",
                "(e.g. in /usr/local/share/ca-certificates, then update-ca-certificates; or import it in the browser)",
            ]
        lines.append(f"SSH into deployments: port {settings.DIPLOI_SSH_PORT} (each Overview shows its command)")
        if settings.DIPLOI_RUNTIME == "local":
            lines.append(_containers_line(self.data_dir))
        lines += [f"Logs: {self.dir / 'logs'}", "Ctrl-C stops everything"]
        width = max(len(line) for line in lines)
        box = [f"╭{'─' * (width + 4)}╮", *(f"│  {line:<{width}}  │" for line in lines), f"╰{'─' * (width + 4)}╯"]
        with _print_lock:
            sys.stdout.write("\n" + "\n".join(box) + "\n\n")
            sys.stdout.flush()

    def _configure(self, env: dict[str, str]) -> None:
        """The programs and supervisord's configuration. The embedded Redis keeps its port and
        password for this run, so a restarted one is where everybody looks for it."""
        from deployments.runtimes.local.supervisor import Supervisor

        self.dir.mkdir(mode=0o700, exist_ok=True)
        logs = self.dir / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        if not env.get("REDIS_URL"):
            self.redis_port, password = free_port(), embedded_redis.new_password()
            redis_dir = self.data_dir / "redis"
            redis = embedded_redis.redis_command(self.redis_port, redis_dir, password=password)
            self.programs.append(Program("redis", redis, 100, self.grace, startsecs=1))
            env["REDIS_URL"] = embedded_redis.url_with_password(self.redis_port, password)
            url_file = redis_dir / "url"
            url_file.write_text(env["REDIS_URL"] + "\n")
            url_file.chmod(0o600)
        if Supervisor(self.data_dir).running():
            self._detail("up", "using the process supervisor already running for this data directory (it stays when Diploi stops)")
        else:  # it stops the deployments, with more time
            self.programs.append(Program("agent", self.manage("supervisor"), 200, self.grace + 15))
            env["DIPLOI_SUPERVISOR_MANAGED"] = "1"  # nobody else starts one while it restarts
        if self.router:
            self.programs.append(Program("router", self.router.command(), 250, self.grace, startsecs=1))
        web = ["-m", "daphne", "-b", self.host, "-p", str(self.port), "diploi.asgi:application"]
        shared = ""
        if self.web_processes > 1:  # supervisord listens and hands the socket to each daphne as its fd 0
            web = ["-m", "deployments.management.shared_socket", *web[-1:]]
            shared = f"tcp://{self.host}:{self.port}"
        worker = ["-m", "celery", "-A", "diploi", "worker", "--loglevel", "INFO", "--concurrency", "2"]
        web_env = {"DIPLOI_DB_POOL": os.environ.get("DIPLOI_DB_POOL", str(WEB_DB_POOL))}  # PostgreSQL only
        self.programs += [
            Program("web", [sys.executable, *web], 300, self.grace, numprocs=self.web_processes, socket=shared, environment=web_env),
            Program("worker", [sys.executable, *worker], 300, self.grace),
            *(Program(name, self.manage(*argv), 300, self.grace) for name, argv in self.extra),
        ]
        text = f"""\
[unix_http_server]
file={self.sock}
chmod=0700

[supervisord]
nodaemon=true
silent=true
logfile={self.dir / "supervisord.log"}
pidfile={self.dir / "supervisord.pid"}
childlogdir={logs}
identifier=diploi-platform
umask=077
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

"""
        (self.dir / "supervisord.conf").write_text(text + "\n".join(p.section(logs) for p in self.programs))
        self.tails = [LogTail(name, logs / f"{name}.log", self._detail) for p in self.programs for name in p.processes]
        self.tails.append(LogTail("up", self.dir / "supervisord.log", self._supervisord_said))
        for tail in self.tails:
            tail.skip_existing()  # a previous run's lines were shown then

    def _names(self) -> set[str]:
        return {p.name for p in self.programs}

    def _start_supervisord(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*supervisord_command(), "--configuration", str(self.dir / "supervisord.conf")],
            env=env,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._wait(lambda: answers(self.rpc()), "supervisord", 30)

    def _program(self, process: str) -> Program | None:
        """The program a process (as supervisord's log names it) belongs to."""
        return next((p for p in self.programs if process in p.processes), None)

    def _named(self, name: str) -> Program | None:
        return next((p for p in self.programs if p.name == name), None)

    def _start(self, name: str) -> None:
        program = self._named(name)
        try:
            self.rpc().startProcess(name if program.numprocs == 1 else f"{name}:*", False)
        except xmlrpc.client.Fault as e:
            if "ALREADY_STARTED" not in e.faultString:
                raise LaunchError(f"{name} could not be started: {e.faultString}") from None

    def _wait(self, ready: Callable[[], bool], name: str, timeout: float) -> None:
        started = said = time.monotonic()
        deadline = started + timeout
        while not self.stopping:
            self._pump()
            if self.proc.poll() is not None:
                raise LaunchError(f"the platform's supervisord exited; see {self.dir / 'supervisord.log'}")
            program = self._named(name)
            for process in program.processes if program else []:
                state = self.rpc().getProcessInfo(program.rpc_name(process))
                if state["statename"] == "FATAL":
                    raise LaunchError(f"{name} could not be started; see {self.dir / 'logs' / name}.log")
            if _ready(ready):
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"{name} was not ready within {timeout:.0f} s; see {self.dir / 'logs'}")
            if time.monotonic() > said + 15:  # a loaded machine: say what it waits for, then go on waiting
                said = time.monotonic()
                say("up", f"still starting {name} ({said - started:.0f} s; at most {timeout:.0f} s)")
            time.sleep(0.1)

    def _pump(self) -> None:
        for tail in self.tails:
            tail.pump()

    def _watch(self) -> int:
        """Until Ctrl-C: print the programs' output, say what supervisord did (from its log), and
        start again, once a minute, a program it gave up on."""
        while not self.stopping:
            time.sleep(0.2)
            self._pump()
            if self.proc.poll() is not None:
                say("up", f"the platform's supervisord exited with code {self.proc.returncode}; stopping everything")
                return 1
            self._reap()
            for name, since in list(self.failing.items()):
                if time.monotonic() - since >= self.retry_after:
                    self.failing[name] = time.monotonic()
                    program = self._program(name)
                    with contextlib.suppress(OSError, http.client.HTTPException, xmlrpc.client.Fault):
                        self.rpc().startProcess(program.rpc_name(name) if program else name, False)
        return 0

    def _stop_orphans(self) -> None:
        """supervisord died before it could stop its programs, which this process adopted: the
        deployments' supervisord is asked to stop the deployments as it always does, then every other
        program gets SIGTERM and its grace period (what is left after that is killed by shutdown)."""
        say("up", "stopping what the platform's supervisord left running")
        agent = rpc_at(socket_path(self.data_dir))
        with contextlib.suppress(OSError, http.client.HTTPException, xmlrpc.client.Fault):
            agent.shutdown()
            deadline = time.monotonic() + 30
            while answers(agent) and time.monotonic() < deadline:
                time.sleep(0.2)
        left = _descendants(os.getpid())
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        psutil.wait_procs(left, timeout=max(p.stopwaitsecs for p in self.programs) if self.programs else 10)

    def _reap(self) -> None:
        """Adopted processes that ended (a subreaper waits for them, or they stay zombies), each looked
        at without being taken first: never supervisord, whose end `proc` reads."""
        while True:
            try:
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if ended is None or ended.si_pid == self.proc.pid:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ended.si_pid, 0)

    def _supervisord_said(self, _: str, line: str) -> None:
        if self.stopping:
            return
        if found := EXITED.search(line):
            self.events.add(found[1], f"stopped unexpectedly ({found[2]}) and was restarted")
        elif found := GAVE_UP.search(line):
            self.failing[found[1]] = time.monotonic()
            log = self.dir / "logs" / f"{found[1]}.log"
            self.events.add(found[1], f"keeps failing to start; trying again every {self.retry_after:.0f} s (see {log})")
        elif (found := RUNNING.search(line)) and self.failing.pop(found[1], None):
            self.events.add(found[1], "is running again", ok=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        """supervisord stops its programs in reverse order of start, each within its grace period
        and then by killing its process group; after a bounded wait for that, whatever is left of
        the tree is killed."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self._stop_orphans()
        tree = _descendants(self.proc.pid)
        try:
            self.rpc().shutdown()
        except (OSError, http.client.HTTPException, xmlrpc.client.Fault):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + sum(p.stopwaitsecs for p in self.programs) + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._pump()
            time.sleep(0.1)
        if self.proc.poll() is None:
            say("up", "supervisord did not stop in time; killing what is left")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for p in tree + _descendants(os.getpid()):
            with contextlib.suppress(psutil.Error):
                p.kill()
        self._pump()
        say("up", "stopped")


def _containers_line(data_dir: Path) -> str:
    """Whether components built from a Dockerfile, and packages that are an image and a chart, can run
    here, and what would let them."""
    from deployments.runtimes.local import charted, containers

    if why := containers.problem(data_dir):
        return f"Dockerfile components and image add-ons cannot run here: {why}"
    helm = "" if charted.helm_installed() else "; image add-ons (a package's chart) need Helm: install it or set DIPLOI_HELM"
    return f"Dockerfile components and image add-ons: run as containers (podman, rootless, one account per deployment){helm}"


def _answers_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
