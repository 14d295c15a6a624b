"""One batched look at local deployments: supervisord's process table, CPU and memory from psutil,
volume sizes and health checks (from one thread, many at a time)."""

import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from deployments.runtimes.base import Colour, DeploymentSpec, ItemState, ServiceSpec
from deployments.runtimes.local.exec import FAILED
from deployments.runtimes.local.shell import read_log
from deployments.runtimes.statusitems import MAX_STATUS_BYTES, Answer, status_items

HEALTH_TIMEOUT = 1.0
STATE_COLOUR = {
    "RUNNING": Colour.GREEN,
    "STARTING": Colour.PENDING,
    "BACKOFF": Colour.YELLOW,
    "STOPPING": Colour.PENDING,
    "STOPPED": Colour.PENDING,
    "EXITED": Colour.RED,
    "FATAL": Colour.RED,
    "UNKNOWN": Colour.RED,
}


class Usage:
    """CPU % and resident memory of process trees. Each look (`read`) is one pass over the process table,
    or over a few trees; a process's CPU % is the CPU time it used since it was last read (at least
    SHORTEST before) over the time passed; 0 the first time it is seen, as psutil's own cpu_percent.
    Looks may run in several threads at once (the runtime is one per process): each has its own figures."""

    SEEN_LIMIT = 4096  # processes remembered from looks at a few trees before the oldest are forgotten
    SHORTEST = 0.25  # seconds: CPU time is counted in ticks of 10 ms, so a figure covers at least this long

    def __init__(self) -> None:
        self._seen: dict[int, tuple[float, float]] = {}  # pid → (CPU seconds, when) at its last look
        self._lock = threading.Lock()

    def read(self, roots: list[int] | None = None) -> "Reading":
        """Read the process table; only the trees under `roots` when given (a few deployments)."""
        stats: dict[int, tuple[float, int]] = {}
        children: defaultdict[int, list[int]] = defaultdict(list)
        for pid, ppid, cpu, rss in _process_table() if roots is None else _process_trees(roots):
            stats[pid] = (cpu, rss)
            children[ppid].append(pid)
        at = time.monotonic()
        with self._lock:
            before = {pid: self._seen[pid] for pid in stats if pid in self._seen}
            young = {pid for pid, (_, when) in before.items() if at - when < self.SHORTEST}  # kept: a figure over a few ms is noise
            seen = {pid: before[pid] if pid in young else (cpu, at) for pid, (cpu, _) in stats.items()}
            if roots is None:
                self._seen = seen
            else:
                self._seen.update(seen)
                if len(self._seen) > self.SEEN_LIMIT:
                    newest = sorted(self._seen.items(), key=lambda item: item[1][1])[-self.SEEN_LIMIT // 2 :]
                    self._seen = dict(newest)
        return Reading(stats, children, before, at)


@dataclass(frozen=True)
class Reading:
    """One look at the processes (`Usage.read`)."""

    stats: dict[int, tuple[float, int]]  # pid → (CPU seconds, resident bytes)
    children: dict[int, list[int]]
    before: dict[int, tuple[float, float]]  # pid → (CPU seconds, when) at the look before
    at: float

    def of(self, pid: int) -> tuple[float | None, int | None]:
        """CPU % and resident bytes of `pid` and every process under it."""
        if pid not in self.stats:
            return None, None
        tree, i = [pid], 0
        while i < len(tree):
            tree += self.children.get(tree[i], ())
            i += 1
        cpu = 0.0
        for p in tree:
            if p in self.before and self.at > self.before[p][1]:
                cpu += (self.stats[p][0] - self.before[p][0]) / (self.at - self.before[p][1])
        return round(max(0.0, cpu * 100), 1), sum(self.stats[p][1] for p in tree)


def _process_table() -> Iterator[tuple[int, int, float, int]]:
    """(pid, parent pid, CPU seconds, resident bytes) of every process: one read of /proc/<pid>/stat
    each on Linux (a tenth of psutil's cost per process), psutil elsewhere."""
    if not Path("/proc/self/stat").exists():
        for p in psutil.process_iter(["ppid", "cpu_times", "memory_info"]):
            times, memory = p.info["cpu_times"], p.info["memory_info"]
            if times is not None and memory is not None:  # gone meanwhile, or not ours to read
                yield p.pid, p.info["ppid"], times.user + times.system, memory.rss
        return
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (raw := _stat(entry.name)):
            yield _row(int(entry.name), raw)


def _process_trees(roots: list[int]) -> Iterator[tuple[int, int, float, int]]:
    """`_process_table`'s rows for the processes under `roots`, found through each one's children."""
    if not Path("/proc/self/stat").exists():
        for root in roots:
            try:
                tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
            except psutil.Error:
                continue
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    times, memory = p.cpu_times(), p.memory_info()
                    yield p.pid, p.ppid(), times.user + times.system, memory.rss
        return
    queue = list(roots)
    while queue:
        pid = queue.pop()
        try:
            kids = [int(k) for task in os.scandir(f"/proc/{pid}/task") for k in Path(task.path, "children").read_text().split()]
        except OSError:  # gone meanwhile
            continue
        if raw := _stat(str(pid)):
            yield _row(pid, raw)
        queue += kids


def _stat(pid: str) -> bytes:
    """/proc/<pid>/stat, or b"" when the process is gone (without a Python file object: this runs for every
    process on the machine at every tick)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _row(pid: int, stat: bytes) -> tuple[int, int, float, int]:
    """(pid, parent pid, CPU seconds, resident bytes) from /proc/<pid>/stat."""
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (command) "; the command may hold spaces
    return pid, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


CRASHED = ("FATAL", "BACKOFF", "EXITED")
LAST_WORDS = 3  # log lines shown in the status of a process that crashed
LOOKED_BACK = 20  # …read from its last lines


def container_state(
    service: ServiceSpec, proc: dict | None, problem: str | None, restarts: int, enabled: bool, usage: Reading
) -> ItemState:
    if problem:
        return ItemState(service.identifier, Colour.RED, problem)
    if proc is None:
        return ItemState(service.identifier, Colour.PENDING, "not created yet")
    state = proc["statename"]
    colour = STATE_COLOUR.get(state, Colour.RED)
    if state == "STOPPED" and enabled:
        colour = Colour.RED
    message = state.lower()
    if state in CRASHED:
        message = f"{state.lower()}: {proc.get('spawnerr') or proc.get('description') or 'exited'}"
    if restarts and state == "RUNNING":
        colour = Colour.GREEN
        message = f"running, restarted {restarts}×"
    cpu = memory = None
    if state == "RUNNING" and proc.get("pid"):
        cpu, memory = usage.of(proc["pid"])
    started = float(proc["start"]) if state == "RUNNING" else None
    return ItemState(service.identifier, colour, message, restarts=restarts, cpu_percent=cpu, memory_bytes=memory, started_at=started)


def preparing(state: ItemState, phase_file: Path) -> ItemState:
    """A running service still in its preparation (exec.py's phase file): pending, saying what it does;
    red when it failed (it waits for a fix: a lockfile changed, or a restart)."""
    try:
        doing = phase_file.read_text()[:200]
    except OSError:
        return state
    if doing.startswith(FAILED):
        failed = doing.removeprefix(FAILED)
        return replace(state, colour=Colour.RED, message=f"{failed}; it runs again when a lockfile changes, or on Restart")
    return replace(state, colour=Colour.PENDING, message=f"{doing}… (its log shows the output)")


def telling(output: list[str]) -> list[str]:
    """What a failed command's last lines say best: the first of them that says "error", then its last
    line (else its last LAST_WORDS lines); the platform's own "diploi:" lines left out."""
    tail = [ln.strip() for ln in output[-LOOKED_BACK:]]
    tail = [ln for ln in tail if ln and not ln.startswith("diploi: ")]
    first_error = next((ln for ln in tail if "error" in ln.lower()), None)
    return [first_error, tail[-1]] if first_error and first_error != tail[-1] else tail[-LAST_WORDS:]


def with_last_words(state: ItemState, log_file: Path) -> ItemState:
    """The crashed process's last log lines in its status, instead of supervisord's "process log may
    have details": its first line saying "error" among the last few, then its last line (the
    platform's own "diploi:" lines left out: the status says that already)."""
    lines = telling(list(read_log(log_file, False, None, LOOKED_BACK, threading.Event())))
    if not lines:
        return state
    message = state.message.replace(" (process log may have details)", "")
    return replace(state, message=f"{message} — {' / '.join(line[:200] for line in lines)}")


def service_states(specs: list[DeploymentSpec], checks: list[tuple[int, ServiceSpec, str, float]]) -> dict[int, tuple[ItemState, ...]]:
    """Each deployment's services: the health checks of the running ones and the items a component reports
    itself (all looked at together, see `probe`), the others stopped or not running."""
    targets: list[tuple[str, str | None, bool]] = []
    for _, service, address, _ in checks:
        path = service.health.get("http") if isinstance(service.health, dict) else None
        targets.append((address, path or None, False))
        if service.status_path:
            targets.append((address, service.status_path, True))
    answers = iter(probe(targets))
    found: dict[tuple[int, str], list[ItemState]] = {}
    for spec_id, service, address, started in checks:
        states = [health(service, address, next(answers))]
        if service.status_path:
            states += status_items(service, next(answers), started)
        found[spec_id, service.identifier] = states
    result = {}
    for spec in specs:
        idle = (Colour.PENDING, "stopped") if not spec.enabled else (Colour.RED, "not running")
        result[spec.id] = tuple(
            state for s in spec.services for state in found.get((spec.id, s.identifier)) or [ItemState(s.identifier, *idle)]
        )
    return result


OPEN_AT_ONCE = 256  # checks in flight together (file descriptors are limited, 1,024 by default)


def probe(targets: list[tuple[str, str | None, bool]], timeout: float = HEALTH_TIMEOUT) -> list[Answer]:
    """Each (host:port, path, body wanted) looked at from this thread, OPEN_AT_ONCE at a time, each
    within `timeout`: without a path, whether a connection is accepted; with one, the answer to an HTTP
    GET (its status, and at most MAX_STATUS_BYTES + 1 bytes of its body when wanted). A thread and an
    HTTP client per check cost more than the checks themselves."""
    answers: list[Answer | None] = [None] * len(targets)
    received: dict[int, bytearray] = {}
    deadlines: dict[int, float] = {}
    waiting = iter(range(len(targets)))
    selector = selectors.DefaultSelector()

    def done(i: int, sock: socket.socket, answer: Answer) -> None:
        answers[i] = answer
        selector.unregister(sock)
        sock.close()
        del deadlines[i]

    def open_more() -> None:
        while len(deadlines) < OPEN_AT_ONCE and (i := next(waiting, None)) is not None:
            host, port = targets[i][0].rsplit(":", 1)
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setblocking(False)
            failed = sock.connect_ex((host.strip("[]"), int(port)))
            if failed not in (0, errno.EINPROGRESS):
                answers[i] = Answer(error=os.strerror(failed))
                sock.close()
                continue
            selector.register(sock, selectors.EVENT_WRITE, i)
            deadlines[i] = time.monotonic() + timeout

    open_more()
    while deadlines:
        for key, events in selector.select(max(0.0, min(deadlines.values()) - time.monotonic())):
            sock, i = key.fileobj, key.data
            _, path, whole = targets[i]
            if events & selectors.EVENT_WRITE:
                failed = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if failed or path is None:
                    done(i, sock, Answer(error=os.strerror(failed) if failed else ""))
                    continue
                try:
                    sock.send(f"GET {path} HTTP/1.0\r\nHost: {targets[i][0]}\r\nUser-Agent: diploi-monitor\r\n\r\n".encode())
                except OSError as e:
                    done(i, sock, Answer(error=e.strerror or str(e)))
                    continue
                received[i] = bytearray()
                selector.modify(sock, selectors.EVENT_READ, i)
                continue
            try:
                chunk = sock.recv(65536)
            except OSError as e:
                done(i, sock, Answer(error=e.strerror or str(e)))
                continue
            data = received[i]
            data += chunk
            head, complete, body = bytes(data).partition(b"\r\n\r\n")
            if chunk and (not complete or whole and len(body) <= MAX_STATUS_BYTES):
                continue  # more to come: the headers, or the body it wants
            done(i, sock, _http_answer(head, body[: MAX_STATUS_BYTES + 1] if whole else b""))
        now = time.monotonic()
        for key in [k for k in selector.get_map().values() if deadlines[k.data] <= now]:
            done(key.data, key.fileobj, Answer(error="timed out"))
        open_more()
    selector.close()
    return [a or Answer(error="not looked at") for a in answers]


def _http_answer(head: bytes, body: bytes) -> Answer:
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        return Answer(error="the answer is not HTTP")
    return Answer(status=int(status_line[1]), body=body)


VOLUME_WALK_LIMIT = 20_000  # files looked at per volume; past it the figure is a lower bound
DISK_WALK_LIMIT = 100_000  # entries looked at per deployment


def _tree_bytes(path: Path, limit: int, on_disk: bool) -> tuple[int, bool]:
    """The bytes under `path` — what the files hold, or (`on_disk`) what files and folders take on
    disk — and whether all of it was counted (at most `limit` entries are looked at)."""
    used = count = 0
    if not path.is_dir():  # (not made yet)
        return used, True
    # by descriptors: a folder the tenant swaps for a link meanwhile is not followed
    for _, dirs, files, fd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirs, *files) if on_disk else files:
            count += 1
            if count > limit:
                return used, False
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            used += st.st_blocks * 512 if on_disk else st.st_size
    return used, True


def volume_state(name: str, path: Path, size: str = "") -> ItemState:
    """A volume and what it holds, against the size its package asks for (`sizeMiB`; a figure to
    plan by locally: the deployment's disk allowance is what is enforced)."""
    if not path.is_dir():
        return ItemState(name, Colour.RED, "missing")
    used, complete = _tree_bytes(path, VOLUME_WALK_LIMIT, on_disk=False)
    of = f" of {size.removesuffix('Mi')} MiB" if size.endswith("Mi") else f" of {size}" if size else ""
    return ItemState(name, Colour.GREEN, f"present, {'' if complete else 'more than '}{_size(used)} used{of}")


def disk_state(home: Path, limit: int) -> ItemState:
    """The deployment's disk use (what its files take on disk, all its folders) against its allowance."""
    used, complete = _tree_bytes(home, DISK_WALK_LIMIT, on_disk=True)
    figure = f"{'' if complete else 'more than '}{_size(used)} of {_size(limit)}"
    if used > limit:
        return ItemState("disk", Colour.RED, f"{figure} used: over its allowance (DIPLOI_LOCAL_DISK_MIB); free space in it")
    return ItemState("disk", Colour.GREEN, f"{figure} used")


def filesystem_state(used: int, size: int, full: bool) -> ItemState:
    """The deployment's own filesystem (disks.py): its writes fail once it is full."""
    figure = f"{_size(used)} of {_size(size)} used"
    if full:
        return ItemState("disk", Colour.RED, f"disk full: {figure}; its writes fail until it frees space (DIPLOI_LOCAL_DISK_MIB)")
    if used > size * 0.9:
        return ItemState("disk", Colour.YELLOW, f"nearly full: {figure}")
    return ItemState("disk", Colour.GREEN, figure)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def health(service: ServiceSpec, address: str, answer: Answer) -> ItemState:
    port = address.rsplit(":", 1)[1]
    path = service.health.get("http") if isinstance(service.health, dict) else None
    if path and not answer.error:
        return ItemState(service.identifier, Colour.YELLOW if answer.status >= 500 else Colour.GREEN, f"HTTP {answer.status} on {path}")
    if path:
        return ItemState(service.identifier, Colour.RED, f"not answering on port {port} ({answer.error})")
    if answer.error:
        return ItemState(service.identifier, Colour.RED, f"not accepting connections on port {port} ({answer.error})")
    return ItemState(service.identifier, Colour.GREEN, f"accepting connections on port {port}")


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
