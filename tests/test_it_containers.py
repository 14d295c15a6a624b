"""Components built from their own Dockerfile and run as containers with podman, rootless, as their
deployment: beside a PostgreSQL add-on, in development (the code mounted at /app, Dockerfile.dev) and
in production (an image per release: build, rollback, promote), reached over SSH's session path, and
deleted without a trace. No registry is reachable here: the base image is a static busybox, imported
and saved into the folder DIPLOI_CONTAINER_IMAGES names."""

import os
import pwd
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from deployments.actions import do_create_deployment, do_delete, do_deploy, do_promote, do_rollback
from deployments.models import Build, BuildStatus, Deployment, State
from deployments.provisioning import tasks
from deployments.provisioning.spec import current_spec
from deployments.runtimes.local import containers, sandbox
from tests.conftest import asking, http_get, https_request, publish, wait_until
from tests.images import BUSYBOX, busybox_archive
from tests.test_it_starters import import_starter, told

pytestmark = pytest.mark.skipif(
    bool(containers.available()) or not BUSYBOX.exists(), reason=containers.available() or "busybox-static is needed for the base image"
)


@pytest.fixture(scope="session")
def base_images(tmp_path_factory) -> Path:
    return busybox_archive(tmp_path_factory.mktemp("busybox"))


@pytest.fixture
def container_runtime(runtime, settings, git_daemon, base_images, tmp_path):
    """The runtime, its data directory where a deployment's podman can pass through (not under pytest's
    private folder)."""
    settings.DIPLOI_CONTAINER_IMAGES = str(base_images)
    yield runtime
    # What a failed test left: its deployments' containers and accounts (a delete removes them itself).
    runtime.supervisor.shutdown()
    base = sandbox.uid_base(runtime.data_dir)
    for entry in pwd.getpwall():
        if entry.pw_name == containers.account_name(entry.pw_uid) and base <= entry.pw_uid < base + sandbox.UID_RANGE:
            containers.remove_account(entry.pw_uid)
            shutil.rmtree(containers.RUNROOT / str(entry.pw_uid), ignore_errors=True)


