"""The long-lived supervisor (supervisord) that owns every local deployment's processes.

One supervisord per data directory. Each deployment adds a config file with one program group;
`update()` makes supervisord load what changed, as `supervisorctl update` does. supervisord does
the restarting with backoff, the log files and the process groups; its event listener
(events.py) counts unexpected exits and announces every change.
"""

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import psutil
from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

from deployments.runtimes.base import TransientFailure
from deployments.runtimes.local import disks
from deployments.runtimes.local.layout import write_atomic

BASE_DIR = Path(__file__).resolve().parents[3]
EXEC = BASE_DIR / "deployments" / "runtimes" / "local" / "exec.py"  # what supervisord runs for each service
RPC_TIMEOUT = 30.0  # seconds one call to supervisord may take (stopping a group waits for its processes)


class TimedUnixConnection(UnixStreamHTTPConnection):
    """HTTP over the unix socket `socketfile`, each operation bounded by RPC_TIMEOUT."""

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(RPC_TIMEOUT)
        self.sock.connect(self.socketfile)


def socket_path(data_dir: Path, suffix: str = "") -> Path:
    """Unix socket paths are limited to ~100 bytes, so supervisord's sockets live in /tmp under a
    name derived from the data directory."""
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"diploi-{digest}{suffix}.sock"


class _TreeReader:
    """xmlrpc.client's parser and unmarshaller in one, on ElementTree's C parser: supervisord's answer about
    a thousand processes is read several times faster than with xmlrpc's Python callback per element."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.result: tuple | None = None

    def feed(self, data: bytes) -> None:
        self.data.append(data)

    def close(self) -> tuple:
        if self.result is None:
            root = ElementTree.fromstring(b"".join(self.data))
            fault = root.find("fault/value")
            if fault is not None:
                found = _value(fault)
                raise xmlrpc.client.Fault(found["faultCode"], found["faultString"])
            self.result = tuple(_value(v) for v in root.iterfind("params/param/value"))
        return self.result


_SCALARS = {"int": int, "i4": int, "i8": int, "double": float, "boolean": lambda t: t == "1", "string": str}


def _value(element: ElementTree.Element) -> Any:
    """One XML-RPC <value>, as xmlrpc.client reads it (dates and binary stay text: supervisord sends none)."""
    typed = next(iter(element), None)
    if typed is None:
        return element.text or ""
    if typed.tag == "struct":
        return {m.findtext("name"): _value(m.find("value")) for m in typed}
    if typed.tag == "array":
        return [_value(v) for v in typed.iterfind("data/value")]
    if typed.tag == "nil":
        return None
    return _SCALARS.get(typed.tag, str)(typed.text or "")


def rpc_at(sock: Path, namespace: str = "supervisor") -> Any:
    """The XML-RPC interface of the supervisord at `sock`, every call bounded by RPC_TIMEOUT (a
    supervisor that hangs makes the call fail, never the caller wait forever)."""
    transport = SupervisorTransport(None, None, f"unix://{sock}")

    def connection(serverurl: str | None = None) -> TimedUnixConnection:
        conn = TimedUnixConnection("localhost")
        conn.socketfile = str(sock)
        return conn

    transport._get_connection = connection
    transport.getparser = lambda: (reader := _TreeReader(), reader)
    return getattr(xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport), namespace)


def answers(rpc: Any) -> bool:
    try:
        return rpc.getState()["statename"] == "RUNNING"
    except (OSError, http.client.HTTPException, xmlrpc.client.Fault):
        return False


class Supervisor:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / "runtime"
        self.conf = self.dir / "supervisord.conf"
        self.sock = socket_path(data_dir)
        self.restarts_file = self.dir / "restarts.json"
        self.programs = self.dir / "programs.conf"
        # "<supervisord's pid> <digest> <when>" of the programs it loaded last, read at <when> (time.monotonic())
        self.loaded = self.dir / "programs.loaded"

    def restarts(self) -> dict[str, int]:
        """How often each program ("group:name") was restarted after an unexpected exit."""
        return json.loads(self.restarts_file.read_text()) if self.restarts_file.exists() else {}

    def write_conf(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        text = f"""\
