"""`manage.py up`: every process of the platform on one machine, stopped together.

Each child runs in its own process group. On SIGINT/SIGTERM (or when any child dies) every child is
asked to stop with SIGTERM, given a bounded grace period, and then its whole process group is
killed, so nothing outlives the launcher (daphne, for one, may ignore SIGTERM under load).
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deployments.management import embedded_redis

PR_SET_PDEATHSIG = 1
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
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    pump: threading.Thread | None = field(default=None, repr=False)

    def start(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def start_pump(self) -> None:
        def pump() -> None:
            assert self.proc and self.proc.stdout
            for raw in self.proc.stdout:
                say(self.name, raw.decode(errors="replace").rstrip())

        self.pump = threading.Thread(target=pump, name=f"pump-{self.name}", daemon=True)
        self.pump.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """Kill whatever is left in the child's process group, the child included."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


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


def wait_for_port(host: str, port: int, child: Child, stopping: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        if not child.alive():
            raise LaunchError(f"{child.name} exited before it was ready")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    if stopping():
        return
    raise LaunchError(f"{child.name} did not listen on {host}:{port} within {timeout:.0f} s")


class Launcher:
    def __init__(self, host: str, port: int, data_dir: Path, grace: float, extra: list[tuple[str, list[str]]]) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.grace = grace
        self.extra = extra
        self.base_dir = Path(__file__).resolve().parents[2]  # where manage.py is
        self.children: list[Child] = []
        # Set from the signal handler; a threading.Event would deadlock there (its lock is not reentrant).
        self.stopping = False

    def manage(self, *args: str) -> list[str]:
        return [sys.executable, str(self.base_dir / "manage.py"), *args]

    def run(self) -> int:
        if port_in_use(self.host, self.port):
            raise LaunchError(
                f"Port {self.port} on {self.host} is already in use (is Diploi already running?). "
                f"Stop that process or choose another port: uv run manage.py up --port {self.port + 1}"
            )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

        env = dict(os.environ, DIPLOI_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1")
        shown_host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0") else self.host
        url = f"http://{shown_host}:{self.port}/"
        env.setdefault("DIPLOI_SITE_URL", url.rstrip("/"))
        try:
            if not env.get("REDIS_URL"):
                redis_port, password = free_port(), embedded_redis.new_password()
                redis_dir = self.data_dir / "redis"
                redis = Child("redis", embedded_redis.redis_command(redis_port, redis_dir, password=password))
                self._start(redis, env)
                env["REDIS_URL"] = embedded_redis.url_with_password(redis_port, password)
                embedded_redis.wait_until_ready(env["REDIS_URL"], redis.proc)
                url_file = redis_dir / "url"
                url_file.write_text(env["REDIS_URL"] + "\n")
                url_file.chmod(0o600)
                say("up", f"embedded Redis on port {redis_port}, with a password; REDIS_URL=$(cat {url_file})")
            for step in (["migrate", "--noinput"], ["bootstrap"]):
                result = subprocess.run(self.manage(*step), env=env, cwd=self.base_dir, capture_output=True, text=True)
                for line in (result.stdout + result.stderr).splitlines():
                    say(step[0], line)
                if result.returncode != 0:
                    raise LaunchError(f"manage.py {step[0]} failed with exit code {result.returncode}")
                if self.stopping:
                    return 0

            self._start_supervisor(env)
            web = Child("web", [sys.executable, "-m", "daphne", "-b", self.host, "-p", str(self.port), "diploi.asgi:application"])
            processes = [
                web,
                Child("worker", [sys.executable, "-m", "celery", "-A", "diploi", "worker", "--loglevel", "INFO", "--concurrency", "2"]),
                *(Child(name, self.manage(*argv)) for name, argv in self.extra),
            ]
            for child in processes:
                self._start(child, env)
            wait_for_port(self.host, self.port, web, lambda: self.stopping)
            say("up", f"Diploi is running at {url}  (Ctrl-C to stop)")

            while not self.stopping:
                time.sleep(0.2)
                for child in self.children:
                    if not child.alive():
                        say("up", f"{child.name} exited with code {child.proc.returncode}; stopping everything")
                        return 1
            return 0
        finally:
            self.shutdown()

    def _start_supervisor(self, env: dict[str, str]) -> None:
        """The process supervisor that runs the deployments starts first, so that the worker finds it."""
        from deployments.runtimes.local.supervisor import Supervisor

        supervisor = Supervisor(self.data_dir)
        if supervisor.running():
            say("up", "using the process supervisor already running for this data directory (it stays when Diploi stops)")
            return
        agent = Child("agent", supervisor.foreground_command())
        self._start(agent, env)
        deadline = time.monotonic() + 30
        while not supervisor.running():
            if not agent.alive() or time.monotonic() > deadline:
                raise LaunchError(f"the process supervisor did not start; see {supervisor.dir / 'supervisord.log'}")
            time.sleep(0.1)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _start(self, child: Child, env: dict[str, str]) -> None:
        child.start(env, self.base_dir)
        child.start_pump()
        self.children.append(child)

    def shutdown(self) -> None:
        """SIGTERM to every child, a bounded wait, then SIGKILL to each process group. Redis goes last
        so that the worker can still acknowledge its tasks while it stops."""
        # Every process in the tree now, so that nothing a child started can outlive the launcher.
        tree = [p for c in self.children if c.alive() for p in _descendants(c.proc.pid)]
        by_name = {c.name: c for c in self.children}
        # Web and worker first; then the supervisor, which stops the deployments (with more time);
        # Redis last, so that the worker can still acknowledge its tasks while it stops.
        self._stop([c for c in self.children if c.name not in ("agent", "redis")], self.grace)
        self._stop([by_name["agent"]] if "agent" in by_name else [], self.grace + 15)
        self._stop([by_name["redis"]] if "redis" in by_name else [], self.grace)
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        for child in self.children:
            if child.pump:
                child.pump.join(timeout=2)
        if self.children:
            say("up", "stopped")

    def _stop(self, batch: list[Child], grace: float) -> None:
        for child in batch:
            child.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.alive() for c in batch):
            time.sleep(0.1)
        for child in batch:
            if child.alive():
                say("up", f"{child.name} did not stop within {grace:.0f} s; killing it")
            child.kill_group()