@pytest.fixture
def data_dir(settings, tmp_path):
    """(overrides the suite's) a data directory whose parents other users may pass through."""
    top = Path("/var/tmp/diploi-containers-tests")
    top.mkdir(mode=0o711, exist_ok=True)
    os.chmod(top, 0o711)
    folder = top / f"{tmp_path.parent.name}-{tmp_path.name}"  # (pytest's names are per worker)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o711)
    settings.DATA_DIR = folder / "data"
    settings.DATA_DIR.mkdir(mode=0o700)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.DIPLOI_ROUTER = "off"
    yield settings.DATA_DIR
    from deployments.runtimes.local import disks

    disks.unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def started(project, stage: str, owner, runtime, name: str = "") -> Deployment:
    d = do_create_deployment(project, name or stage.title(), stage, "main", actor=owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, f"{stage}: {d.state} — {d.state_reason}\n{told(d, runtime)}"
    return d


def page(d: Deployment, path: str, runtime, timeout: float = 60) -> str:
    try:
        return wait_until(lambda: http_get(d.endpoints["web"].rstrip("/") + path, timeout=10), timeout=timeout, what=path)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{told(d, runtime)}") from None


def database_reached(d: Deployment, runtime) -> str:
    """The component's status page once it reaches its database (the add-on may still be starting when
    the component answers first, as it may be anywhere)."""

    def status() -> str | None:
        text = page(d, "/cgi-bin/status.cgi", runtime)
        return text if "database=reachable" in text else None

    return wait_until(status, timeout=60, what="the database from the container")


def shell(runtime, d: Deployment, command: str, service: str = "web") -> str:
    """What `ssh web@… <command>` runs: a command in the service's running container."""
    session = runtime.open_shell(current_spec(d), service, command, pty=False)
    out = b""
    while chunk := session.read():
        out += chunk
    err = session.read_stderr()
    assert session.close() == 0, err
    return out.decode()


def uid_of(runtime, d: Deployment) -> int:
    return sandbox.uid_of(d.pk, sandbox.uid_base(runtime.data_dir))


def test_a_dockerfile_component_with_postgres_runs_in_development(db, cast, git_daemon, container_runtime) -> None:
    base, server = git_daemon
    project = import_starter(base, server, "dockerfile-postgres", cast.owner)
    d = started(project, "development", cast.owner, container_runtime)
    assert "Hello from a Dockerfile" in page(d, "/index.html", container_runtime)
    status = database_reached(d, container_runtime)
    # $PORT is the container's own port; PostgreSQL (a process of the deployment) answers at its address
    assert "stage=development" in status and "port=8080" in status and "database=reachable" in status
    # The code is mounted at /app: a file written into the checkout is served as it is, unbuilt.
    checkout = container_runtime.layout.code(current_spec(d)) / "web"
    (checkout / "fresh.txt").write_text("written after the start\n")
    assert page(d, "/fresh.txt", container_runtime) == "written after the start\n"
    # Inside, the container's root is the deployment's own uid on this machine, never root.
    uid = uid_of(container_runtime, d)
    httpd = [p for p in psutil.process_iter(["name", "uids"]) if p.info["name"] == "httpd" and p.info["uids"].real == uid]
    assert httpd, "the container's server runs as the deployment's uid"
    # …in the deployment's cgroup (its limits) and below its supervised program (its CPU and memory figures)
    if not sandbox.cgroups_available():
        assert f"/diploi/u{uid}" in Path(f"/proc/{httpd[0].pid}/cgroup").read_text()
    program = container_runtime.layout.program(current_spec(d), "web")
    pid = container_runtime.supervisor.process_info([program])[program]["pid"]
    assert any(p.pid == pid for p in httpd[0].parents()), "the container's processes stay below the service's program"
    assert ("Container", f"web, image localhost/web:development (podman, rootless, as uid {uid})") in container_runtime.describe(
        current_spec(d), "web"
    )
    assert shell(container_runtime, d, "id -u; pwd").split() == ["0", "/app/web"]
    # What the container prints is the component's log (the Logs tab).
    assert "web: serving /app/web on port 8080" in "".join(container_runtime.logs(current_spec(d), "web", follow=False))


def test_a_dockerfile_component_is_built_per_release_rolled_back_and_promoted(db, cast, git_daemon, container_runtime) -> None:
    base, server = git_daemon
    project = import_starter(base, server, "dockerfile-postgres", cast.owner)
    prod = started(project, "production", cast.owner, container_runtime)
    assert "Hello from a Dockerfile" in page(prod, "/index.html", container_runtime)
    assert page(prod, "/built.txt", container_runtime) == "built as 0\n"  # RUN ran at build, as the image's root
    database_reached(prod, container_runtime)
    first = Build.objects.filter(deployment=prod, status=BuildStatus.SUCCEEDED).latest("pk")

    publish(base, "dockerfile-postgres", {"web/index.html": "<h1>Second release</h1>\n"})
    do_deploy(prod, actor=cast.owner)
    tasks.provision(prod.pk)
    prod.refresh_from_db()
    assert prod.state == State.RUNNING, told(prod, container_runtime)
    assert "Second release" in page(prod, "/index.html", container_runtime), told(prod, container_runtime)
    images = containers.Podman(
        container_runtime.data_dir, container_runtime.home(current_spec(prod)), uid_of(container_runtime, prod)
    ).images()
    assert {f"localhost/web:{first.commit}", f"localhost/web:{prod.commit}"} <= set(images)

    # A rollback runs the first release's image again, unbuilt.
    do_rollback(prod, first.pk, actor=cast.owner)
    tasks.provision(prod.pk)
    prod.refresh_from_db()
    wait_until(
        lambda: "Hello from a Dockerfile" in http_get(prod.endpoints["web"].rstrip("/") + "/index.html", timeout=10), what="the rollback"
    )
    assert Build.objects.filter(deployment=prod, trigger="rollback").latest("pk").log.count("podman build") == 0

    # A staging release promoted to another production deployment runs its image there, copied, not rebuilt.
    staging = started(project, "staging", cast.owner, container_runtime)
    release = Build.objects.filter(deployment=staging, status=BuildStatus.SUCCEEDED).latest("pk")
    other = started(project, "production", cast.owner, container_runtime, name="Second production")
    do_promote(staging, release.pk, other, actor=cast.owner)
    tasks.provision(other.pk)
    other.refresh_from_db()
    assert other.commit == release.commit and other.state == State.RUNNING, told(other, container_runtime)
    assert "Second release" in page(other, "/index.html", container_runtime)


def test_a_container_reaches_its_own_services_only_and_its_delete_leaves_nothing(
    db, cast, git_daemon, container_runtime, redis_url
) -> None:
    base, server = git_daemon
    project = import_starter(base, server, "dockerfile-postgres", cast.owner)
    d = started(project, "development", cast.owner, container_runtime)
    database_reached(d, container_runtime)
    spec = current_spec(d)
    uid, home = uid_of(container_runtime, d), container_runtime.home(spec)
    ports = container_runtime.layout.read_json(spec, "ports.json")
    pg = ports["postgres"]["postgres"] if "postgres" in ports["postgres"] else next(iter(ports["postgres"].values()))

    # As an attacker with a shell in the container: the deployment's database answers; the platform's
    # Redis, the machine's other ports and its files do not.
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    probe = "for p in {}; do if nc -w 2 10.0.2.2 $p </dev/null; then echo open $p; else echo closed $p; fi; done"
    seen = shell(container_runtime, d, probe.format(f"{pg} {redis_port} 22"))
    assert f"open {pg}" in seen and f"closed {redis_port}" in seen and "closed 22" in seen, seen
    listing = shell(container_runtime, d, f"ls {container_runtime.data_dir} 2>&1; ls /app; cat /proc/1/cmdline")
    assert "No such file" in listing and "httpd" in listing  # its own PID 1, not the machine's
    # As the deployment's uid on this machine (what podman runs as): its own folder, nothing else of the platform's.
    others = [p for p in container_runtime.data_dir.iterdir() if p.name not in ("deployments", "containers")]
    for path in [*others, *[h for h in container_runtime.layout.deployments.iterdir() if h != home]]:
        assert not path.stat().st_mode & 0o007, f"{path} is open to the deployment's uid"
    assert (
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "ls", str(home)], capture_output=True).returncode
        == 0
    )

    name = containers.account_name(uid)
    assert pwd.getpwuid(uid).pw_name == name and name in Path("/etc/subuid").read_text()
    do_delete(d, actor=cast.owner)
    tasks.destroy(d.pk)
    assert not Deployment.objects.filter(pk=d.pk).exists()
    # No container, image, volume, network or process of it is left, nor its account and ids.
    assert not home.exists()
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    assert name not in Path("/etc/subuid").read_text() and name not in Path("/etc/subgid").read_text()
    left = lambda: [
        p
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE
    ]  # noqa: E731
    assert not left(), left()  # (killed ones this machine's init has not reaped yet hold nothing)
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(home) in line]
    assert (
        not (container_runtime.data_dir / "containers" / "ports" / str(uid)).exists()
        and not containers.Podman(container_runtime.data_dir, home, uid).runroot.exists()
    )


