"""The local runtime: every component and add-on is a process supervised by supervisord.

Layout under DIPLOI_DATA_DIR/deployments/<project>.<deployment>/:
  code/                  development: the branch's checkout (persistent, edited over SSH)
  releases/<commit>/     staging/production: immutable releases made by build()
  scratch/<service>/     a fresh copy of the release, remade at every start
  storage/<service>/<volume>/   persistent volumes of add-ons
  logs/<service>.log     output of each process
  run/<service>.json     what local_exec.py runs (env included, mode 0600)
  ports.json             host ports allocated to the deployment (stable across applies)
  supervisor.conf        the deployment's programs, included by supervisord
"""

import contextlib
import grp
import hashlib
import json
import os
import pty
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import psutil
from django.conf import settings

from deployments.runtimes.base import (
    BuildFailed,
    Colour,
    DeploymentSpec,
    ItemState,
    Observation,
    Progress,
    Runtime,
    RuntimeFailure,
    ServiceSpec,
    SocketTunnel,
    TransientFailure,
    Unreachable,
    forward_candidates,
    imported_env,
    render,
)
from deployments.runtimes.supervisor import BASE_DIR, Supervisor
from diploi.embedded_redis import server_binary
from projects.git import GitError, run_git

EXEC = BASE_DIR / "deployments" / "runtimes" / "local_exec.py"
KEEP_RELEASES = 3
HEALTH_TIMEOUT = 1.0
_STATE_COLOUR = {
    "RUNNING": Colour.GREEN,
    "STARTING": Colour.PENDING,
    "BACKOFF": Colour.YELLOW,
    "STOPPING": Colour.PENDING,
    "STOPPED": Colour.PENDING,
    "EXITED": Colour.RED,
    "FATAL": Colour.RED,
    "UNKNOWN": Colour.RED,
}


def postgres_bin_dir() -> Path | None:
    """Where the machine's initdb/postgres live, if PostgreSQL is installed."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return candidates[-1].parent if candidates else None


class LocalRuntime(Runtime):
    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir or settings.DATA_DIR)
        self.supervisor = Supervisor(self.data_dir)
        self._cpu_cache: dict[int, psutil.Process] = {}  # cpu_percent() compares with the previous call

    # --- layout -------------------------------------------------------------------------------

    def home(self, spec: DeploymentSpec) -> Path:
        return self.data_dir / "deployments" / f"{spec.project_slug}.{spec.slug}"

    @staticmethod
    def program(spec: DeploymentSpec, identifier: str) -> str:
        return f"d{spec.id}-{identifier}"

    def log_file(self, spec: DeploymentSpec, identifier: str) -> Path:
        return self.home(spec) / "logs" / f"{identifier}.log"

    def volume_dir(self, spec: DeploymentSpec, service: ServiceSpec, volume: str) -> Path:
        return self.home(spec) / "storage" / service.identifier / volume

    def _cwd(self, spec: DeploymentSpec, service: ServiceSpec) -> Path:
        home = self.home(spec)
        if service.kind == "addon":
            return home / "storage" / service.identifier
        if spec.stage == "development":
            return home / "code" / service.folder
        return home / "scratch" / service.identifier / service.folder

    # --- apply --------------------------------------------------------------------------------

    def apply(self, spec: DeploymentSpec) -> dict[str, str]:
        self.supervisor.ensure_running()
        home = self.home(spec)
        for sub in ("logs", "run"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        ports = self._ports(spec)
        if spec.stage == "development":
            self._checkout(spec)
        elif not spec.release or not (home / "releases" / spec.release).is_dir():
            raise RuntimeFailure("there is no release to run yet; build one first")

        self._check_ports(spec, ports)
        problems: dict[str, str] = {}
        programs: list[str] = []
        for service in spec.services:
            if problem := self._requirement_problem(spec, service):
                problems[service.identifier] = problem
                continue
            programs.append(self._program_conf(spec, service, ports))
        _write(home / "problems.json", json.dumps(problems))
        _write(home / "supervisor.conf", "\n".join(programs))
        self.supervisor.update()
        self._start_or_stop(spec, spec.enabled)
        return self._endpoints(spec, ports)

    def _program_conf(self, spec: DeploymentSpec, service: ServiceSpec, ports: dict[str, dict[str, int]]) -> str:
        home = self.home(spec)
        run = self._run_file(spec, service, ports)
        run_path = home / "run" / f"{service.identifier}.json"
        _write(run_path, json.dumps(run, sort_keys=True), mode=0o600)
        if user := run.get("user"):
            for path in (home / "storage" / service.identifier, *(self.volume_dir(spec, service, v.name) for v in service.volumes)):
                shutil.chown(path, user, user)
        # The digest of the run file is part of the config, so supervisord restarts a service
        # exactly when what it runs (command, env, release) changed.
        digest = hashlib.sha256(run_path.read_bytes()).hexdigest()[:16]
        return f"""\
