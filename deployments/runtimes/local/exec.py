"""What supervisord runs for each local service: prepare, run the service's command, clean up after it.

Reads the service's run file (JSON, mode 0600, written by programs.py) so that env values never pass
through supervisord's config syntax; when the deployment is confined, the commands run inside its
sandbox (the bubblewrap arguments in the run file) under its own uid. For releases it first makes a
fresh scratch copy, so every start begins from the immutable release. It writes the service's output to
its log file itself (rotated at LOG_MAX_BYTES, LOG_BACKUPS kept): through supervisord, every line woke the
one process that supervises every deployment, and a chatty service slowed them all. The command runs in
a process group of its own; when it exits, whatever it left behind in that group is killed, so that no
stray process keeps the service's port when supervisord starts it again.
"""

import contextlib
import ctypes
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE = 7  # seconds; supervisord's stopwaitsecs is 10


def _preexec(user: str | None, cgroups: list[str]):
    """In the service's process: die with the wrapper; drop to `user` when one is named (the wrapper
    itself stays root so it can read its run file and clean up). A sandboxed service drops to its
    deployment's uid inside the sandbox instead."""
    entry = pwd.getpwnam(user) if user else None
    uid, gid = (entry.pw_uid, entry.pw_gid) if entry else (None, None)

    def setup() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for path in cgroups:  # the deployment's limits, for this process and all it starts
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0")
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    return setup


def main(run_file: str) -> int:
    # Signal handlers go in before the child exists: a stop that arrives while it is being spawned
    # must still reach it (`sh -c` forks the real server, which the death signal does not cover).
    stop_requested: list[float] = []

    def on_stop(signum: int, frame: object) -> None:
        if not stop_requested:
            stop_requested.append(time.monotonic())
        if child is not None:
            _signal(child, signum)

    child: subprocess.Popen | Adopted | None = None
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, on_stop)
    # When supervisord dies, stop as if it had asked: a restarted supervisord must find the port
    # free and the service not running unsupervised (it also ends any wrapper still left).
    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        return 1
    with open(run_file) as f:
        run = json.load(f)
    adopting = bool(run.get("container"))
    if adopting:
        # podman's conmon leaves its parent: it stays below this wrapper, with the container's processes
        # (the service's CPU and memory are its process tree's), and is reaped here (_reap)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    pump = _output_to(run["log"], run.get("own_ports")) if run.get("log") else None
    env = run.get("outer_env") or run["env"]  # sandboxed, the command's own is read inside (sandbox.OUTER_ENV)
    preexec = _preexec(run.get("user"), run.get("cgroups", []))
    sandbox = run.get("sandbox", [])  # bubblewrap's arguments up to the command, when confined
    if run.get("fresh_from"):
        shutil.rmtree(run["scratch"], ignore_errors=True)
        if run.get("copy"):  # confined: copied inside the deployment's sandbox, as its uid (its build wrote the release)
            os.mkdir(run["scratch"], 0o755)
            if run.get("owner") is not None:
                os.chown(run["scratch"], run["owner"], run["owner"])
            code = subprocess.run(run["copy"], env=env, preexec_fn=preexec).returncode
            if code != 0:
                print(f"diploi: copying the release failed with exit code {code}", flush=True)
                return _ended(code, pump)
        else:
            shutil.copytree(run["fresh_from"], run["scratch"], symlinks=True)
    # Sandboxed, bubblewrap (root) starts from "/" and enters the folder inside (--chdir): the platform
    # never works from a folder the tenant can write (programs.py made it, without following links).
    cwd = "/" if sandbox else run["cwd"]
    if not sandbox:
        os.makedirs(cwd, exist_ok=True)

    def prepare() -> int:
        """The preparation steps (an add-on's set-up, a development install), in order; 0 when all succeed.
        While they run, the phase file says what is happening, and after a failure that it failed (the
        Overview shows it)."""
        # (a container's steps are whole commands: podman as the deployment, containers.py)
        steps = [[*sandbox, "/bin/sh", "-c", command] for command in run.get("before", [])] + run.get("steps", [])
        phase, doing = run.get("phase") or ("", "")
        _write_phase(phase if steps else "", doing)
        for i, argv in enumerate(steps):
            if stop_requested:
                return 1
            code = subprocess.run(argv, cwd=cwd, env=env, preexec_fn=preexec).returncode
            if code != 0:
                # not the command itself: it may hold a password (the add-on's, rendered into it)
                print(f"diploi: preparation step {i + 1} failed with exit code {code}", flush=True)
                _write_phase(phase, f"{FAILED}{doing} failed (exit code {code})")
                return code
        _write_phase(phase if steps else "", None)
        return 0

    def prepared() -> int:
        """prepare(); a development install that failed is not retried in a loop (each try would fetch
        again): it waits, its failure on the Overview, until a lockfile changes (then it runs again), or
        until it is stopped or restarted."""
        code = prepare()
        lockfiles = run.get("reinstall_on", [])
        stamps = _stamps(lockfiles)
        while code and lockfiles and not stop_requested:
            time.sleep(LOOK_EVERY)
            if (now := _stamps(lockfiles)) != stamps:
                stamps = now
                print("diploi: dependencies changed; installing again", flush=True)
                code = prepare()
        return code

    def cleaned(code: int) -> None:
        """After the command: what it leaves behind outside its process group when it was killed (a
        container: podman removes it itself when it ends on its own, or stopped by a signal it passed on)."""
        if run.get("after") and code < 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(run["after"], cwd=cwd, env=env, preexec_fn=preexec, timeout=30, stdout=subprocess.DEVNULL)

    argv = run.get("argv") or [*sandbox, "/bin/sh", "-c", run["command"]]

    def start() -> subprocess.Popen | Adopted | int:
        """The command running (a container: its conmon, once `podman run -d` has started it; or the
        exit code of a start that failed)."""
        if not adopting:
            return subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec)
        pidfile = run["container"]["conmon"]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        # (its output is the container's: podman's own stdout, the container's ID, goes to the log first)
        print(f"diploi: starting the container {run['container']['name']} of {run['container']['image']}", flush=True)
        started = subprocess.run(argv, cwd=cwd, env=env, preexec_fn=preexec).returncode
        return Adopted.of(pidfile) if started == 0 else started

    if code := prepared():
        return _ended(code, pump)
    if isinstance(launched := start(), int):
        return _ended(launched, pump)
    child = launched
    if stop_requested:
        _signal(child, signal.SIGTERM)
    watched = run.get("watch")  # development: restart the command when the code changes
    lockfiles = run.get("reinstall_on", [])  # development: install again when the dependencies change
    seen = _signature(watched) if watched else None
    locked = _stamps(lockfiles)
    next_look = time.monotonic() + WATCH_INTERVAL
    while (code := _exited(child, LOOK_EVERY)) is None:
        if adopting:  # (only a subreaper has other children to collect)
            _reap(child.pid)
        # Escalate before supervisord's own SIGKILL (stopwaitsecs) would orphan the service.
        if stop_requested and time.monotonic() - stop_requested[0] > STOP_GRACE:
            _signal(child, signal.SIGKILL)
        elif (watched or lockfiles) and not stop_requested and time.monotonic() >= next_look:
            next_look = time.monotonic() + WATCH_INTERVAL
            now_seen, now_locked = (_signature(watched) if watched else None), _stamps(lockfiles)
            reinstall = now_locked != locked
            if reinstall or now_seen != seen:
                seen, locked = now_seen, now_locked
                print("diploi: dependencies changed; installing again" if reinstall else "diploi: files changed; restarting", flush=True)
                cleaned(_end(child))
                if reinstall and (code := prepared()):
                    return _ended(code, pump)
                if isinstance(launched := start(), int):
                    return _ended(launched, pump)
                child = launched
    _signal(child, signal.SIGKILL)  # whatever the service left behind
    cleaned(code)
    return _ended(code if code >= 0 else 128 - code, pump)


