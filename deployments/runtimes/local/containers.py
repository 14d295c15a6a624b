"""Components that are their image: built from their Dockerfile and run as OCI containers, with podman.

Each deployment's containers run rootless, as the deployment's own uid (the one its sandboxed processes
run as): container root is that uid on this machine, the image's other users a range of subordinate
ids of its own (/etc/subuid), and nothing of the deployment runs as root. Its account (a passwd entry
and the range, which newuidmap needs) is made on first use and removed with the deployment.

A container's network is slirp4netns (podman's, rootless), which podman starts as the deployment through
a wrapper that first puts it under the deployment's Landlock port rules (inside.py): what a container
connects to leaves through it, so it reaches the deployment's other services at the machine's address
as slirp4netns shows it (HOST), nothing else of the machine's loopback, and the outside world on
DIPLOI_OUTBOUND_PORTS, as the deployment's processes do.

Podman reads only the platform's configuration (containers.conf, storage.conf and registries.conf in
<data>/containers), never anything of the deployment's. Its images and containers live in the
deployment's own storage (<home>/containers), which the deployment's sandboxed processes cannot reach.
Podman, as the deployment's uid, must reach that storage and the code it builds or mounts: the data
directory is traversable but lists nothing (0711), every other child of it is the platform's alone,
and each deployment's folder is root:<its uid> 0750 (open_paths).
"""

import base64
import contextlib
import fcntl
import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psutil
from django.conf import settings

from deployments.runtimes.base import RuntimeFailure, ServiceSpec
from deployments.runtimes.local import sandbox

OUTER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PODMAN = shutil.which("podman", path=OUTER_PATH) or "/usr/bin/podman"
HOST = "10.0.2.2"  # this machine as slirp4netns shows it to a container (its loopback, within the deployment's ports)
SUBORDINATE = 65536  # ids of a deployment's containers besides root
# Subordinate ranges come from above every installation's deployment uids (sandbox.UID_SLOTS).
SUBORDINATE_FIRST, SUBORDINATE_END = 4_000_000_000, 2**32 - 1
ACCOUNTS_LOCK = Path("/var/lib/diploi/accounts.lock")
RUNROOT = Path("/run/diploi-podman")  # each deployment's podman state and sockets: <uid>/ (podman wants a short path)
STOP_SECONDS = 5
SLIRP = shutil.which("slirp4netns", path=OUTER_PATH) or "/usr/bin/slirp4netns"
# The wrapper, first on podman's PATH too: buildah looks slirp4netns up there for a build's RUN steps.
NETWORK = "bin/slirp4netns"
# It puts slirp4netns under the deployment's port rules (ports/<its uid>, inside.py's Landlock rules).
# Buildah names the process whose network it makes by its PID: the wrapper opens that network first (the
# rules would refuse reaching into another process) and passes it on as a path, as podman does.
NETWORK_WRAPPER = """\
#!/usr/bin/python3 -IS
import os, sys
sys.path[:0] = ["{inside}"]
import inside
uid = os.getuid() or int(open("/proc/self/uid_map").read().split()[1])  # (root in podman's user namespace)
connect = inside.ports(open(f"{ports}/{{uid}}").read().strip())
args = sys.argv[1:]
pid = next((i for i in (-1, -2) if len(args) >= -i and args[i].isdigit()), None)  # PID [TAPNAME]
if pid is not None and not any(a.startswith("--netns-type") for a in args):
    *options, target, tap = args if pid == -2 else [*args, ""]
    fd = os.open(f"/proc/{{int(target)}}/ns/net", os.O_RDONLY)
    os.set_inheritable(fd, True)
    args = [*options, "--netns-type=path", f"/proc/self/fd/{{fd}}", *([tap] if tap else [])]
inside.restrict(connect, set(), scope=False)
os.execv("{slirp}", ["{slirp}", *args])
"""