def _accept_and_close(listener: socket.socket) -> None:
    """Answer every connection by closing it, until the listener is closed."""
    try:
        while True:
            listener.accept()[0].close()
    except OSError:
        return


def test_a_dockerfile_that_reaches_for_the_machine_is_refused_or_confined(
    db, cast, git_daemon, container_runtime, redis_url, settings
) -> None:
    base, server = git_daemon
    project = import_starter(base, server, "dockerfile-postgres", cast.owner)
    # A bind mount of the machine's files in a RUN step is refused before podman sees it, with its reason.
    reaching = "FROM localhost/busybox\nRUN --mount=type=bind,source=/etc,target=/x \\\n  cat /x/shadow\n"
    publish(base, "dockerfile-postgres", {"web/Dockerfile": reaching})
    d = do_create_deployment(project, "Production", "production", "main", actor=cast.owner)
    tasks.provision(d.pk)
    build = Build.objects.filter(deployment=d).latest("pk")
    assert build.status == BuildStatus.FAILED and "RUN --mount=type=bind is not supported here" in build.error, build.error
    # A RUN step's network is the containers' own: it reaches the ports a deployment may (a listener on
    # one of DIPLOI_OUTBOUND_PORTS, here), not the platform's Redis on this machine.
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        allowed = listener.getsockname()[1]
        threading.Thread(target=_accept_and_close, args=(listener,), daemon=True).start()
        settings.DIPLOI_OUTBOUND_PORTS = [*settings.DIPLOI_OUTBOUND_PORTS, allowed]
        probe = "for p in {} {}; do if nc -w 2 10.0.2.2 $p </dev/null; then echo reached-$p; else echo refused-$p; fi; done"
        step = probe.format(allowed, redis_port)
        publish(base, "dockerfile-postgres", {"web/Dockerfile": f'FROM localhost/busybox\nRUN {step}\nCMD ["sleep", "1000"]\n'})
        do_deploy(d, actor=cast.owner)
        tasks.provision(d.pk)
    build = Build.objects.filter(deployment=d).latest("pk")
    assert build.status == BuildStatus.SUCCEEDED, build.log
    assert f"reached-{allowed}" in build.log and f"refused-{redis_port}" in build.log, build.log
    assert containers.dockerfile_problem("FROM docker-archive:/root/secret.tar\n")
    assert containers.dockerfile_problem("FROM 127.0.0.1:6379/x\n") and containers.dockerfile_problem(
        "COPY --from=localhost:5000/x /a /b\n"
    )
    assert containers.dockerfile_problem("FROM busybox\nRUN echo hi\nCOPY --from=builder /a /b\n") is None
    # …and by a name that resolves to this machine, or an address written otherwise (podman pulls outside the port rules)
    for hidden in ("localhost:6379/x", "[::1]:6379/x", "[::ffff:127.0.0.1]:6379/x", "0.0.0.0:80/x", "169.254.169.254/x"):
        assert "not supported" in (containers.dockerfile_problem(f"FROM {hidden}\n") or ""), hidden
    assert containers.registry_problem("ghcr.io/diploi/x:main") is None and containers.registry_problem("localhost/busybox") is None