FAILED = "failed:"  # a phase file saying the preparation failed (observe.preparing)


def _write_phase(path: str, doing: str | None) -> None:
    """What the service's preparation is doing (None: nothing, the file goes)."""
    if not path:
        return
    if doing is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with open(path, "w") as f:
        f.write(doing)


LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 2  # <log>.1 and <log>.2, as supervisord kept them


class RotatingLog:
    """An append-only log file renamed to <log>.1 (and .1 to .2, …) once it would grow past `max_bytes`,
    as supervisord rotates: a reader following it sees a new file at the same path."""

    def __init__(self, path: str, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.max_bytes:
            self._rotate()
        while data:
            written = os.write(self.fd, data)
            self.size += written
            data = data[written:]

    def _rotate(self) -> None:
        os.close(self.fd)
        for i in range(self.backups, 0, -1):
            older = f"{self.path}.{i - 1}" if i > 1 else self.path
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0


# What a server prints when the sandbox refused it a port: Node, Python's asyncio, Go.
REFUSED_BIND = re.compile(
    rb"listen EACCES: permission denied \S*?:(\d{1,5})\b"
    rb"|attempting to bind on address \('[^']*', (\d{1,5})\)[^\n]*permission denied"
    rb"|listen tcp \S*?:(\d{1,5}): bind: permission denied",
    re.IGNORECASE,
)


class RefusedBinds:
    """Reads a confined service's output for a port the sandbox refused it (it may listen only on the
    ports its package declares, which this machine allocates) and says, once per port, which port it
    was and how to declare it."""

    def __init__(self, own: dict[str, int]) -> None:
        self.own, self.told, self.tail = own, set(), b""

    def notes(self, chunk: bytes) -> bytes:
        data = self.tail + chunk
        if b"denied" not in data.lower():  # every message above says it: most output is skipped in one pass
            self.tail = data[data.rfind(b"\n") + 1 :][-4096:]
            return b""
        lines = data.split(b"\n")
        self.tail = lines.pop()[-4096:]  # a partial line waits for its end (bounded: output is the tenant's)
        said = b""
        for line in lines:
            if not (m := REFUSED_BIND.search(line)):
                continue
            port = int(next(g for g in m.groups() if g))
            if port in self.own.values() or port in self.told:
                continue
            self.told.add(port)
            own = ", ".join(f"{name} on {number}" for name, number in self.own.items()) or "none"
            said += (
                f"diploi: port {port} is not one of this component's ports, so it may not listen on it "
                f"(its ports: {own}; the first is $PORT, each is $PORT_<NAME>). Listen on the port Diploi gives, "
                f"or declare this one in the package: a host with a port, or local.ports with a name and a port; "
                f"it then gets a port of this machine in $PORT_<NAME>.\n"
            ).encode()
        return said


def _output_to(path: str, own_ports: dict[str, int] | None = None) -> threading.Thread:
    """Points this process's stdout and stderr (and so every command's it starts) at a pipe whose other
    end a thread copies into the rotating log at `path` (with `own_ports`, the ports a confined service
    may listen on: a note when it was refused another, RefusedBinds)."""
    log = RotatingLog(path)
    watch = RefusedBinds(own_ports) if own_ports is not None else None
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy() -> None:
        while chunk := os.read(read_end, 65536):
            try:
                log.write(chunk)
                if watch and (note := watch.notes(chunk)):
                    log.write(note)
            except OSError:  # a full disk loses lines; the service must never block on a pipe nobody reads
                continue

    pump = threading.Thread(target=copy, daemon=True)
    pump.start()
    return pump


def _ended(code: int, pump: threading.Thread | None) -> int:
    """`code`, once what was written before the end is in the log (a process that escaped the service's
    group may keep the pipe open: that is not waited for long)."""
    if pump is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.close(1)
        os.close(2)
        pump.join(timeout=2)
    return code


WATCH_INTERVAL = 1.0
LOOK_EVERY = 1.0  # seconds the wrapper sleeps between looks at a stop's grace period and the code


def _reap(keep: int) -> None:
    """Collect the processes that ended below this wrapper, but `keep` (its command, which Popen waits for)."""
    while True:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if ended is None or ended.si_pid == keep:
            return
        os.waitpid(ended.si_pid, 0)


def _exited(child: subprocess.Popen, timeout: float) -> int | None:
    """The child's exit code once it has exited, else None after `timeout`: asleep on a pidfd meanwhile.
    (`Popen.wait(timeout)` polls, up to 20 times a second: with 1,000 deployments, their idle wrappers
    kept a core busy.)"""
    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # no pidfd here (Linux before 5.3, another system)
        try:
            return child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        select.select([pidfd], [], [], timeout)  # readable once the child has exited; a signal's handler runs meanwhile
    finally:
        os.close(pidfd)
    return child.poll()


WATCH_LIMIT = 20_000  # files looked at per pass; past them changes go unnoticed
NOT_WATCHED = {".git", "node_modules", ".venv", "venv", "__pycache__", ".next", ".cache", ".pytest_cache"}


def _signature(folder: str) -> tuple[int, int]:
    """(files, newest modification) of the code, without dependency and cache folders."""
    count = newest = 0
    if not os.path.isdir(folder):
        return count, newest
    # by descriptors: a folder the tenant swaps for a link meanwhile is not followed
    for _, dirs, files, fd in os.fwalk(folder, follow_symlinks=False):
        dirs[:] = [d for d in dirs if d not in NOT_WATCHED]
        for name in files:
            count += 1
            if count > WATCH_LIMIT:
                return count, newest
            try:
                newest = max(newest, os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime_ns)
            except OSError:
                continue
    return count, newest


def _stamps(paths: list[str]) -> list[tuple[int, int] | None]:
    """(size, modification) of each file, not following links (None: not there)."""
    found: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = os.lstat(path)
            found.append((st.st_size, st.st_mtime_ns))
        except OSError:
            found.append(None)
    return found


def _end(child: "subprocess.Popen | Adopted") -> int:
    """Stop the command and everything it started: TERM, then KILL after the grace period. Its exit code."""
    _signal(child, signal.SIGTERM)
    try:
        child.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal(child, signal.SIGKILL)
    return child.wait()


class Adopted:
    """A container podman started detached (its output passed through to this wrapper's): its conmon,
    which left podman for this wrapper (a subreaper), stands for it; a stop goes to the container's init."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    @classmethod
    def of(cls, pidfile: str) -> "Adopted":
        with open(pidfile) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/stat") as f:  # (only a process below this wrapper is waited for)
            if int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid():
                raise RuntimeError(f"conmon {pid} is not this wrapper's")
        return cls(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"conmon {self.pid}", timeout or 0)
            time.sleep(0.02)
        return code

    def signal(self, sig: int) -> None:
        """To the container's init (conmon's child), which passes it on."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            return
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _signal(child: "subprocess.Popen | Adopted", sig: int) -> None:
    if isinstance(child, Adopted):
        child.signal(sig)
    else:
        _signal_group(child.pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