def config_files(folder: Path) -> dict[str, str]:
    """containers.conf, storage.conf, registries.conf and the wrapper of the containers' network."""
    network = folder / NETWORK
    return {
        "containers.conf": (
            "[containers]\n"
            "default_ulimits = []\n"  # (a container may not raise rlimits as root here; it keeps the deployment's)
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'  # (rootless: its processes stay in the deployment's cgroups)
            'events_logger = "file"\n'
            f'network_cmd_path = "{network}"\n'
            # the machine's loopback at HOST, within the deployment's ports (the wrapper's Landlock rules)
            'network_cmd_options = ["allow_host_loopback=true", "enable_ipv6=false"]\n'
        ),
        "storage.conf": '[storage]\ndriver = "overlay"\n',
        "registries.conf": 'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
        + "".join(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in settings.DIPLOI_CONTAINER_INSECURE_REGISTRIES),
        # slirp4netns, which podman (and buildah, for a build's RUN steps) starts as the deployment
        NETWORK: NETWORK_WRAPPER.format(inside=sandbox.INSIDE.parent, ports=folder / "ports", slirp=SLIRP),
    }


# What a Dockerfile may not ask of podman here: files of this machine outside its folder.
REFUSED = (
    (re.compile(r"--mount=\S*type=bind", re.I), "RUN --mount=type=bind is not supported here; COPY what the step needs"),
    (
        re.compile(r"(?:^|\s|=)(?:docker-archive|oci-archive|oci|dir|containers-storage|docker-daemon|sif):", re.I),
        "images from this machine's files (docker-archive:, oci:, containers-storage:…) are not supported; name an image of a registry",
    ),
)
MAX_DOCKERFILE_BYTES = 1024 * 1024


@cache
def available() -> str:
    """Why components cannot run as containers on this machine ("" when they can)."""
    if os.geteuid() != 0:
        return (
            "Diploi does not run as root (each deployment's containers run rootless under an account of its own, which only root can make)"
        )
    for tool in ("podman", "newuidmap", "slirp4netns", "runc", "useradd"):
        if not shutil.which(tool, path=OUTER_PATH):
            return f"{tool} is not installed (apt-get install podman runc uidmap slirp4netns)"
    if why := sandbox.available() or sandbox.network_limits():
        return f"containers would not be confined: {why}"
    return ""


def problem(data_dir: Path) -> str:
    """Why components cannot run as containers with this data directory ("" when they can)."""
    return available() or reach_problem(data_dir)


def reach_problem(data_dir: Path) -> str:
    """Why a deployment's podman could not reach the data directory ("" when it can): a folder above it
    that other users may not pass through."""
    for folder in reversed(data_dir.resolve().parents):
        if not folder.stat().st_mode & 0o001:
            return f"a deployment's podman (its uid) cannot pass through {folder} (chmod o+x {folder})"
    return ""


def image(service: ServiceSpec, tag: str) -> str:
    """The image of `service` built for `tag` (a release's commit, or "development")."""
    return f"localhost/{service.identifier}:{tag}"


def build_args(service: ServiceSpec, root: Path, dockerfile: str) -> list[str]:
    """`podman build`'s file, build argument and context for `dockerfile` of the component's folder in
    `root` (its checkout or release): the folder is the context, or (Diploi's components) the whole
    repository with FOLDER=/app/<folder>, where their Dockerfiles expect it."""
    folder = root / service.folder
    app = "/app" if service.folder in ("", ".") else f"/app/{service.folder}"
    return ["-f", str(folder / dockerfile), "--build-arg", f"FOLDER={app}", str(root if service.context_root else folder)]


def container_name(service: ServiceSpec, variant: str = "") -> str:
    return f"{service.identifier}{variant}"