[program:{self.program(spec, service.identifier)}]
command={sys.executable} {EXEC} {run_path}
directory={home}
environment=DIPLOI_RUN_DIGEST="{digest}"
autostart={"true" if spec.enabled else "false"}
autorestart=true
startsecs=1
startretries=5
stopasgroup=true
killasgroup=true
stopwaitsecs=10
stdout_logfile={self.log_file(spec, service.identifier)}
stdout_logfile_maxbytes=10MB
stdout_logfile_backups=2
redirect_stderr=true
priority={100 if service.kind == "addon" else 200}
"""

    def _run_file(self, spec: DeploymentSpec, service: ServiceSpec, ports: dict[str, dict[str, int]]) -> dict:
        cwd = self._cwd(spec, service)
        for volume in service.volumes:
            self.volume_dir(spec, service, volume.name).mkdir(parents=True, exist_ok=True)
        cwd.parent.mkdir(parents=True, exist_ok=True)
        ctx = self._context(spec, service, ports)
        command_key = "development" if spec.stage == "development" and "development" in service.commands else "start"
        run = {
            "cwd": str(cwd),
            "command": render(service.commands[command_key], ctx, quote=True),
            "env": self._env(spec, service, ports),
            "before": [render(service.commands["install"], ctx, quote=True)] if service.kind == "addon" and "install" in service.commands else [],
        }
        if user := self._unprivileged_user(service):
            run["user"] = user
        if service.kind == "component" and spec.stage != "development":
            run["fresh_from"] = str(self.home(spec) / "releases" / spec.release)
            run["scratch"] = str(self.home(spec) / "scratch" / service.identifier)
        return run

    def _context(self, spec: DeploymentSpec, service: ServiceSpec, ports: dict[str, dict[str, int]]) -> dict[str, str]:
        own = ports.get(service.identifier, {})
        ctx = {
            "host": "127.0.0.1",
            "port": str(next(iter(own.values()), "")),
            "password": service.password,
            "code": str(self._cwd(spec, service)),
            "identifier": service.identifier,
            "deployment": spec.slug,
            "stage": spec.stage,
        }
        ctx.update({f"port.{name}": str(port) for name, port in own.items()})
        ctx.update({f"storage.{v.name}": str(self.volume_dir(spec, service, v.name)) for v in service.volumes})
        return ctx

    def _env(self, spec: DeploymentSpec, service: ServiceSpec, ports: dict[str, dict[str, int]]) -> dict[str, str]:
        """The process environment: a clean base (no platform secrets), the service's own values,
        and what it imports from other services, rendered with their addresses."""
        venv_bin = str(Path(sys.executable).parent)
        path_dirs = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(":") if d and d != venv_bin]
        extra = [str(server_binary().parent)] + ([str(pg)] if (pg := postgres_bin_dir()) else [])
        env = {
            "PATH": ":".join(extra + path_dirs),
            "HOME": str(self.home(spec)),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
            "HOST": "127.0.0.1",
            "DIPLOI_HOME": str(self.home(spec)),
        }
        own = ports.get(service.identifier, {})
        if own:
            env["PORT"] = str(next(iter(own.values())))
        env.update(service.env)
        env.update(imported_env(spec, service, lambda source: self._context(spec, source, ports)))
        return env

    def _ports(self, spec: DeploymentSpec) -> dict[str, dict[str, int]]:
        """Host ports per service and port name, allocated once and kept in ports.json."""
        path = self.home(spec) / "ports.json"
        ports: dict[str, dict[str, int]] = json.loads(path.read_text()) if path.exists() else {}
        taken = {p for f in (self.data_dir / "deployments").glob("*/ports.json") for svc in json.loads(f.read_text()).values() for p in svc.values()}
        changed = False
        for service in spec.services:
            own = ports.setdefault(service.identifier, {})
            for port in service.ports:
                if port.name not in own:
                    own[port.name] = _free_port(taken)
                    taken.add(own[port.name])
                    changed = True
        if changed:
            _write(path, json.dumps(ports))
        return ports

    def _check_ports(self, spec: DeploymentSpec, ports: dict[str, dict[str, int]]) -> None:
        """A port of a service that is not running must be free, or its start would fail obscurely."""
        info = self.supervisor.process_info()
        for service in spec.services:
            name = self.program(spec, service.identifier)
            if info.get(f"{name}:{name}", {}).get("statename") in ("RUNNING", "STARTING", "BACKOFF"):
                continue
            for port_name, port in ports.get(service.identifier, {}).items():
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind(("127.0.0.1", port))
                    except OSError:
                        raise RuntimeFailure(
                            f"port {port} ({service.identifier}/{port_name}) is in use by another program on this machine; "
                            f"stop that program and try again"
                        ) from None

    def _endpoints(self, spec: DeploymentSpec, ports: dict[str, dict[str, int]]) -> dict[str, str]:
        endpoints = {}
        for service in spec.services:
            public = [p for p in service.ports if p.public]
            if service.kind == "component" and public:
                endpoints[service.identifier] = f"http://{settings.DIPLOI_PUBLIC_HOST}:{ports[service.identifier][public[0].name]}"
        return endpoints

    def _checkout(self, spec: DeploymentSpec) -> None:
        code = self.home(spec) / "code"
        if (code / ".git").exists():
            self._switch_branch(code, spec.branch)
            return  # otherwise the code is the developer's: it survives every apply
        tmp = code.with_name("code.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            run_git("clone", "--quiet", "--branch", spec.branch, "--", spec.repository, str(tmp), timeout=600)
            if spec.commit:
                run_git("checkout", "--quiet", spec.commit, cwd=tmp)
                run_git("checkout", "--quiet", "-B", spec.branch, cwd=tmp)
        except GitError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeFailure(f"could not check out {spec.branch}: {e}") from None
        tmp.rename(code)

    def _requirement_problem(self, spec: DeploymentSpec, service: ServiceSpec) -> str | None:
        if service.package == "postgres" and postgres_bin_dir() is None:
            return "PostgreSQL is not installed on this machine (initdb and postgres were not found)"
        user = self._unprivileged_user(service)
        if user:
            if blocked := _first_untraversable(self.home(spec), user):
                return (f"PostgreSQL refuses to run as root, and the user “{user}” cannot reach {blocked}; "
                        f"allow it (chmod o+x {blocked}) or run Diploi as a regular user")  # fmt: skip
        return None

    @staticmethod
    def _switch_branch(code: Path, branch: str) -> None:
        """Follow a new branch; refuse rather than lose uncommitted edits."""
        current = run_git("rev-parse", "--abbrev-ref", "HEAD", cwd=code).decode().strip()
        if current == branch:
            return
        if run_git("status", "--porcelain", cwd=code).strip():
            raise RuntimeFailure(
                f"the code has uncommitted changes on {current}; commit or discard them (over SSH) before switching to {branch}"
            )
        try:
            run_git("fetch", "--quiet", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}", cwd=code, timeout=600)
            run_git("checkout", "--quiet", "-B", branch, f"origin/{branch}", cwd=code)
        except GitError as e:
            raise RuntimeFailure(f"could not check out {branch}: {e}") from None

    @staticmethod
    def _unprivileged_user(service: ServiceSpec) -> str | None:
        """PostgreSQL refuses to run as root: when Diploi runs as root, the add-on runs as `postgres`."""
        if os.geteuid() != 0 or service.package != "postgres":
            return None
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        return None

    def _service_names(self, spec: DeploymentSpec) -> list[str]:
        prefix = f"d{spec.id}-"
        return [name for name in self.supervisor.process_info() if name.startswith(prefix)]

    def _start_or_stop(self, spec: DeploymentSpec, on: bool) -> None:
        rpc = self.supervisor.rpc()
        for name in self._service_names(spec):
            group = name.split(":")[0]
            if on:
                Supervisor._call(rpc.startProcessGroup, group, False)
            else:
                Supervisor._call(rpc.stopProcessGroup, group)

    # --- build --------------------------------------------------------------------------------

    def build(self, spec: DeploymentSpec, progress: Progress) -> str:
        releases = self.home(spec) / "releases"
        releases.mkdir(parents=True, exist_ok=True)
        tmp = releases / f".{spec.commit}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            progress("clone", 0, f"Checking out {spec.commit[:10]} of {spec.branch}")
            try:
                run_git("clone", "--quiet", "--no-checkout", "--", spec.repository, str(tmp), timeout=600)
                run_git("checkout", "--quiet", "--detach", spec.commit, cwd=tmp)
            except GitError as e:
                raise BuildFailed("clone", str(e)) from None
            shutil.rmtree(tmp / ".git")
            progress("clone", 25, "Checked out")

            ports = self._ports(spec)
            for step, start, end in (("install", 25, 50), ("build", 50, 90)):
                components = [s for s in spec.services if s.kind == "component" and s.commands.get(step)]
                progress(step, start, None if components else f"Nothing to {step}")
                for i, service in enumerate(components):
                    command = render(service.commands[step], self._context(spec, service, ports), quote=True)
                    self._build_command(step, service, command, tmp / service.folder, self._env(spec, service, ports), progress,
                                        start + (end - start) * i // len(components))  # fmt: skip
                progress(step, end)

            progress("release", 90, "Storing the release")
            final = releases / spec.commit
            if final.exists():
                old = releases / f".{spec.commit}.old"
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(final)
            self._prune_releases(spec, keep={spec.commit, spec.release})
            progress("release", 100, f"Release {spec.commit[:10]} ready")
            return spec.commit
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _build_command(self, step: str, service: ServiceSpec, command: str, cwd: Path, env: dict[str, str], progress: Progress, percent: int) -> None:
        progress(step, percent, f"$ {command}   ({service.identifier})")
        proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        assert proc.stdout
        for raw in proc.stdout:
            progress(step, percent, raw.decode(errors="replace").rstrip("\n"))
        if proc.wait() != 0:
            raise BuildFailed(step, f"`{command}` in {service.identifier} exited with code {proc.returncode}")

    def _prune_releases(self, spec: DeploymentSpec, keep: set[str]) -> None:
        releases = sorted((p for p in (self.home(spec) / "releases").iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        for old in releases[:-KEEP_RELEASES]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    # --- operate ------------------------------------------------------------------------------

    def set_enabled(self, spec: DeploymentSpec, enabled: bool) -> None:
        if spec.services:
            self.apply(DeploymentSpec(**{**spec.__dict__, "enabled": enabled}))
        else:
            self._start_or_stop(spec, enabled)

    def restart(self, spec: DeploymentSpec, service: str) -> None:
        spec.service(service)
        name = self.program(spec, service)
        rpc = self.supervisor.rpc()
        Supervisor._call(rpc.stopProcess, f"{name}:{name}")
        Supervisor._call(rpc.startProcess, f"{name}:{name}", False)

    def copy_storage(self, source: DeploymentSpec, target: DeploymentSpec) -> None:
        parts = ["storage"] + (["code"] if target.stage == "development" and source.stage == "development" else [])
        for part in parts:
            src, dst = self.home(source) / part, self.home(target) / part
            if not src.is_dir() or dst.exists():
                continue
            tmp = dst.with_name(f".{part}.copy")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, symlinks=True)
            tmp.rename(dst)

    def destroy(self, spec: DeploymentSpec) -> None:
        home = self.home(spec)
        if self.supervisor.running():
            rpc = self.supervisor.rpc()
            for name in self._service_names(spec):
                Supervisor._call(rpc.stopProcessGroup, name.split(":")[0])
        conf = home / "supervisor.conf"
        if conf.exists():
            conf.unlink()
            if self.supervisor.running():
                self.supervisor.update()
        _kill_processes_of(home)
        shutil.rmtree(home, ignore_errors=True)
        if home.exists():  # something was still writing into it
            _kill_processes_of(home)
            shutil.rmtree(home)

    # --- observe ------------------------------------------------------------------------------

    def observe(self, specs: list[DeploymentSpec]) -> dict[int, Observation]:
        try:
            info: dict[str, dict] | None = self.supervisor.process_info()
        except TransientFailure:
            info = None  # every container is reported red below, with the reason
        restarts_file = self.supervisor.restarts_file
        restarts = json.loads(restarts_file.read_text()) if restarts_file.exists() else {}
        checks: list[tuple[int, ServiceSpec, str]] = []
        partial: dict[int, dict] = {}
        for spec in specs:
            home = self.home(spec)
            problems = json.loads((home / "problems.json").read_text()) if (home / "problems.json").exists() else {}
            ports = json.loads((home / "ports.json").read_text()) if (home / "ports.json").exists() else {}
            containers, storage = [], []
            for service in spec.services:
                name = self.program(spec, service.identifier)
                proc = (info or {}).get(f"{name}:{name}")
                problem = problems.get(service.identifier) or (None if info is not None else "the process supervisor is not running")
                containers.append(self._container_state(service, proc, problem, restarts.get(f"{name}:{name}", 0), spec.enabled))
                for volume in service.volumes:
                    storage.append(_volume_state(f"{service.identifier}/{volume.name}", self.volume_dir(spec, service, volume.name)))
                if proc and proc["statename"] == "RUNNING" and service.ports:
                    port = ports.get(service.identifier, {}).get(service.ports[0].name)
                    if port:
                        checks.append((spec.id, service, f"127.0.0.1:{port}"))
            partial[spec.id] = {"containers": containers, "storage": storage, "services": {}}
        with ThreadPoolExecutor(max_workers=16) as pool:
            for (spec_id, service, address), state in zip(checks, pool.map(lambda c: _health(c[1], c[2]), checks)):
                partial[spec_id]["services"][service.identifier] = state
        result = {}
        for spec in specs:
            p = partial[spec.id]
            services = tuple(
                p["services"].get(s.identifier) or ItemState(s.identifier, Colour.PENDING if not spec.enabled else Colour.RED, "stopped" if not spec.enabled else "not running")
                for s in spec.services
            )
            result[spec.id] = Observation(storage=tuple(p["storage"]), containers=tuple(p["containers"]), services=services)
        return result

    def _container_state(self, service: ServiceSpec, proc: dict | None, problem: str | None, restarts: int, enabled: bool) -> ItemState:
        if problem:
            return ItemState(service.identifier, Colour.RED, problem)
        if proc is None:
            return ItemState(service.identifier, Colour.PENDING, "not created yet")
        state = proc["statename"]
        colour = _STATE_COLOUR.get(state, Colour.RED)
        if state == "STOPPED" and enabled:
            colour = Colour.RED
        message = state.lower()
        if state in ("FATAL", "BACKOFF", "EXITED"):
            message = f"{state.lower()}: {proc.get('spawnerr') or proc.get('description') or 'exited'}"
        if restarts and state == "RUNNING":
            colour = Colour.GREEN
            message = f"running, restarted {restarts}×"
        cpu = memory = None
        if state == "RUNNING" and proc.get("pid"):
            cpu, memory = self._usage(proc["pid"])
        return ItemState(service.identifier, colour, message, restarts=restarts, cpu_percent=cpu, memory_bytes=memory,
                         started_at=float(proc["start"]) if state == "RUNNING" else None)  # fmt: skip

    def _usage(self, pid: int) -> tuple[float | None, int | None]:
        """CPU % and resident memory of a process and its children (a service may fork workers)."""
        try:
            root = self._cached(pid)
            tree = [root, *(self._cached(c.pid) for c in root.children(recursive=True))]
        except psutil.Error:
            return None, None
        cpu = memory = 0
        for p in tree:
            try:
                cpu += p.cpu_percent(None)
                memory += p.memory_info().rss
            except psutil.Error:
                continue
        return round(cpu, 1), memory

    def _cached(self, pid: int) -> psutil.Process:
        p = self._cpu_cache.get(pid)
        if p is None or not p.is_running():
            p = self._cpu_cache[pid] = psutil.Process(pid)
        return p

    # --- logs and shells ----------------------------------------------------------------------

    def logs(self, spec: DeploymentSpec, service: str, follow: bool = False, since: int | None = None, tail: int = 200,
             stop: threading.Event | None = None) -> Iterator[str]:  # fmt: skip
        """Lines of the service's output: the last `tail` ones, or those after byte offset `since`;
        with `follow`, then every new line as it is written, until `stop` is set."""
        spec.service(service)
        path = self.log_file(spec, service)
        stop = stop or threading.Event()
        while not path.exists():
            if not follow or stop.wait(0.2):
                return
        with open(path, "rb") as f:
            if since is not None:
                f.seek(since)
                lines = f.read().splitlines()
            else:
                lines = _tail(f, tail)
            for line in lines:
                yield line.decode(errors="replace")
            if not follow:
                return
            buffer = b""
            while not stop.is_set():
                chunk = f.readline()
                if not chunk:
                    if path.stat().st_size < f.tell():  # rotated by supervisord
                        f.seek(0)
                    stop.wait(0.2)
                    continue
                buffer += chunk
                if buffer.endswith(b"\n"):
                    yield buffer.rstrip(b"\n").decode(errors="replace")
                    buffer = b""

    def open_shell(self, spec: DeploymentSpec, service: str, command: str | None, pty: bool) -> "LocalShell":
        svc = spec.service(service)
        ports = self._ports(spec)
        cwd = self._cwd(spec, svc)
        if not cwd.is_dir():
            raise RuntimeFailure(f"{service} has no working directory yet; is the deployment running?")
        argv = ["/bin/sh", "-c", command] if command else ["/bin/sh", "-i" if pty else "-s"]
        return LocalShell(argv, cwd, self._env(spec, svc, ports), pty)

    def files_root(self, spec: DeploymentSpec, service: str) -> Path:
        svc = spec.service(service)
        home = self.home(spec)
        if svc.kind == "component" and spec.stage == "development":
            root = home / "code"
        elif svc.kind == "component":
            root = home / "scratch" / svc.identifier
        else:
            root = home / "storage" / svc.identifier
        if not root.is_dir():
            raise RuntimeFailure(f"{service} has no files yet; is the deployment running?")
        return root

    def open_forward(self, spec: DeploymentSpec, service: str, host: str, port: int) -> SocketTunnel:
        """The declared port is the deployment's own allocated port on this machine."""
        ports = self._ports(spec)
        for svc, declared in forward_candidates(spec, service, host, port):
            if declared.name in ports.get(svc.identifier, {}):
                try:
                    sock = socket.create_connection(("127.0.0.1", ports[svc.identifier][declared.name]), timeout=10)
                except OSError as e:
                    raise Unreachable(f"{host}:{port} is not answering: {e}") from None
                sock.settimeout(None)
                return SocketTunnel(sock)
        raise RuntimeFailure(f"{host}:{port} is not a port of this deployment")