def test_a_new_release_of_a_container_takes_over_without_a_failed_request(
    db, cast, git_daemon, container_runtime, router, settings
) -> None:
    """Behind the router, a client asks continuously while production rolls to a new release's image and
    restarts: every answer is a 200 of a release that passed its health check."""
    settings.DIPLOI_RELEASE_DRAIN, settings.DIPLOI_READY_TIMEOUT = 1, 30
    base, server = git_daemon
    project = import_starter(base, server, "dockerfile-postgres", cast.owner)
    d = started(project, "production", cast.owner, container_runtime)
    port, root = settings.DIPLOI_HTTPS_PORT, router.router.root_certificate
    host = d.endpoints["web"].split("//", 1)[1].split(":", 1)[0]
    wait_until(lambda: https_request(port, host, "/index.html", cafile=root)[0] == 200, what="the first release behind the router")
    with asking(port, host, root, "/index.html") as answers:
        publish(base, "dockerfile-postgres", {"web/index.html": "<h1>Second release</h1>\n"})
        do_deploy(d, actor=cast.owner)
        tasks.provision(d.pk)
        d.refresh_from_db()
        assert d.state == State.RUNNING and not d.state_reason, f"{d.state_reason}\n{told(d, container_runtime)}"
        wait_until(lambda: "Second release" in answers[-1][1], what="the second release to serve")
        tasks.restart(d.pk, "web")  # a restart of the component rolls the same way
        count = len(answers)
        wait_until(lambda: len(answers) > count + 20, what="answers after the restart")
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    assert len(answers) > 50


