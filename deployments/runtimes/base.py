"""The runtime seam: the one interface through which Diploi touches processes, containers or clusters.

Views, tasks and the monitor build a DeploymentSpec from the database and call a Runtime; they never
start processes or talk to a cluster themselves. Implementations: local/ (processes on this machine)
and kubernetes/. This package imports no Django app: it knows only the plain types below.
"""

import contextlib
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from deployments.runtimes.placeholders import render


class Colour(str, Enum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"
    PENDING = "pending"


@dataclass(frozen=True)
class PortSpec:
    name: str
    port: int
    public: bool = False
    protocol: str = "http"


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    path: str
    size: str


@dataclass(frozen=True)
class ImageRun:
    """A package that is only an image and a chart (Diploi's MariaDB, MongoDB, MinIO, Elasticsearch), as
    the one container its chart runs: what the local runtime reads from the rendered chart
    (local/charted.py), or why it cannot run it."""

    image: str = ""
    entrypoint: tuple[str, ...] = ()  # the chart's `command` (empty: the image's own)
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    problem: str = ""


@dataclass(frozen=True)
class EnvImport:
    """A variable a service takes from another one's exports (from the stack file's env.include)."""

    name: str  # the name in the importing service
    source: str  # identifier of the providing service
    source_name: str  # the name the provider exports


@dataclass(frozen=True)
class ServiceSpec:
    """One component or add-on of a deployment, with everything needed to run it.

    Commands and exports are templates: {host}, {port}, {port.<name>}, {password}, {storage.<name>},
    {code}, {identifier}, {deployment}, {stage}. Each runtime fills them in with its own addresses.
    """

    identifier: str
    name: str
    kind: str  # "component" | "addon"
    package: str
    folder: str
    commands: dict[str, str]
    ports: tuple[PortSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # literal values, decrypted
    exports: dict[str, str] = field(default_factory=dict)
    imports: tuple[EnvImport, ...] = ()
    password: str = ""
    health: dict[str, object] = field(default_factory=dict)
    status_path: str = ""  # where the component serves Diploi's status items, if it does
    reload: bool = False  # development: the runtime restarts the command when the code changes
    image: str = ""  # the package's own image (Diploi's `images`), for a package with no commands of ours
    images: tuple[tuple[str, str], ...] = ()  # each of the package's images by identifier (its chart's .Values.images)
    chart: tuple[tuple[str, str], ...] = ()  # the package's Helm templates: what it is on Kubernetes
    start_commands: tuple[tuple[str, str], ...] = ()  # the project's containerCommands (its chart reads them)
    toggles: tuple[tuple[str, bool], ...] = ()  # the package's toggleable parameter groups, on or off
    context_root: bool = False  # its Dockerfile is built with the repository as context and FOLDER=/app/<folder> (Diploi's)
    container: tuple[str, str] = ()  # on this machine: (Dockerfile, development Dockerfile) it is built from and run as, with podman
    image_run: ImageRun | None = None  # on this machine: the container of a package that is only an image and a chart

    @property
    def built(self) -> bool:
        """Whether a release builds it (a component with a recipe or its own Dockerfile), rather than
        running a given image."""
        return self.kind == "component" and bool(self.commands or self.container)


def imported_env(spec: "DeploymentSpec", service: "ServiceSpec", context: Callable[["ServiceSpec"], dict[str, str]]) -> dict[str, str]:
    """What `service` takes from the others' exports (env.include), filled with each provider's
    values as `context` gives them in this runtime (addresses differ between runtimes)."""
    by_id = {s.identifier: s for s in spec.services}
    env = {}
    for imp in service.imports:
        source = by_id.get(imp.source)
        if source and imp.source_name in source.exports:
            env[imp.name] = render(source.exports[imp.source_name], context(source))
    return env


@dataclass(frozen=True)
class DeploymentSpec:
    """A plain description of what should be running, built from the database and the stack file."""

    id: int
    slug: str
    project_slug: str
    stage: str  # development | staging | production
    repository: str
    branch: str
    commit: str
    enabled: bool
    services: tuple[ServiceSpec, ...] = ()
    mirror: str = ""  # the platform's read-only copy of the repository on this machine (every commit built or checked out is there)
    hosts: tuple[str, ...] = ()
    release: str = ""  # staging/production: the release (build) to run
    images: tuple[tuple[str, str], ...] = ()  # component → image CI built for the release (external build mode)
    registries: tuple[tuple[str, str, str], ...] = ()  # the project's registry logins: (host, user, password or token)

    def image(self, identifier: str) -> str | None:
        return dict(self.images).get(identifier)

    @property
    def public_components(self) -> tuple[ServiceSpec, ...]:
        """The components with a public port: what a deployment's address serves."""
        return tuple(s for s in self.services if s.kind == "component" and any(p.public for p in s.ports))

    def service(self, identifier: str) -> ServiceSpec:
        for s in self.services:
            if s.identifier == identifier:
                return s
        raise UnknownService(f"the deployment has no component or add-on “{identifier}”")


@dataclass(frozen=True)
class ItemState:
    """One item of the status tree (a volume, a build, a container, a service)."""

    name: str
    colour: Colour
    message: str = ""
    restarts: int = 0
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    started_at: float | None = None


@dataclass(frozen=True)
class Observation:
    """What the runtime sees of one deployment at one moment."""

    storage: tuple[ItemState, ...] = ()
    builds: tuple[ItemState, ...] = ()
    containers: tuple[ItemState, ...] = ()
    services: tuple[ItemState, ...] = ()


@dataclass(frozen=True)
class CodeState:
    """A development deployment's code: the commit checked out, and when it could not be brought up
    to its branch's tip, how far behind it is and what is in the way (uncommitted files, commits
    not pushed)."""

    head: str
    behind: int = 0
    in_the_way: tuple[str, ...] = ()


class Progress(Protocol):
    def __call__(self, step: str, percent: int, line: str | None = None) -> None: ...


def forward_candidates(spec: DeploymentSpec, service: str, host: str, port: int) -> list[tuple[ServiceSpec, PortSpec]]:
    """Whom `ssh -L …:host:port` from a session on `service` may mean, with the declared port:
    `localhost` is the session's own service first, then the others; any other host must be a
    service identifier."""
    if host in ("localhost", "127.0.0.1", "::1", ""):
        own = spec.service(service)
        services = [own, *(s for s in spec.services if s is not own)]
    else:
        services = [s for s in spec.services if s.identifier == host]
    return [(s, declared) for s in services for declared in s.ports if declared.port == port]


class Shell(Protocol):
    """A process inside a running service (the SSH gateway's sessions). Reads block; b"" is the end.
    With a terminal, stderr comes through `read`."""

    def write(self, data: bytes) -> None: ...
    def close_stdin(self) -> None: ...
    def read(self, size: int = 65536) -> bytes: ...
    def read_stderr(self, size: int = 65536) -> bytes: ...
    def resize(self, columns: int, rows: int) -> None: ...
    def kill(self) -> None:
        """End the process and everything it started, now (the client went away)."""

    def close(self) -> int:
        """Wait for the exit status and release the stream."""


class Tunnel(Protocol):
    """`ssh -L`'s byte stream to a port of the deployment. Reads block; b"" is the end."""

    def read(self, size: int = 65536) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def close_write(self) -> None: ...
    def close(self) -> None: ...


class SocketTunnel:
    """A tunnel that is a plain TCP connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, size: int = 65536) -> bytes:
        try:
            return self.sock.recv(size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread
        self.sock.close()


REFUSED_RELEASE = "the new release did not pass its health check"  # what a runtime that kept the old one says


class RuntimeFailure(Exception):
    """Base of the errors a runtime raises; the message is fit to show to users."""


class TransientFailure(RuntimeFailure):
    """Worth retrying: the engine was busy or briefly unreachable."""


class Unreachable(RuntimeFailure):
    """A port of the deployment that did not answer."""


class UnknownService(RuntimeFailure):
    pass


class BuildFailed(RuntimeFailure):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step} failed: {message}")
        self.step = step


CONFINEMENT_PARTS = ("files", "processes", "network", "resources")


@dataclass(frozen=True)
class Confinement:
    """What a runtime keeps a deployment's code from reaching on this machine: for each part of
    CONFINEMENT_PARTS it does not enforce, why not."""

    missing: tuple[tuple[str, str], ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.complete:
            return f"deployments are confined: {', '.join(CONFINEMENT_PARTS)}"
        return "deployments are NOT confined: " + "; ".join(f"{part}: {why}" for part, why in self.missing)


class Runtime(ABC):
    # None: the SSH gateway serves SFTP itself from `files_root`. Otherwise a shell command that
    # speaks SFTP on stdin/stdout, run in the service like any session's command.
    sftp_command: str | None = None

    @abstractmethod
    def confinement(self) -> Confinement:
        """What this runtime enforces between deployments and the platform on this machine."""

    def containers_problem(self) -> str:
        """Why a component built from its Dockerfile (a package's local.container) cannot run here ("" when it can)."""
        return ""

    def specialise(self, spec: DeploymentSpec) -> DeploymentSpec:
        """The spec as this runtime runs it: what it reads of the packages itself (the local runtime, the
        container of a package that is only an image and a chart). Unchanged by default."""
        return spec

    @abstractmethod
    def apply(self, spec: DeploymentSpec) -> dict[str, str]:
        """Make reality match the spec; idempotent. Returns the public URL of each public component."""

    @abstractmethod
    def build(self, spec: DeploymentSpec, progress: Progress) -> dict[str, str]:
        """Turn spec.commit into an immutable release (raises BuildFailed). Returns the image each
        component runs from then on, pinned by digest, where the release is images ({} when it is
        kept by the runtime itself)."""

    @abstractmethod
    def import_release(self, source: DeploymentSpec, target: DeploymentSpec) -> None:
        """Make `source`'s release (its `release`, built for another deployment of the project) one
        of `target`'s, without building it again (a promote). Safe to call again."""

    @abstractmethod
    def prune_releases(self, spec: DeploymentSpec, keep: set[str]) -> None:
        """Forget the deployment's release artifacts other than those of the commits in `keep`."""

    @abstractmethod
    def update_code(self, spec: DeploymentSpec, pull: bool) -> CodeState:
        """Development: the code's state; with `pull`, first fast-forward it to the branch's tip when
        nothing of the developer's is in the way (never losing an edit)."""

    @abstractmethod
    def set_enabled(self, spec: DeploymentSpec, enabled: bool) -> None:
        """Stop or start every service without losing storage."""

    @abstractmethod
    def route(self, spec: DeploymentSpec) -> None:
        """Make the deployment's host names (its own, and its verified custom domains in `spec.hosts`)
        reach it."""

    def sync_routes(self, specs: Callable[[], list[DeploymentSpec]]) -> bool:
        """Give a router that lost its routes (restarted) every deployment's again; whether it did.
        Runtimes whose routes live elsewhere (Ingress objects) have nothing to do."""
        return False

    @abstractmethod
    def restart(self, spec: DeploymentSpec, service: str) -> None: ...

    @abstractmethod
    def describe(self, spec: DeploymentSpec, service: str) -> list[tuple[str, str]]:
        """What runs for the service, as (label, text) pairs: how it was started, where, its
        environment's names (never values), limits, process or pod, and its recent exits or events."""

    @abstractmethod
    def addresses(self, spec: DeploymentSpec) -> dict[str, dict[str, str]]:
        """Per service, the values of its placeholders ({host}, {port}, …) as this runtime fills them
        (read from what apply kept: no process or cluster is touched)."""

    @abstractmethod
    def observe(self, specs: list[DeploymentSpec]) -> dict[int, Observation]:
        """One batched look at many deployments."""

    def watch(self, changed: Callable[[set[int]], None]) -> bool:
        """Follow the runtime's changes from this process (the monitor): `changed(ids)` is called, from
        another thread, with the ids of deployments whose observation may have changed. False when the
        runtime announces its changes otherwise (the local runtime's event listener, over Redis)."""
        return False

    @abstractmethod
    def logs(
        self,
        spec: DeploymentSpec,
        service: str,
        follow: bool = False,
        since: int | None = None,
        tail: int = 200,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Output lines of a service: the last `tail`, or all from byte offset `since`; with
        `follow`, then new lines as they come until `stop` is set (checked at least every second)."""

    @abstractmethod
    def open_shell(self, spec: DeploymentSpec, service: str, command: str | None, pty: bool) -> Shell:
        """`command` (or an interactive shell) in the service's folder, with its environment."""

    @abstractmethod
    def files_root(self, spec: DeploymentSpec, service: str) -> Path:
        """The folder SFTP serves for `service`: the code of a development deployment, else the
        service's own files. Nothing outside it may be reached."""

    def files_start(self, spec: DeploymentSpec, service: str) -> str:
        """Where in `files_root` SFTP starts, relative to it: the folder a shell session starts in."""
        return ""

    @abstractmethod
    def open_forward(self, spec: DeploymentSpec, service: str, host: str, port: int) -> Tunnel:
        """A connection for `ssh -L …:host:port` from a session on `service`: `port` must be a port
        the deployment's stack declares and `host` localhost (the session's service first) or a
        service identifier — RuntimeFailure for anything else, Unreachable when it does not answer."""

    @abstractmethod
    def copy_storage(self, source: DeploymentSpec, target: DeploymentSpec) -> None:
        """Before `target` first starts: give it a copy of `source`'s storage (volumes, and the code
        of a development deployment). Safe to call again; never touches the source."""

    @abstractmethod
    def destroy(self, spec: DeploymentSpec) -> None:
        """Remove everything of the deployment, storage included; safe to call again."""


def port_names(own: dict[str, int]) -> dict[str, str]:
    """$PORT_<NAME> for each of a service's ports (hosts and local.ports): where a second server (a dev
    server's own, an admin page) listens."""
    return {"PORT_" + name.upper().replace("-", "_"): str(port) for name, port in own.items()}
