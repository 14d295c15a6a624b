"""The local runtime: every component and add-on is a process supervised by supervisord.

The layout of a deployment's files is in layout.py; what each process runs in programs.py; code
checkouts and releases in code.py; observation in observe.py; sessions and logs in shell.py.
"""

import concurrent.futures
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psutil
from django.conf import settings
from django.urls import reverse

from deployments.runtimes import hostnames
from deployments.runtimes.base import (
    REFUSED_RELEASE,
    CodeState,
    Colour,
    Confinement,
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
    VolumeSpec,
    forward_candidates,
)
from deployments.runtimes.local import charted, code, containers, disks, programs, sandbox
from deployments.runtimes.local.layout import Layout, write_atomic
from deployments.runtimes.local.observe import (
    CRASHED,
    Usage,
    container_state,
    disk_state,
    filesystem_state,
    preparing,
    processes_of,
    service_states,
    volume_state,
    with_last_words,
)
from deployments.runtimes.local.router import FAIL_SECONDS, Router, Site, page
from deployments.runtimes.local.sandbox import Jail
from deployments.runtimes.local.shell import LocalShell, read_log
from deployments.runtimes.local.supervisor import BASE_DIR, Supervisor

log = logging.getLogger(__name__)
DISK_MEASURE_SECONDS = 60