def test_a_container_package_installs_first_and_restarts_when_the_code_changes(db, cast, git_daemon, container_runtime) -> None:
    """A package of the repository's own (./pkg) with local.container, an install step and reload: in
    development the install runs in the image on the mounted code first, and a changed file restarts
    the container."""
    base, server = git_daemon
    project = import_starter(base, server, "container-package", cast.owner)
    d = started(project, "development", cast.owner, container_runtime)
    site = lambda path: http_get(d.endpoints["site"].rstrip("/") + path, timeout=10)  # noqa: E731
    assert wait_until(lambda: site("/installed.txt"), what="the install's file") == "installed by 0 in /app/site\n"
    first = wait_until(lambda: site("/cgi-bin/started.cgi").strip(), what="the container's start")
    checkout = container_runtime.layout.code(current_spec(d)) / "site"
    (checkout / "index.html").write_text("<h1>Second version</h1>\n")
    again = wait_until(lambda: (s := site("/cgi-bin/started.cgi").strip()) != first and s, timeout=60, what="a restart")
    assert again != first and "Second version" in site("/index.html")


ROBOT = ("robot", "s3cret-token")


@pytest.fixture
def private_registry(base_images, tmp_path, settings):
    """A real registry holding `private/base:1` (the busybox image), reached by podman only through a
    gate that asks for a login (Basic, as a registry with htpasswd does), on this machine's non-loopback
    address (loopback registries are refused), over HTTP (DIPLOI_CONTAINER_INSECURE_REGISTRIES).
    Yields (host, the logins the gate saw)."""
    import base64
    import http.client
    import http.server

    from tests.images import push_archive, registry_binary

    binary = registry_binary()
    if binary is None:
        pytest.skip("Go is needed to build the test registry")
    addresses = [a.address for nic in psutil.net_if_addrs().values() for a in nic if a.family == socket.AF_INET]
    address = next((a for a in addresses if not a.startswith("127.")), None)
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve a registry on")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = subprocess.Popen([str(binary), "-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[str] = []
    wanted = "Basic " + base64.b64encode(":".join(ROBOT).encode()).decode()

    class Gate(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            given = self.headers.get("Authorization", "")
            seen.append(given)
            if given != wanted:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host", "connection")}
            upstream.request(self.command, self.path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            upstream.close()

        do_GET = do_HEAD = _relay

        def log_message(self, *args) -> None:
            pass

    gate = http.server.ThreadingHTTPServer((address, 0), Gate)
    threading.Thread(target=gate.serve_forever, daemon=True).start()
    host = f"{address}:{gate.server_address[1]}"
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/v2/", timeout=2) is not None, timeout=30, what="the registry")
        push_archive(base_images / "busybox.tar", f"127.0.0.1:{port}/private/base:1", tmp_path / "push")
        settings.DIPLOI_CONTAINER_INSECURE_REGISTRIES = [host]
        yield host, seen
    finally:
        gate.shutdown()
        gate.server_close()
        registry.terminate()
        registry.wait(timeout=10)


def test_a_private_base_image_is_pulled_with_the_projects_registry_login(db, cast, git_daemon, container_runtime, private_registry) -> None:
    from deployments.actions import do_set_registry_credential
    from projects.models import Membership, Project, Role
    from projects.stack import refresh_stack

    host, seen = private_registry
    base, server = git_daemon
    dockerfile = f'FROM {host}/private/base:1\nCOPY . /app\nWORKDIR /app\nCMD ["sh", "-c", "exec httpd -f -p \\"$PORT\\" -h /app"]\n'
    publish(
        base,
        "private-base",
        {
            "diploi.yaml": "diploiVersion: v1.0\ncomponents:\n  - {name: Web, identifier: web, folder: /web, package: dockerfile}\n",
            "web/Dockerfile": dockerfile,
            "web/index.html": "<h1>Built on a private image</h1>\n",
        },
    )
    repository = f"{server}/private-base.git"
    project = Project.objects.create(name="Private base", slug="private-base", repository=repository, default_branch="main")
    Membership.objects.create(project=project, user=cast.owner, role=Role.OWNER)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors

    # Without a login the registry refuses the pull: the build fails and says why.
    d = do_create_deployment(project, "Production", "production", "main", actor=cast.owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    build = Build.objects.filter(deployment=d).latest("pk")
    assert d.state == State.FAILED and build.status == BuildStatus.FAILED, told(d, container_runtime)
    assert "unauthorized" in build.log.lower() or "authentication required" in build.log.lower(), build.log[-2000:]

    # With the project's login, the same commit builds on it and serves.
    do_set_registry_credential(project, host, *ROBOT, actor=cast.owner)
    do_deploy(d, actor=cast.owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, f"{d.state_reason}\n{told(d, container_runtime)}"
    assert "Built on a private image" in page(d, "/index.html", container_runtime)
    assert len([s for s in seen if s.startswith("Basic ")]) >= 2  # (the gate let only the project's login through)
    # The login is the deployment's uid's alone, in its container storage's folder (no container mounts it).
    auth = containers.Podman(container_runtime.data_dir, container_runtime.home(current_spec(d)), uid_of(container_runtime, d)).auth_file
    assert (auth.stat().st_uid, auth.stat().st_mode & 0o777) == (uid_of(container_runtime, d), 0o600)
    assert shell(container_runtime, d, "ls /app").split() == ["Dockerfile", "index.html"]


DIPLOI_PACKAGE = """\
diploiVersion: v1.0
type: component
name: Web in Diploi's shape
hosts:
  - {name: Web, identifier: app, port: 8080}
images:
  - {identifier: app, prebuildImage: 'registry.example.com/diploi/component-web:[tag]'}
"""
# Written the way Diploi's components write theirs: the repository is the context, FOLDER says where
# the component is in it, and the image names a user of its own.
DIPLOI_DOCKERFILE = """\
FROM localhost/busybox
ARG FOLDER=/app
COPY . /app
WORKDIR ${FOLDER}
USER 1000:1000
CMD ["sh", "-c", "exec httpd -f -p \\"$PORT\\" -h ."]
"""
DIPLOI_DOCKERFILE_DEV = """\
FROM localhost/busybox
ARG FOLDER=/app
WORKDIR ${FOLDER}
USER 1000:1000
CMD ["sh", "-c", "echo dev > mode.txt && exec httpd -f -p \\"$PORT\\" -h ."]
"""


def test_a_diploi_component_without_a_recipe_runs_its_own_dockerfiles(db, cast, git_daemon, container_runtime) -> None:
    """A package of Diploi's (no `local:` block, no recipe here) whose component folder carries its
    Dockerfile and Dockerfile.dev, as Diploi's templates do: the component is their image, built with the
    repository as the context and FOLDER=/app/<folder>; in development the checkout is at /app."""
    from projects.models import Membership, Project, Role
    from projects.stack import refresh_stack

    base, server = git_daemon
    publish(base, "component-web", {"diploi.yaml": DIPLOI_PACKAGE})
    stack = f"diploiVersion: v1.0\ncomponents:\n  - {{name: Web, identifier: web, package: '{server}/component-web.git#main'}}\n"
    web = {"web/Dockerfile": DIPLOI_DOCKERFILE, "web/Dockerfile.dev": DIPLOI_DOCKERFILE_DEV, "web/index.html": "<h1>Diploi's shape</h1>\n"}
    publish(base, "diploi-shaped", {"diploi.yaml": stack, **web})
    project = Project.objects.create(name="Shaped", slug="shaped", repository=f"{server}/diploi-shaped.git", default_branch="main")
    Membership.objects.create(project=project, user=cast.owner, role=Role.OWNER)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors
    assert "a container built from <code>Dockerfile</code>" in cast.client(cast.owner).get("/projects/shaped/").content.decode()

    prod = started(project, "production", cast.owner, container_runtime)
    assert "Diploi's shape" in page(prod, "/index.html", container_runtime)
    # the whole repository was the context; the image's own user runs it
    assert shell(container_runtime, prod, "ls /app; id -u").split() == ["diploi.yaml", "web", "1000"]

    dev = started(project, "development", cast.owner, container_runtime)
    assert page(dev, "/mode.txt", container_runtime) == "dev\n"  # Dockerfile.dev's command, in the checkout
    checkout = container_runtime.layout.code(current_spec(dev)) / "web"
    assert (checkout / "mode.txt").stat().st_uid == uid_of(container_runtime, dev)  # written as the deployment
