"""Processes of the SSH gateway's sessions, and reading a service's log file."""

import contextlib
import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class LocalShell:
    """A process in a service's directory and environment, with or without a terminal."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        use_pty: bool,
        preexec: Callable[[], None] | None = None,
        leftover: Path | None = None,  # a file of the session's own, removed when it ends (its environment)
    ) -> None:
        self.leftover = leftover
        env = {**env, "TERM": env.get("TERM", "xterm-256color")}
        start = {"cwd": cwd, "env": env, "start_new_session": True, "preexec_fn": preexec}
        self._lock = threading.Lock()  # the terminal's descriptor is closed only while nobody writes to it
        self.pty = use_pty
        if use_pty:
            self._master, slave = pty.openpty()
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, **start)
            os.close(slave)
        else:
            self._master = None
            pipe = subprocess.PIPE
            self.proc = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=pipe, **start)

    def write(self, data: bytes) -> None:
        if self.pty:
            with self._lock:
                if self._master is None:
                    raise BrokenPipeError("the session has ended")
                os.write(self._master, data)
        else:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if not self.pty and self.proc.stdin:
            self.proc.stdin.close()

    def read(self, size: int = 65536) -> bytes:
        """The process's output; b"" once it has ended (callers read until then, and close after)."""
        if self.pty:
            try:
                return os.read(self._master, size) if self._master is not None else b""
            except OSError:  # the terminal closed: the process is gone
                return b""
        return self.proc.stdout.read1(size)

    def read_stderr(self, size: int = 65536) -> bytes:
        return b"" if self.pty else self.proc.stderr.read1(size)

    def resize(self, columns: int, rows: int) -> None:
        with self._lock:
            if self._master is not None:
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
        with self._lock:
            if self._master is not None:
                os.close(self._master)
                self._master = None
        if self.leftover:
            with contextlib.suppress(FileNotFoundError):
                self.leftover.unlink()
        return code


def read_log(path: Path, follow: bool, since: int | None, tail: int, stop: threading.Event) -> Iterator[str]:
    """Lines of a log file: the last `tail` ones, or those after byte offset `since`; with
    `follow`, then every new line as it is written, until `stop` is set."""
    while not path.exists():
        if not follow or stop.wait(0.2):
            return
    f = open(path, "rb")
    try:
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
                if _rotated(path, f):  # what was written before it was renamed has been read: on to the new file
                    f.close()
                    f = open(path, "rb")
                    continue
                stop.wait(0.2)
                continue
            buffer += chunk
            if buffer.endswith(b"\n"):
                yield buffer.rstrip(b"\n").decode(errors="replace")
                buffer = b""
    finally:
        f.close()


def _rotated(path: Path, f) -> bool:
    """Whether `path` is now another file than the open `f` (the log was rotated: renamed, and a new one begun)."""
    try:
        now = path.stat()
    except FileNotFoundError:  # between the rename and the new file
        return False
    was = os.fstat(f.fileno())
    return (now.st_ino, now.st_dev) != (was.st_ino, was.st_dev)


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