class LocalShell:
    """A process in a service's directory and environment, with or without a terminal."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], use_pty: bool) -> None:
        env = {**env, "TERM": env.get("TERM", "xterm-256color")}
        if use_pty:
            self._master, slave = pty.openpty()
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
            os.close(slave)
        else:
            self._master = None
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def write(self, data: bytes) -> None:
        if self._master is not None:
            os.write(self._master, data)
        else:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self._master is None and self.proc.stdin:
            self.proc.stdin.close()

    def read(self, size: int = 65536) -> bytes:
        if self._master is not None:
            try:
                return os.read(self._master, size)
            except OSError:  # the terminal closed: the process is gone
                return b""
        return self.proc.stdout.read1(size)

    def read_stderr(self, size: int = 65536) -> bytes:
        return b"" if self._master is not None else self.proc.stderr.read1(size)

    def resize(self, columns: int, rows: int) -> None:
        if self._master is not None:
            import fcntl
            import struct
            import termios

            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> int:
        """Wait for the process (killing its group after a grace period) and return its exit status."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        if self._master is not None:
            os.close(self._master)
            self._master = None
        return code


# --- helpers ----------------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Atomic write: readers (supervisord, local_exec) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _first_untraversable(path: Path, user: str) -> Path | None:
    """The first directory above `path` that `user` may not enter, if any."""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid in groups:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return parent
    return None


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def _tail(f, lines: int) -> list[bytes]:
    """The last `lines` lines of an open file, leaving it positioned at the end."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if lines <= 0:
        return []
    size = min(end, 64 * 1024)
    while True:
        f.seek(end - size)
        chunk = f.read(size)
        found = chunk.splitlines()
        if len(found) > lines or size == end:
            f.seek(end)
            return found[-lines:]
        size = min(end, size * 4)


def _volume_state(name: str, path: Path) -> ItemState:
    if not path.is_dir():
        return ItemState(name, Colour.RED, "missing")
    used, count = 0, 0
    for root, _, files in os.walk(path):
        for file in files:
            count += 1
            if count > 20000:
                return ItemState(name, Colour.GREEN, f"present, more than {_size(used)} used")
            try:
                used += os.lstat(os.path.join(root, file)).st_size
            except OSError:
                pass
    return ItemState(name, Colour.GREEN, f"present, {_size(used)} used")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _health(service: ServiceSpec, address: str) -> ItemState:
    host, port = address.rsplit(":", 1)
    path = service.health.get("http") if isinstance(service.health, dict) else None
    if path:
        try:
            with urllib.request.urlopen(f"http://{address}{path}", timeout=HEALTH_TIMEOUT) as r:
                return ItemState(service.identifier, Colour.GREEN, f"HTTP {r.status} on {path}")
        except urllib.error.HTTPError as e:
            colour = Colour.YELLOW if e.code >= 500 else Colour.GREEN
            return ItemState(service.identifier, colour, f"HTTP {e.code} on {path}")
        except (urllib.error.URLError, OSError) as e:
            return ItemState(service.identifier, Colour.RED, f"not answering on port {port} ({getattr(e, 'reason', e)})")
    try:
        with socket.create_connection((host, int(port)), timeout=HEALTH_TIMEOUT):
            return ItemState(service.identifier, Colour.GREEN, f"accepting connections on port {port}")
    except OSError as e:
        return ItemState(service.identifier, Colour.RED, f"not accepting connections on port {port} ({e.strerror or e})")


def processes_of(home: Path) -> list[psutil.Process]:
    """Processes that run for the deployment at `home`: by their environment, or by their working
    directory (some servers, Valkey among them, overwrite their environment with their title)."""
    marker = str(home)
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get("DIPLOI_HOME") == marker or (p.cwd() + "/").startswith(marker + "/"):
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def _kill_processes_of(home: Path) -> None:
    """Safety net for destroy: kill any process that still runs for this deployment."""
    for p in processes_of(home):
        try:
            p.kill()
        except psutil.Error:
            pass