@dataclass(frozen=True)
class Podman:
    """Podman for one deployment: as its uid, with the platform's configuration, on its own storage."""

    data_dir: Path
    home: Path
    uid: int

    @property
    def folder(self) -> Path:
        return self.home / "containers"

    @property
    def runroot(self) -> Path:
        return RUNROOT / str(self.uid)

    @property
    def auth_file(self) -> Path:
        """The project's registry logins, for its pulls (the uid's alone: no container mounts it)."""
        return self.folder / "auth.json"

    def argv(self, *args: str) -> list[str]:
        config = self.data_dir / "containers"
        env = {
            "PATH": f"{config / NETWORK.split('/')[0]}:{OUTER_PATH}",
            "LANG": "C.UTF-8",
            "HOME": str(config),  # (podman looks for a user's configuration there: the platform's, read-only)
            "XDG_CONFIG_HOME": str(config),
            "XDG_DATA_HOME": str(self.folder / "storage"),
            "XDG_CACHE_HOME": str(self.folder / "cache"),  # (where a short name's resolution is remembered: the uid's)
            "XDG_RUNTIME_DIR": str(self.runroot),
            "CONTAINERS_CONF": str(config / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(config / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(config / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
        }
        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--"]
        storage = ["--root", str(self.folder / "storage"), "--runroot", str(self.runroot / "storage")]
        return [*drop, "env", "-i", *(f"{k}={v}" for k, v in env.items()), PODMAN, *storage, *args]

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, env={"PATH": OUTER_PATH}, cwd="/")
        if check and result.returncode != 0:
            raise RuntimeFailure(f"podman {args[0]} failed: {result.stderr.strip()[-300:]}")
        return result

    def prepare(self, connect: set[int], registries: tuple[tuple[str, str, str], ...] = ()) -> None:
        """The account, its storage, the folders podman must reach, the TCP ports its containers'
        network may connect to on this machine and beyond, and the registry logins it pulls with
        ((host, user, password) each; idempotent)."""
        config = write_config(self.data_dir)
        account(self.uid)
        open_paths(self.data_dir, self.home, self.uid)
        RUNROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(RUNROOT, 0o711)
        for folder in (self.folder, self.runroot):
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chown(folder, self.uid, self.uid, follow_symlinks=False)
            os.chmod(folder, 0o700, follow_symlinks=False)
        rules = config / "ports" / str(self.uid)  # (the platform's, read by its network's wrapper)
        text = ",".join(map(str, sorted(connect))) + "\n"
        if not rules.exists() or rules.read_text() != text:
            rules.with_suffix(".tmp").write_text(text)
            rules.with_suffix(".tmp").chmod(0o644)
            rules.with_suffix(".tmp").replace(rules)
        self._write_logins(registries)
        _seed(self)

    def _write_logins(self, registries: tuple[tuple[str, str, str], ...]) -> None:
        # (always written, empty without logins: `podman run` refuses a REGISTRY_AUTH_FILE that is missing)
        auths = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()} for host, user, password in registries}
        write_owned(self.auth_file, json.dumps({"auths": auths}, sort_keys=True), self.uid)

    def images(self) -> list[str]:
        """Its images, as repository:tag."""
        out = self.run("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout
        return [line for line in out.split() if line]


def _seed(podman: Podman) -> None:
    """The image archives of DIPLOI_CONTAINER_IMAGES (`podman save` files), loaded into a new storage:
    base images for a machine that reaches no registry. Loaded again when the folder changes."""
    folder = Path(settings.DIPLOI_CONTAINER_IMAGES) if settings.DIPLOI_CONTAINER_IMAGES else None
    archives = sorted(folder.glob("*.tar")) if folder and folder.is_dir() else []
    stamp = podman.data_dir / "containers" / "ports" / f"{podman.uid}.seeded"  # (the platform's folder, not the uid's)
    seen = "\n".join(f"{a.name} {a.stat().st_mtime_ns}" for a in archives)
    if not archives or (stamp.exists() and stamp.read_text() == seen):
        return
    for archive in archives:
        with open(archive, "rb") as f:  # read by the platform, loaded by podman as the deployment
            result = subprocess.run(
                podman.argv("load", "-q"), stdin=f, capture_output=True, text=True, timeout=300, env={"PATH": OUTER_PATH}, cwd="/"
            )
        if result.returncode != 0:
            raise RuntimeFailure(f"loading the base image {archive.name} failed: {result.stderr.strip()[-300:]}")
    stamp.write_text(seen)


def write_config(data_dir: Path) -> Path:
    """The platform's podman configuration, the only one podman reads for a deployment."""
    folder = data_dir / "containers"
    for path in (folder, folder / "ports", folder / "bin"):
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(path, 0o755)
    for name, text in config_files(folder).items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o755 if name == NETWORK else 0o644)
            tmp.replace(path)
    return folder