RECEIVER = "_git-receiver"  # the program that takes a development deployment's pushes to a local repository
FEW = 8  # deployments observe() looks at alone, not in one pass over every process (see observe)
ACTIVE = ("RUNNING", "STARTING", "BACKOFF")
# Health-checked from its start, not once supervisord deems it started (startsecs): a port that answers
# is ready a second sooner.
HEALTH_CHECKED = ("STARTING", "RUNNING")
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class LocalRuntime(Runtime):
    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir or settings.DATA_DIR)
        self.layout = Layout(self.data_dir)
        self.supervisor = Supervisor(self.data_dir)
        self.usage = Usage()
        self._sizes: dict[tuple[int, str], tuple[float, ItemState]] = {}  # (deployment, volume or "disk") → (when, state)

    def home(self, spec: DeploymentSpec) -> Path:
        return self.layout.home(spec)

    @property
    def router(self) -> Router | None:
        """The router in front of the deployments (None with DIPLOI_ROUTER=off: they are reached by port)."""
        return Router(self.data_dir) if settings.DIPLOI_ROUTER == "caddy" else None

    @property
    def unsandboxed(self) -> str:
        """Why deployments run unconfined here ("" when they are sandboxed)."""
        if settings.DIPLOI_CONFINE == "off":
            return "confinement is switched off (DIPLOI_CONFINE=off)"
        return sandbox.available()

    def jail(self, spec: DeploymentSpec, ports: programs.Ports) -> Jail | None:
        """The deployment's confinement (None when unconfined), its cgroups and firewall in place."""
        if self.unsandboxed:
            return None
        network = {} if sandbox.network_limits() else {"ports": ports, "outbound": tuple(settings.DIPLOI_OUTBOUND_PORTS)}
        uid = self._uid(spec)
        cgroups: tuple[str, ...] = ()
        if uid is not None and not sandbox.cgroups_available():
            limits = sandbox.Limits(
                memory_bytes=settings.DIPLOI_LOCAL_MEMORY_MIB * 1024 * 1024,
                cpu_percent=settings.DIPLOI_LOCAL_CPU_PERCENT,
                processes=settings.DIPLOI_LOCAL_PROCESSES,
            )
            cgroups = tuple(str(p) for p in sandbox.prepare_cgroup(uid, limits))
        disk = _disk_allowance()
        cache = self._cache(spec, uid)
        # a repository on this machine: read-only for the developer's `git pull` in a development
        # checkout; a push goes through the platform's receiver (receive.py)
        readable = (Path(spec.repository),) if self._pushes_here(spec) else ()
        push = {"push_socket": self.push_socket(spec)} if readable else {}
        if uid is None:
            return Jail(cgroups=cgroups, file_bytes=disk, readable=readable, cache=cache, **push, **network)
        sandbox.firewall()  # in place before any of its processes starts
        safe = (*readable, *(r / ".git" for r in readable), *([Path(spec.mirror)] if spec.mirror else []))
        identity = sandbox.identity_files(self.home(spec) / "etc", uid, f"d{spec.id}", safe)
        return Jail(uid=uid, identity=identity, cgroups=cgroups, file_bytes=disk, readable=readable, cache=cache, **push, **network)

    def _cache(self, spec: DeploymentSpec, uid: int | None) -> Path:
        """The deployment's own package cache (no other deployment reads or writes it: a shared one
        would let one tenant plant what another installs), owned by its uid."""
        cache = self.layout.cache(spec)
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        if uid is not None:
            os.chown(cache, uid, uid, follow_symlinks=False)
        return cache

    def _pushes_here(self, spec: DeploymentSpec) -> bool:
        """Whether a confined development deployment's origin is a repository on this machine (which
        its sandbox has read-only, and pushes to through the platform's receiver)."""
        origin = Path(spec.repository)
        return not self.unsandboxed and spec.stage == "development" and origin.is_absolute() and origin.is_dir()

    def push_socket(self, spec: DeploymentSpec) -> Path:
        return self.home(spec) / "run" / "git.sock"

    def _receiver(self, spec: DeploymentSpec) -> list[str]:
        """The program section of the deployment's git receiver, when it has one."""
        if not self._pushes_here(spec):
            return []
        name = f"{self.layout.group(spec)}{RECEIVER}"
        command = f"{sys.executable} -m deployments.runtimes.local.receive {self.push_socket(spec)} {spec.repository}"
        return [
            f"[program:{name}]\ncommand={command}\ndirectory={BASE_DIR}\nautostart={'true' if spec.enabled else 'false'}\n"
            f"autorestart=true\nstopasgroup=true\nkillasgroup=true\nstdout_logfile=NONE\nredirect_stderr=true\n"
        ]

    def _uid(self, spec: DeploymentSpec) -> int | None:
        """The deployment's own uid (confined, as root), which owns its folders."""
        return None if self.unsandboxed else sandbox.uid_of(spec.id, sandbox.uid_base(self.data_dir))

    @property
    def sftp_command(self) -> str | None:  # type: ignore[override]
        """Confined, SFTP runs inside the session's sandbox like any command; otherwise the gateway
        serves the files itself."""
        return None if self.unsandboxed else SFTP_SERVER

    def containers_problem(self) -> str:
        return self.unsandboxed or containers.problem(self.data_dir)  # (not root: containers.available says so)

    def specialise(self, spec: DeploymentSpec) -> DeploymentSpec:
        return charted.specialise(spec)

    def confinement(self) -> Confinement:
        unlimited = self.unsandboxed or sandbox.network_limits()
        network = ""
        if unlimited:
            network = f"they can connect to the platform's Redis, database and web server ({unlimited})"
        elif firewall := sandbox.firewall():
            network = (
                "TCP goes only to their own services and to DIPLOI_OUTBOUND_PORTS, but on those ports any host "
                f"answers (cloud metadata at 169.254.169.254 too), and UDP is not limited ({firewall})"
            )
        missing = [("network", network)] if network else []
        if why := self.unsandboxed or sandbox.cgroups_available():
            missing.append(("resources", f"there are no memory, CPU, process or disk limits per deployment ({why})"))
        elif why := disks.available():
            missing.append(("resources", f"a deployment can fill this machine's disk: it has no filesystem of its own ({why})"))
        if why := self.unsandboxed:
            missing[:0] = [
                ("files", f"a deployment's processes can read the platform's data directory and other deployments ({why})"),
                ("processes", f"they can see and signal the platform's processes ({why})"),
            ]
        return Confinement(missing=tuple(missing))

    # --- apply --------------------------------------------------------------------------------

    def apply(self, spec: DeploymentSpec) -> dict[str, str]:
        self.supervisor.ensure_running()
        self._disk(spec)
        home = self.home(spec)
        for sub in ("logs", "run"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        ports = programs.allocate_ports(self.layout, spec)
        jail = self.jail(spec, ports)
        if spec.stage == "development":
            code.checkout(spec, self.layout.code(spec), self._git(spec, jail))
        elif not spec.release or not (self.layout.releases(spec) / spec.release).is_dir():
            raise RuntimeFailure("there is no release to run yet; build one first")

        info = self.supervisor.process_info(self._programs([spec]))
        running = {s.identifier for s in spec.services if info.get(self.layout.program(spec, s.identifier), {}).get("statename") in ACTIVE}
        programs.check_ports_free(spec, ports, running)
        problems: dict[str, str] = {}
        entries: dict[str, str] = {}
        for service in spec.services:
            if problem := programs.requirement_problem(self.layout, spec, service, jail):
                problems[service.identifier] = problem
            else:
                entries[service.identifier] = programs.program_entry(self.layout, spec, service, ports, jail)
        write_atomic(home / "problems.json", json.dumps(problems))
        running_now = self._sections(spec)
        rolling = [  # a running public component whose program changes, in front of which a router can switch
            s
            for s in spec.services
            if self.router and spec.enabled and programs.rolls(spec, s) and s.identifier in running
            if running_now.get(s.identifier) not in (None, entries.get(s.identifier))
        ]
        kept = self._roll(spec, rolling, entries, running_now, ports, jail) if rolling else []
        self._write_programs(spec, entries, *kept)
        self._start_or_stop(spec, spec.enabled)
        self._publish(spec, ports)
        return self._endpoints(spec, ports)

    def _sections(self, spec: DeploymentSpec) -> dict[str, str]:
        """The program sections supervisord has now for the deployment, by service (NEXT copies left out)."""
        conf = self.home(spec) / "supervisor.conf"
        found = {}
        for section in ("\n" + conf.read_text()).split("\n[program:")[1:] if conf.exists() else []:
            name = section.split("]", 1)[0].removeprefix(self.layout.group(spec))
            if not name.endswith(programs.NEXT) and name != RECEIVER:
                found[name] = "[program:" + section.rstrip("\n") + "\n"
        return found

    def _write_programs(self, spec: DeploymentSpec, entries: dict[str, str], *more: str) -> None:
        write_atomic(self.home(spec) / "supervisor.conf", "\n".join([*entries.values(), *more, *self._receiver(spec)]))
        self.supervisor.update()

    def _roll(
        self,
        spec: DeploymentSpec,
        services: list[ServiceSpec],
        entries: dict[str, str],
        before: dict[str, str],
        ports: programs.Ports,
        jail: Jail | None,
        restart: bool = False,
    ) -> list[str]:
        """Zero-downtime release of `services`. The router sends their traffic to the first of two addresses
        that answers: the service's own, then its copy's (NEXT: own ports and files), which is not running
        between releases. The new release starts as the copy; once it passes its health check the service
        stops (SIGTERM: it finishes its requests, new ones go to the copy) and starts on the new release;
        once that answers, and the router has had time to send it the traffic again
        (DIPLOI_RELEASE_DRAIN), the copy stops. A new release that does not pass never receives a
        request: the service kept running the whole time; the copy is stopped and RuntimeFailure says
        why. With `restart`, the same for a restart of what runs. The router's configuration does not
        change, so nothing else it serves notices. Returns the copies' sections to keep: none, or all
        when the restarted services do not answer (the copies go on serving)."""
        old = {**entries, **{s.identifier: before[s.identifier] for s in services}}
        copies = [programs.program_entry(self.layout, spec, s, ports, jail, programs.NEXT) for s in services]
        self._write_programs(spec, old, *copies)
        if waiting := self._wait_healthy(spec, services, ports, programs.NEXT):
            self._write_programs(spec, old)
            why = "; ".join(waiting)
            raise RuntimeFailure(f"{REFUSED_RELEASE} ({why}); the previous release keeps serving")
        self._write_programs(spec, entries, *copies)
        for service in services if restart else []:
            self.supervisor.restart_process(self.layout.program(spec, service.identifier))
        if waiting := self._wait_healthy(spec, services, ports):
            log.warning("deployment %s: the new release serves from its copy; the restarted service does not answer: %s", spec.id, waiting)
            return copies  # the monitor shows what does not answer; the next change stops the copies
        time.sleep(max(settings.DIPLOI_RELEASE_DRAIN, FAIL_SECONDS + 0.5))
        return []

    def _wait_healthy(self, spec: DeploymentSpec, services: list[ServiceSpec], ports: programs.Ports, variant: str = "") -> list[str]:
        """Wait (at most DIPLOI_READY_TIMEOUT) until each service's `variant` passes its health check;
        what does not, with why ([] when all do)."""
        deadline = time.monotonic() + settings.DIPLOI_READY_TIMEOUT
        while True:
            info = self.supervisor.process_info([self.layout.program(spec, s.identifier + variant) for s in services])
            checks, waiting, gone = [], [], False
            for service in services:
                proc = info.get(self.layout.program(spec, service.identifier + variant)) or {}
                if proc.get("statename") in HEALTH_CHECKED:
                    port = ports[service.identifier + variant][service.ports[0].name]
                    checks.append((spec.id, service, f"127.0.0.1:{port}", float(proc.get("start") or 0)))
                else:
                    gone = gone or proc.get("statename") in ("FATAL", "EXITED", "STOPPED", None)
                    waiting.append(f"{service.identifier}: {proc.get('statename', 'not started').lower()}")
            if checks:
                states = service_states([spec], checks)[spec.id]
                checked = {service.identifier for _, service, _, _ in checks}
                waiting += [f"{st.name}: {st.message}" for st in states if st.name in checked and st.colour != Colour.GREEN]
            if not waiting or gone or time.monotonic() > deadline:
                return waiting
            time.sleep(0.2)

    def _endpoints(self, spec: DeploymentSpec, ports: programs.Ports) -> dict[str, str]:
        """Each public port (each of a package's `hosts`): the first under the component's name, the
        others as "<component>/<host>"; through the router by host name, or without it by port."""
        return hostnames.by_key(spec, programs.public_urls(spec, ports))

    # --- routes -------------------------------------------------------------------------------

    def _site(self, spec: DeploymentSpec, ports: programs.Ports) -> Site:
        """Where its host names lead: its processes' ports (a component whose releases roll: its own, then
        its copy's, see _roll), or the page of a stopped deployment."""
        found = hostnames.endpoints(spec)

        def dials(e: hostnames.Endpoint) -> tuple[str, ...]:
            copies = [e.service + programs.NEXT] if programs.rolls(spec, spec.service(e.service)) else []
            return tuple(f"127.0.0.1:{ports.get(key, {}).get(e.port, 0)}" for key in [e.service, *copies])

        upstreams = [(e.host, dials(e)) for e in found]
        if found:  # custom domains serve what the deployment's own host serves
            upstreams += [(host, upstreams[0][1]) for host in spec.hosts]
        link = settings.SITE_URL + reverse("deployments:detail", args=[spec.project_slug, spec.slug])
        down = page(f"{spec.slug} is not answering", "It is starting, restarting, or failing: its status and logs are in Diploi.", link)
        stopped = "" if spec.enabled else page(f"{spec.slug} is stopped", "It was stopped in Diploi; start it there to serve it.", link)
        return Site(spec.id, tuple(upstreams), page=stopped, down=down)

    def _publish(self, spec: DeploymentSpec, ports: programs.Ports) -> None:
        if self.router and spec.public_components:
            self.router.put(self._site(spec, ports))

    def sync_routes(self, specs: Callable[[], list[DeploymentSpec]]) -> bool:
        """Every deployment's route, when the router does not hold Diploi's routes (it started afresh)."""
        router = self.router
        if router is None or not router.answers() or router.synced():
            return False
        router.load([self._site(s, self.layout.read_json(s, "ports.json")) for s in specs() if s.public_components])
        return True

    def _start_or_stop(self, spec: DeploymentSpec, on: bool) -> None:
        for group in self.supervisor.groups_with_prefix(self.layout.group(spec)):
            if on:
                self.supervisor.start_group(group)
            else:
                self.supervisor.stop_group(group)

    # --- build --------------------------------------------------------------------------------

    def build(self, spec: DeploymentSpec, progress: Progress) -> dict[str, str]:
        self._disk(spec)
        self.layout.releases(spec).mkdir(parents=True, exist_ok=True)
        _kill_processes_of(self.layout.releases(spec))  # a build's commands its dead worker left running
        ports = programs.allocate_ports(self.layout, spec)
        jail = self.jail(spec, ports)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # (left only once its work is done)
            # A component built from its Dockerfile: the deployment's podman (its account, its storage
            # seeded with the base images) made ready while the release is cloned, not after.
            podman = None
            if jail and jail.uid is not None and any(s.container for s in spec.services):
                podman = pool.submit(programs.podman, self.layout, spec, jail.uid, ports)

            def launch(step: str, service: ServiceSpec, release: Path) -> code.Launch | None:
                if service.container and jail and podman:
                    return self._image_build(spec, service, release, podman.result(), jail) if step == "build" else None
                if not service.commands.get(step):
                    return None
                command = programs.command(self.layout, spec, service, ports, step)
                argv = ["/bin/sh", "-c", command]
                cwd = release / service.folder
                env = programs.environment(self.layout, spec, service, ports, jail, build_step=True)
                if jail:  # bubblewrap (root) starts from "/" and enters the folder inside; the env reaches only the command
                    env_file = sandbox.write_env(self.home(spec) / "run" / f"{service.identifier}.build.env", env, jail.uid)
                    argv, cwd, env = jail.sandbox(release, cwd, env_file=env_file).argv(argv), Path("/"), dict(sandbox.OUTER_ENV)
                return code.Launch(command, argv, env, cwd, jail.preexec() if jail else None, settings.DIPLOI_BUILD_STEP_TIMEOUT)

            code.build_release(spec, self.layout.releases(spec), launch, progress, self._git(spec, jail))
        return {}  # the release is a folder of this machine

    def _image_build(self, spec: DeploymentSpec, service: ServiceSpec, release: Path, tool: containers.Podman, jail: Jail) -> code.Launch:
        """`podman build` of the component's Dockerfile in the release, as the deployment, into the image
        of the release (its tag is the commit: a rollback or a promotion runs it again, unbuilt)."""
        folder = release / service.folder
        dockerfile = folder / service.container[0]
        # read as the deployment, in its sandbox: a link there leads nowhere of the platform's
        head = ["head", "-c", str(containers.MAX_DOCKERFILE_BYTES), "--", str(dockerfile)]
        shown = subprocess.run(
            jail.tool(release, release).argv(head),
            capture_output=True,
            env=dict(sandbox.OUTER_ENV),
            cwd="/",
            preexec_fn=jail.preexec(),
            timeout=60,
        )
        if shown.returncode != 0:
            raise code.BuildFailed(
                "build",
                f"{service.identifier}: {service.folder or '.'}/{service.container[0]} is missing (its package builds a Dockerfile)",
            )
        if why := containers.dockerfile_problem(shown.stdout.decode(errors="replace")):
            raise code.BuildFailed("build", f"{service.identifier}: {service.container[0]}: {why}")
        ref = containers.image(service, spec.commit)
        argv = tool.argv("build", "--layers", "-t", ref, *containers.build_args(service, release, service.container[0]))
        return code.Launch(
            f"podman build -t {ref} -f {service.container[0]} .",
            argv,
            dict(sandbox.OUTER_ENV),
            Path("/"),
            jail.preexec(),
            settings.DIPLOI_BUILD_STEP_TIMEOUT,
        )

    def _podman(self, spec: DeploymentSpec) -> containers.Podman | None:
        """Podman for the deployment's own storage, when it has one (its management commands: no ports)."""
        uid = self._uid(spec)
        tool = containers.Podman(self.data_dir, self.home(spec), uid) if uid is not None else None
        return tool if tool and (tool.folder / "storage").is_dir() else None

    def _git(self, spec: DeploymentSpec, jail: Jail | None) -> code.Git:
        """git on the deployment's files, as the deployment (code.Git)."""
        if not spec.mirror:
            raise RuntimeFailure("the project's repository has not been read yet")
        return code.Git(Path(spec.mirror), jail, {**sandbox.OUTER_ENV, "HOME": "/tmp"})

    def import_release(self, source: DeploymentSpec, target: DeploymentSpec) -> None:
        releases = self.layout.releases(source)
        code.import_release(releases / source.release, self.layout.releases(target), source.release, self._uid(target))
        built = [s for s in target.services if s.container]
        if built and (src := self._podman(source)) and (uid := self._uid(target)) is not None:
            dst = programs.podman(self.layout, target, uid, programs.allocate_ports(self.layout, target))
            containers.copy_images(src, dst, [containers.image(s, source.release) for s in built])

    def prune_releases(self, spec: DeploymentSpec, keep: set[str]) -> None:
        code.prune(self.layout.releases(spec), keep)
        if tool := self._podman(spec):
            containers.prune(tool, [s for s in spec.services if s.container], keep)

    def update_code(self, spec: DeploymentSpec, pull: bool) -> CodeState:
        checkout = self.layout.code(spec)
        if not (checkout / ".git").exists():
            return CodeState(spec.commit)
        ports = programs.allocate_ports(self.layout, spec)
        return code.fast_forward(checkout, spec.branch, pull, self._git(spec, self.jail(spec, ports)))

    # --- operate ------------------------------------------------------------------------------

    def route(self, spec: DeploymentSpec) -> None:
        self._publish(spec, self.layout.read_json(spec, "ports.json"))

    def set_enabled(self, spec: DeploymentSpec, enabled: bool) -> None:
        if spec.services:
            self.apply(replace(spec, enabled=enabled))
        else:
            self._start_or_stop(spec, enabled)

    def describe(self, spec: DeploymentSpec, service: str) -> list[tuple[str, str]]:
        spec.service(service)
        run_path = self.layout.run_file(spec, service)
        if not run_path.exists():
            return [("State", "not set up yet: it has not been provisioned")]
        run = json.loads(run_path.read_text())
        program = self.layout.program(spec, service)
        proc = self.supervisor.process_info([program]).get(program, {})
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(proc["start"])) if proc.get("start") else "—"
        limits = "none (this machine gives deployments no cgroup)"
        if run.get("cgroups"):
            limits = (
                f"memory {settings.DIPLOI_LOCAL_MEMORY_MIB} MiB, CPU {settings.DIPLOI_LOCAL_CPU_PERCENT}% of a core, "
                f"{settings.DIPLOI_LOCAL_PROCESSES} processes (for the whole deployment)"
            )
        exits = f"restarted {self.supervisor.restarts().get(program, 0)}× by the supervisor"
        if proc.get("exitstatus") or proc.get("spawnerr"):
            exits += f"; last exit status {proc.get('exitstatus')}{' — ' + proc['spawnerr'] if proc.get('spawnerr') else ''}"
        container = (
            [("Container", f"{run['container']['name']}, image {run['container']['image']} (podman, rootless, as uid {self._uid(spec)})")]
            if run.get("container")
            else []
        )
        return [
            *container,
            ("Command", run["command"]),
            ("Runs before it", "; ".join(run.get("before", [])) or ("building the image" if run.get("steps") else "—")),
            ("Working folder", run["cwd"]),
            ("Environment", ", ".join(sorted(run["env"]))),
            (
                "Confinement",
                f"sandboxed as uid {run['owner']}" if run.get("sandbox") else "in its container" if container else "not sandboxed",
            ),
            ("Limits", limits),
            ("State", f"{proc.get('statename', 'unknown')} — {proc.get('description', '')}".rstrip(" —")),
            ("PID", str(proc.get("pid") or "—")),
            ("Started", started),
            ("Recent exits", exits),
        ]

    def addresses(self, spec: DeploymentSpec) -> dict[str, dict[str, str]]:
        ports = self.layout.read_json(spec, "ports.json")
        return {s.identifier: programs.context(self.layout, spec, s, ports) for s in spec.services}

    def restart(self, spec: DeploymentSpec, service: str) -> None:
        """In place; a staging/production component behind the router without a moment of downtime (`_roll`)."""
        svc = spec.service(service)
        program = self.layout.program(spec, service)
        running = self.supervisor.process_info([program]).get(program, {}).get("statename") == "RUNNING"
        current = self._sections(spec)
        if self.router and spec.enabled and programs.rolls(spec, svc) and running and service in current:
            ports = programs.allocate_ports(self.layout, spec)
            kept = self._roll(spec, [svc], current, current, ports, self.jail(spec, ports), restart=True)
            self._write_programs(spec, current, *kept)
        else:
            self.supervisor.restart_process(program)

    def copy_storage(self, source: DeploymentSpec, target: DeploymentSpec) -> None:
        self._disk(target)
        parts = ["storage"] + (["code"] if target.stage == "development" and source.stage == "development" else [])
        for part in parts:
            src, dst = self.home(source) / part, self.home(target) / part
            if not src.is_dir() or dst.exists():
                continue
            tmp = dst.with_name(f".{part}.copy")
            shutil.rmtree(tmp, ignore_errors=True)
            sandbox.copy_tree(src, tmp, self._uid(target))
            tmp.rename(dst)

    def destroy(self, spec: DeploymentSpec) -> None:
        home = self.home(spec)
        if router := self.router:
            link = settings.SITE_URL + reverse("deployments:project", args=[spec.project_slug])
            router.show_page(spec.id, page(f"{spec.slug} is being deleted", "Its services and storage are being removed.", link))
        if self.supervisor.running():
            for group in self.supervisor.groups_with_prefix(self.layout.group(spec)):
                self.supervisor.stop_group(group)
        conf = home / "supervisor.conf"
        if conf.exists():
            conf.unlink()
            if self.supervisor.running():
                self.supervisor.update()
        if tool := self._podman(spec):  # its containers, images, volumes and networks, then its account
            containers.remove(tool)
        _kill_processes_of(home)
        disks.release(home)
        shutil.rmtree(home, ignore_errors=True)
        if home.exists():  # something was still writing into it
            _kill_processes_of(home)
            shutil.rmtree(home)
        if not sandbox.cgroups_available() and (uid := self._uid(spec)) is not None:
            sandbox.remove_cgroup(uid)
        if router:
            router.remove(spec.id)

    # --- observe ------------------------------------------------------------------------------

    def observe(self, specs: list[DeploymentSpec]) -> dict[int, Observation]:
        """A few deployments (a deployment waiting to answer, a page's Describe) are looked at alone: their
        programs' states and process trees; more (the monitor's tick), in one pass over everything."""
        few = len(specs) <= FEW
        try:
            info: dict[str, dict] | None = self.supervisor.process_info(self._programs(specs) if few else None)
        except TransientFailure:
            info = None  # every container is reported red below, with the reason
        restarts = self.supervisor.restarts()
        usage = self.usage.read([p["pid"] for p in (info or {}).values() if p.get("pid")] if few else None)
        checks = []
        partial = {}
        for spec in specs:
            problems = self.layout.read_json(spec, "problems.json")
            ports = self.layout.read_json(spec, "ports.json")
            containers, storage = [], []
            for service in spec.services:
                name = self.layout.program(spec, service.identifier)
                proc = (info or {}).get(name)
                problem = problems.get(service.identifier) or (None if info is not None else "the process supervisor is not running")
                state = container_state(service, proc, problem, restarts.get(name, 0), spec.enabled, usage)
                if proc and proc["statename"] in CRASHED:  # what the process said last, not "see the log"
                    state = with_last_words(state, self.layout.log_file(spec, service.identifier))
                elif proc and proc["statename"] == "RUNNING":
                    state = preparing(state, self.layout.phase_file(spec, service.identifier))
                    if state.colour == Colour.RED:  # its install failed: what it said last
                        state = with_last_words(state, self.layout.log_file(spec, service.identifier))
                containers.append(state)
                for volume in service.volumes:
                    storage.append(self._volume_state(spec, service, volume))
                port = service.ports and ports.get(service.identifier, {}).get(service.ports[0].name)
                if proc and proc["statename"] in HEALTH_CHECKED and port:
                    checks.append((spec.id, service, f"127.0.0.1:{port}", float(proc.get("start") or 0)))
            storage.append(self._disk_state(spec))
            partial[spec.id] = (tuple(storage), tuple(containers))
        services = service_states(specs, checks)
        return {
            spec.id: Observation(storage=partial[spec.id][0], containers=partial[spec.id][1], services=services[spec.id]) for spec in specs
        }

    def _programs(self, specs: list[DeploymentSpec]) -> list[str]:
        return [self.layout.program(spec, s.identifier) for spec in specs for s in spec.services]

    def _volume_state(self, spec: DeploymentSpec, service: ServiceSpec, volume: VolumeSpec) -> ItemState:
        """Present or missing at every look; what it holds measured at most once a minute (it walks the files)."""
        name, path = f"{service.identifier}/{volume.name}", self.layout.volume_dir(spec, service, volume.name)
        return self._measured((spec.id, name), lambda: volume_state(name, path, volume.size), again=not path.is_dir(), red_again=True)

    def _disk(self, spec: DeploymentSpec) -> None:
        """Its folder, on a filesystem of its own when it runs as a uid of its own (disks.py)."""
        if self._uid(spec) is None or disks.available():
            self.home(spec).mkdir(parents=True, exist_ok=True)
            return
        try:
            if not disks.ensure(self.home(spec), _disk_allowance()):
                log.warning("deployment %s: its folder predates disk images; its disk is not limited", spec.id)
        except disks.DiskFailed as e:
            raise RuntimeFailure(f"its disk could not be set up: {e}") from None

    def _disk_state(self, spec: DeploymentSpec) -> ItemState:
        """Its filesystem's use (a statvfs, every look); without one, measured at most once a minute (it
        walks every file)."""
        if (use := disks.usage(self.home(spec))) is not None:
            return filesystem_state(use.used, use.size, use.full)
        return self._measured((spec.id, "disk"), lambda: disk_state(self.home(spec), _disk_allowance()))

    def _measured(self, key: tuple[int, str], measure: Callable[[], ItemState], again: bool = False, red_again: bool = False) -> ItemState:
        """`measure()`, kept for DISK_MEASURE_SECONDS unless `again` (or `red_again` and it was red)."""
        at, state = self._sizes.get(key, (0.0, None))
        red = red_again and state is not None and state.colour == Colour.RED
        if again or red or state is None or time.monotonic() - at > DISK_MEASURE_SECONDS:
            state = measure()
            self._sizes[key] = (time.monotonic(), state)
        return state

    # --- logs and shells ----------------------------------------------------------------------

    def logs(
        self,
        spec: DeploymentSpec,
        service: str,
        follow: bool = False,
        since: int | None = None,
        tail: int = 200,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        spec.service(service)
        return read_log(self.layout.log_file(spec, service), follow, since, tail, stop or threading.Event())

    def open_shell(self, spec: DeploymentSpec, service: str, command: str | None, pty: bool) -> LocalShell:
        svc = spec.service(service)
        # a shell in its running container; SFTP (sftp-server, which an image seldom has) on the code its
        # development container mounts, in the deployment's sandbox as for any component
        if (svc.container or svc.image_run) and command != self.sftp_command and (tool := self._podman(spec)):
            args = ["exec", "-i", *(["-t"] if pty else []), "-e", "TERM=xterm-256color", containers.container_name(svc), "/bin/sh"]
            argv = tool.argv(*args, *(["-c", command] if command else ["-i"] if pty else []))
            jail = self.jail(spec, programs.allocate_ports(self.layout, spec))
            return LocalShell(argv, Path("/"), dict(sandbox.OUTER_ENV), pty, jail.preexec() if jail else None)
        cwd = self.layout.working_dir(spec, svc)  # SFTP too: `ssh … cat app.py` and `sftp … get app.py` name the same file
        if not cwd.is_dir():
            raise RuntimeFailure(f"{service} has no working directory yet; is the deployment running?")
        argv = ["/bin/sh", "-c", command] if command else ["/bin/sh", "-i" if pty else "-s"]
        ports = programs.allocate_ports(self.layout, spec)
        jail = self.jail(spec, ports)
        env = {**programs.environment(self.layout, spec, svc, ports, jail), "TERM": "xterm-256color"}
        if jail:  # bubblewrap (root) starts from "/" and enters the folder inside; the env reaches only the command
            # one file per session: sessions that start together never bind a file another one is replacing
            env_file = sandbox.write_env(self.home(spec) / "run" / f"{service}.session.{secrets.token_hex(8)}.env", env, jail.uid)
            argv = jail.sandbox(self.layout.files_root(spec, svc), cwd, service=service, terminal=pty, env_file=env_file).argv(argv)
            env = dict(sandbox.OUTER_ENV)
            return LocalShell(argv, Path("/"), env, pty, jail.preexec(), leftover=env_file)
        return LocalShell(argv, cwd, env, pty)

    def files_root(self, spec: DeploymentSpec, service: str) -> Path:
        root = self.layout.files_root(spec, spec.service(service))
        if not root.is_dir():
            raise RuntimeFailure(f"{service} has no files yet; is the deployment running?")
        return root

    def files_start(self, spec: DeploymentSpec, service: str) -> str:
        svc = spec.service(service)
        folder = self.layout.working_dir(spec, svc).relative_to(self.layout.files_root(spec, svc))
        return "" if folder == Path(".") else str(folder)

    def open_forward(self, spec: DeploymentSpec, service: str, host: str, port: int) -> SocketTunnel:
        """The declared port is the deployment's own allocated port on this machine."""
        ports = programs.allocate_ports(self.layout, spec)
        for svc, declared in forward_candidates(spec, service, host, port):
            if declared.name in ports.get(svc.identifier, {}):
                try:
                    sock = socket.create_connection(("127.0.0.1", ports[svc.identifier][declared.name]), timeout=10)
                except OSError as e:
                    raise Unreachable(f"{host}:{port} is not answering: {e}") from None
                sock.settimeout(None)
                return SocketTunnel(sock)
        raise RuntimeFailure(f"{host}:{port} is not a port of this deployment")


def _disk_allowance() -> int:
    """Bytes a deployment may use (DIPLOI_LOCAL_DISK_MIB): the largest file, and the red line of its disk item."""
    return settings.DIPLOI_LOCAL_DISK_MIB * 1024 * 1024


def _kill_processes_of(home: Path) -> None:
    """Safety net: kill any process that still runs for this deployment (or in one of its folders)."""
    for p in processes_of(home):
        try:
            p.kill()
        except psutil.Error:
            pass