[unix_http_server]
file={self.sock}
chmod=0700

[supervisord]
logfile={self.dir / "supervisord.log"}
pidfile={self.dir / "supervisord.pid"}
childlogdir={self.dir / "logs"}
identifier=diploi
loglevel=warn
minfds={_open_files_allowed()}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[eventlistener:diploi-events]
command={sys.executable} -m deployments.runtimes.local.events {self.dir}
directory={BASE_DIR}
events=PROCESS_STATE
buffer_size=1000
autorestart=true
stderr_logfile={self.dir / "events.log"}

[include]
files={self.programs}
"""
        if not self.conf.exists() or self.conf.read_text() != text:
            self.conf.write_text(text)
        self.write_programs()

    def write_programs(self) -> str:
        """Every deployment's programs (its own supervisor.conf) in the one file supervisord includes.
        supervisord reads each included file by parsing again every section read before it: with one
        file per deployment, a reload took 3.5 s of its CPU with 1,000 deployments (0.4 s with one)."""
        parts = []
        for conf in sorted((self.data_dir / "deployments").glob("*/supervisor.conf")):
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile: it is not loaded
                parts.append(conf.read_text())
        text = "\n".join(parts)
        if not self.programs.exists() or self.programs.read_text() != text:
            write_atomic(self.programs, text, 0o600)
        return text

    def foreground_command(self) -> list[str]:
        """For `manage.py supervisor` (which `up` runs): supervisord in the foreground."""
        self.write_conf()
        return [*supervisord_command(), "--nodaemon", "--configuration", str(self.conf)]

    def rpc(self) -> Any:
        return rpc_at(self.sock)

    def running(self) -> bool:
        return answers(self.rpc())

    def end_orphans(self, grace: float = 15.0) -> int:
        """Before a supervisord starts: end the services a previous one left running when it died
        (each is recognisable by its run file in this data directory), so that none keeps the port
        its restarted program needs and nothing unsupervised stays reported as running. Each gets
        SIGTERM (its wrapper stops its whole process group), then SIGKILL after `grace`. Returns
        how many there were."""
        if self.running():
            return 0
        prefix, wrapper = str(self.data_dir / "deployments") + "/", str(EXEC)
        orphans = []
        for p in psutil.process_iter(["cmdline"]):
            argv = p.info["cmdline"] or []
            if len(argv) == 3 and argv[1] == wrapper and argv[2].startswith(prefix):
                orphans.append(p)
        for p in orphans:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(orphans, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
                p.kill()
        return len(orphans)

    def ensure_running(self, timeout: float = 20.0) -> None:
        """Start a daemonised supervisord when none answers (tests, the CLI, workers run by hand).
        Under `up` (DIPLOI_SUPERVISOR_MANAGED=1) the platform's own supervisord restarts it: wait for
        that instead, so that no second one outlives the platform."""
        if self.running():
            return
        if os.environ.get("DIPLOI_SUPERVISOR_MANAGED") == "1":
            deadline = time.monotonic() + timeout
            while not self.running():
                if time.monotonic() > deadline:
                    raise TransientFailure("the process supervisor is restarting; this is tried again")
                time.sleep(0.2)
            return
        with self.lock():
            if self.running():
                return
            self.write_conf()
            self.end_orphans()
            disks.mount_all(self.data_dir / "deployments")
            subprocess.run(
                [*supervisord_command(), "--configuration", str(self.conf)],
                cwd=BASE_DIR,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while not self.running():
                if time.monotonic() > deadline:
                    raise TransientFailure(f"the process supervisor did not start; see {self.dir / 'supervisord.log'}")
                time.sleep(0.1)

    @contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """The supervisor's config is loaded by one process at a time; waiting for that is bounded."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "update.lock", "w") as f:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TransientFailure(f"another update of the process supervisor took longer than {timeout:.0f} s") from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def update(self) -> None:
        """Load added, changed and removed deployment configs (what `supervisorctl update` does), for a
        caller that has written its deployment's config. Updates asked for together share reloads (a
        reload reads every program, about a second with 1,000 deployments): one that finds a reload of
        this supervisord started after it was asked for (so it read the caller's config) returns, as does
        one that finds the programs loaded as they are now."""
        asked = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        with self.lock():
            rpc = self.rpc()
            try:
                pid = rpc.getPID()
                last = self.loaded.read_text().split() if self.loaded.exists() else []
                if len(last) == 3 and last[0] == str(pid) and float(last[2]) >= asked:
                    return
                started = time.monotonic()
                digest = hashlib.sha256(self.write_programs().encode()).hexdigest()
                if last[:2] != [str(pid), digest]:
                    [[added, changed, removed]] = rpc.reloadConfig()
                    for group in removed + changed:
                        _call(rpc.stopProcessGroup, group)
                        _call(rpc.removeProcessGroup, group)
                    for group in changed + added:
                        _call(rpc.addProcessGroup, group)
            except (OSError, http.client.HTTPException) as e:
                raise TransientFailure(f"the process supervisor is not answering ({e})") from None
            self.loaded.write_text(f"{pid} {digest} {started}")

    def process_info(self, names: list[str] | None = None) -> dict[str, dict]:
        """Every process supervisord knows, by "group:name" (one call whatever the number); or only those
        `names` it knows (one call too: the list of them all costs supervisord about 1 KiB per process)."""
        try:
            if names is None:
                found = self.rpc().getAllProcessInfo()
            else:
                calls = [{"methodName": "supervisor.getProcessInfo", "params": [name]} for name in names]
                found = [r for r in rpc_at(self.sock, "system").multicall(calls) if "faultCode" not in r]  # else: unknown
            return {f"{p['group']}:{p['name']}": p for p in found}
        except (OSError, http.client.HTTPException) as e:
            raise TransientFailure(f"the process supervisor is not answering ({e})") from None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop supervisord and every process it runs; returns when supervisord has exited."""
        if not self.running():
            return
        pidfile = self.dir / "supervisord.pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        self.rpc().shutdown()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.running() or (pid and _alive(pid))):
            time.sleep(0.1)

    def start_group(self, group: str) -> None:
        _call(self.rpc().startProcessGroup, group, False)

    def stop_group(self, group: str) -> None:
        _call(self.rpc().stopProcessGroup, group)

    def restart_process(self, name: str) -> None:
        rpc = self.rpc()
        _call(rpc.stopProcess, name)
        _call(rpc.startProcess, name, False)

    def groups_with_prefix(self, prefix: str) -> list[str]:
        return sorted({name.split(":")[0] for name in self.process_info() if name.startswith(prefix)})


def _call(method, *args) -> None:
    try:
        method(*args)
    except xmlrpc.client.Fault as e:
        # Already in the wanted state (not running, already added, gone): nothing to do.
        if e.faultString.split(":")[0] not in ("NOT_RUNNING", "ALREADY_ADDED", "BAD_NAME", "STILL_RUNNING"):
            raise


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _open_files_allowed() -> int:
    """As many open files as this machine lets supervisord have (up to 65,536): it holds each program's
    pipes and log files, a few thousand with 1,000 deployments, where the usual default allows 1,024."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)


def supervisord_command() -> list[str]:
    """supervisord, as supervisor_daemon.py runs it (writing its answers in large pieces). -P: the script's
    folder is not put on the import path (this module would stand in for the supervisor package)."""
    return [sys.executable, "-P", str(Path(__file__).with_name("supervisor_daemon.py"))]