def open_paths(data_dir: Path, home: Path, uid: int) -> None:
    """What podman, as the deployment's uid, must pass through to its storage and code, and nothing
    more: the data directory and deployments/ traversable but not listable, everything else in them the
    platform's (or its deployment's) alone, the deployment's folder readable by its uid's group."""
    deployments = data_dir / "deployments"
    for folder in (data_dir, deployments):
        os.chmod(folder, 0o711)
    for parent, kept in ((data_dir, {"deployments", "containers"}), (deployments, set())):
        for child in parent.iterdir():
            if child.name in kept or child.is_symlink():
                continue
            with contextlib.suppress(FileNotFoundError):
                mode = child.stat().st_mode
                if mode & 0o007:
                    os.chmod(child, mode & ~0o007)  # (a deployment's folder keeps its group: its uid's)
    os.chown(home, 0, uid, follow_symlinks=False)
    os.chmod(home, 0o750)


def account_name(uid: int) -> str:
    return f"diploi-{uid}"


def account(uid: int) -> None:
    """The deployment's account (its uid and group, no home, no shell) with a subordinate range of its
    own; made once."""
    name = account_name(uid)
    ACCOUNTS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(ACCOUNTS_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for lookup, kind in ((pwd.getpwuid, "uid"), (grp.getgrgid, "gid")):
            try:
                holder = lookup(uid)[0]
            except KeyError:
                continue
            if holder != name:
                raise RuntimeFailure(f"{kind} {uid} belongs to “{holder}” on this machine; it cannot be this deployment's")
        with contextlib.suppress(KeyError):
            pwd.getpwuid(uid)
            if _subordinate(name):
                return
        if not _exists(grp.getgrgid, uid):
            _admin(["groupadd", "--gid", str(uid), name])
        if not _exists(pwd.getpwuid, uid):
            _admin(["useradd", "--uid", str(uid), "--gid", str(uid), "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--comment", "Diploi deployment (containers)", name])  # fmt: skip
        if not _subordinate(name):
            first = _free_range()
            ids = f"{first}-{first + SUBORDINATE - 1}"
            _admin(["usermod", "--add-subuids", ids, "--add-subgids", ids, name])


def remove_account(uid: int) -> None:
    """The account and its range, once none of its processes is left."""
    name = account_name(uid)
    try:
        if pwd.getpwuid(uid).pw_name != name:
            return
    except KeyError:
        return
    ranges = _subordinate(name)
    kill_processes(uid, ranges)
    ACCOUNTS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(ACCOUNTS_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _admin(["userdel", name])
        for path in (Path("/etc/subuid"), Path("/etc/subgid")):  # (userdel leaves them on some systems)
            lines = path.read_text().splitlines(keepends=True) if path.exists() else []
            kept = [line for line in lines if line.split(":", 1)[0] != name]
            if kept != lines:
                path.write_text("".join(kept))
        if _exists(grp.getgrgid, uid) and grp.getgrgid(uid).gr_name == name:
            _admin(["groupdel", name])


def kill_processes(uid: int, ranges: list[tuple[int, int]]) -> None:
    """Every process of the uid or of its containers' ids."""
    for proc in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error, TypeError):
            real = proc.info["uids"].real
            if real == uid or any(first <= real < first + count for first, count in ranges):
                proc.send_signal(signal.SIGKILL)


def _exists(lookup, number: int) -> bool:
    try:
        lookup(number)
        return True
    except KeyError:
        return False


def _admin(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": OUTER_PATH})
    if result.returncode != 0:
        raise RuntimeFailure(f"{argv[0]} failed: {result.stderr.strip()[-300:]}")


def _ranges(path: Path) -> list[tuple[str, int, int]]:
    found = []
    for line in (path.read_text() if path.exists() else "").splitlines():
        parts = line.split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            found.append((parts[0], int(parts[1]), int(parts[2])))
    return found


def _subordinate(name: str) -> list[tuple[int, int]]:
    return [(first, count) for owner, first, count in _ranges(Path("/etc/subuid")) if owner == name]


def _free_range() -> int:
    """The first range of SUBORDINATE ids above SUBORDINATE_FIRST no account holds (uids or gids)."""
    taken = sorted((first, first + count) for path in ("/etc/subuid", "/etc/subgid") for _, first, count in _ranges(Path(path)))
    candidate = SUBORDINATE_FIRST
    for start, end in taken:
        if end <= candidate or start >= candidate + SUBORDINATE:
            continue
        candidate = end
    for start, end in taken:  # (unsorted overlaps: walk again from the candidate)
        if start < candidate + SUBORDINATE and end > candidate:
            candidate = max(candidate, end)
    if candidate + SUBORDINATE > SUBORDINATE_END:
        raise RuntimeFailure("no subordinate ids are left for another deployment's containers on this machine")
    return candidate


# The images a Dockerfile names (FROM, COPY --from=, RUN --mount=from=).
IMAGE_REFERENCE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)|--from=(\S+?)(?:[\s,]|$)", re.I | re.M)


def dockerfile_problem(text: str) -> str | None:
    """Why this Dockerfile cannot be built here, if it cannot."""
    joined = re.sub(r"[\\`]\r?\n", " ", text)  # continuation lines (either escape character)
    for pattern, why in REFUSED:
        if pattern.search(joined):
            return why
    for match in IMAGE_REFERENCE.finditer(joined):
        if why := registry_problem(match.group(1) or match.group(2)):
            return why
    return None


def registry_problem(reference: str) -> str | None:
    """Why podman may not pull `reference` here: its registry is this machine (podman pulls as the
    deployment, outside its port rules: it would reach the platform's own services) or a link-local
    address, written as one or by a name that resolves to one. None for Docker Hub's short names, a
    build's stage names and `localhost/…` (this storage's own images)."""
    first, slash, _ = reference.partition("/")
    if not slash or first == "localhost" or not ("." in first or ":" in first):
        return None
    host = first[1 : first.find("]")] if first.startswith("[") else first.rsplit(":", 1)[0]
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in found}
        except (OSError, UnicodeError, ValueError):
            return None  # it resolves to nothing: the pull fails by itself
    for address in addresses:
        address = getattr(address, "ipv4_mapped", None) or address
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            where = f"a registry at {address}, this machine or a link-local address"
            return f"the image {reference} is on {where}, which is not supported; name a registry elsewhere"
    return None


def env_file(path: Path, env: dict[str, str], uid: int) -> Path:
    """The container's environment as podman's --env-file reads it (one KEY=VALUE a line: a value's
    line breaks arrive as \\n), readable by the deployment's uid only."""
    write_owned(path, "".join(f"{k}={v.replace(chr(10), chr(92) + 'n')}\n" for k, v in env.items()), uid)
    return path


def write_owned(path: Path, text: str, uid: int) -> None:
    """`text` as `path` in a folder of the deployment's uid, the uid's alone (0600): written by the
    platform into a file made anew, owned by its descriptor, then renamed over whatever was there (a
    link the uid put there is replaced, never followed)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        os.fchown(fd, uid, uid)
        os.fchmod(fd, 0o600)
        f.write(text)
    os.replace(temporary, path)


def run_args(
    name: str,
    image_ref: str,
    published: list[tuple[int, int]],
    mounts: list[tuple[Path, str]],
    env: Path,
    workdir: str = "",
    command: str = "",
    conmon: Path | None = None,
    user: str = "",
    entrypoint: tuple[str, ...] = (),
    arguments: tuple[str, ...] = (),
) -> list[str]:
    """`podman run`'s arguments for a container of a service: in the foreground (a step), or with
    `conmon`, detached, its output passed through to the service's log and its conmon's pid written there
    (no podman process stays beside it: exec.py adopts conmon)."""
    # --init: a small init as PID 1 passes a stop on to the command (which, as PID 1, would ignore it)
    args = ["run", "--rm", "--replace", "--init", "--name", name, "--network", "slirp4netns"]
    args += ["-d", "--log-driver", "passthrough", "--conmon-pidfile", str(conmon)] if conmon else ["--log-driver", "none"]
    args += ["--security-opt", "no-new-privileges", "--env-file", str(env), "--stop-timeout", str(STOP_SECONDS)]
    for host, inside in published:
        args += ["-p", f"127.0.0.1:{host}:{inside}"]
    for source, target in mounts:
        args += ["-v", f"{source}:{target}"]
    if workdir:
        args += ["-w", workdir]
    if user:
        args += ["--user", user]
    if entrypoint:
        args += ["--entrypoint", json.dumps(list(entrypoint))]
    args.append(image_ref)
    args += ["/bin/sh", "-c", command] if command else list(arguments)
    return args


def copy_images(source: Podman, target: Podman, refs: list[str]) -> None:
    """The images `refs` of one deployment's storage into another's (a promotion runs the release's image):
    saved by the first deployment's podman, loaded by the other's, the platform passing the bytes on."""
    for ref in refs:
        save = subprocess.Popen(
            source.argv("save", ref), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"PATH": OUTER_PATH}, cwd="/"
        )
        try:
            load = subprocess.run(
                target.argv("load", "-q"), stdin=save.stdout, capture_output=True, text=True, timeout=600, env={"PATH": OUTER_PATH}, cwd="/"
            )
        finally:
            assert save.stdout
            save.stdout.close()
            saved = save.wait(timeout=600)
        if saved != 0 or load.returncode != 0:
            raise RuntimeFailure(f"copying the image {ref} failed: {load.stderr.strip()[-300:] or f'podman save exited with {saved}'}")


def prune(podman: Podman, services: list[ServiceSpec], keep: set[str]) -> None:
    """The images the services' releases not in `keep` were built into, and the layers only they used
    (base images and the development image stay)."""
    ours = {image(s, "").rstrip(":") for s in services}
    old = [ref for ref in podman.images() if ref.rsplit(":", 1)[0] in ours and ref.rsplit(":", 1)[-1] not in keep | {"development"}]
    if old:
        podman.run("rmi", "--force", *old, check=False)
        podman.run("image", "prune", "--force", check=False)


def remove(podman: Podman) -> None:
    """Everything of the deployment's containers: they stop, its storage goes (containers, images,
    volumes, networks), then its account and every process of it."""
    with contextlib.suppress(RuntimeFailure, subprocess.TimeoutExpired):
        podman.run("rm", "--all", "--force", "--time", "0", check=False)
        podman.run("system", "reset", "--force", check=False)
    remove_account(podman.uid)
    shutil.rmtree(podman.folder, ignore_errors=True)
    shutil.rmtree(podman.runroot, ignore_errors=True)
    for own in (str(podman.uid), f"{podman.uid}.seeded"):  # its port rules and what was loaded into its storage
        with contextlib.suppress(FileNotFoundError):
            (podman.data_dir / "containers" / "ports" / own).unlink()
