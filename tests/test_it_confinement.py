"""A hostile deployment (tests/hostile/) tries to reach the platform and another deployment from its
service, its build step and an SSH session: confined, every attempt is refused while the deployment
still serves; with confinement switched off, every attempt succeeds (so the test cannot pass for
nothing). The network probes reach for the platform's ports, another deployment's add-on, a cloud's
metadata address, a UDP service and a UDP port to hold; resource limits have tests of their own below."""

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from deployments.actions import do_create_deployment
from deployments.models import Build, Deployment, EnvVar, State
from deployments.provisioning import tasks
from deployments.provisioning.spec import current_spec
from deployments.runtimes.base import ItemState
from deployments.runtimes.local import disks, sandbox
from deployments.status.monitor import Monitor
from deployments.status.tree import derive
from projects.git import run_git
from projects.models import Project
from projects.sample import commit_all
from tests.conftest import http_get, port_free, provision_again, session_output, wait_until

HOSTILE = Path(__file__).parent / "hostile"
PROBES = (
    "secret_key",
    "encryption_key",
    "database",
    "list_deployments",
    "other_deployment",
    "other_run_file",
    "other_storage",
    "platform_environ",
    "platform_signal",
    "write_outside",
    "host_shadow",
    "supervisor_socket",
    "platform_redis",
    "platform_web",
    "other_addon",
    "cloud_metadata",
    "udp",
    "udp_bind",
)

pytestmark = pytest.mark.skipif(sandbox.available() != "", reason=f"no sandbox on this machine: {sandbox.available()}")


@pytest.fixture
def hostile(cast, tmp_path, data_dir) -> Project:
    repo = tmp_path / "hostile-repo"
    shutil.copytree(HOSTILE, repo)
    run_git("init", "--quiet", "--initial-branch", "main", cwd=repo)
    commit_all(repo, "A hostile project")
    # What a real platform keeps in its data directory, where the probes look for it.
    from cryptography.fernet import Fernet

    files = {"secret_key": "platform secret key\n", "encryption_key": Fernet.generate_key().decode(), "diploi.sqlite3": "database\n"}
    for name, text in files.items():
        if not (data_dir / name).exists():
            (data_dir / name).write_text(text)
        (data_dir / name).chmod(0o600)
    cast.project.repository = str(repo)
    cast.project.save()
    return cast.project


def deploy(cast, name: str, stage: str = "development") -> Deployment:
    d = do_create_deployment(cast.project, name, stage, "main", actor=cast.developer)
    return d


# What only root refuses (iptables; UDP sockets where a deployment has a uid of its own): as a regular
# user the platform names these gaps and serves one user only (tests/test_it_tenancy.py). There, no
# metadata stand-in can be set up either.
ROOT_ONLY = () if os.geteuid() == 0 else ("cloud_metadata", "udp", "udp_bind")
# A machine whose name server does not answer over TCP (this one's) leaves deployments UDP to resolve
# names: there the bind is a gap the docs name; test_it_hostile's TCP-only resolver covers the refusal.
if not sandbox.tcp_dns(sandbox.RESOLV_CONF):
    ROOT_ONLY += ("udp_bind",)


@pytest.fixture
def platform_ports():
    """Ports of this machine a deployment must not reach: two the platform listens on (its Redis,
    its web server), a UDP service that answers, and (as root) a stand-in for a cloud's metadata service
    at 169.254.169.254:80 (an address added to the loopback interface for the test)."""
    if os.geteuid() == 0 and shutil.which("ip") is None:
        pytest.skip("needs iproute2 (the metadata address)")
    servers = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        servers.append(s)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def answer() -> None:
        udp.settimeout(0.5)
        while not stop.is_set():
            try:
                _, peer = udp.recvfrom(16)
                udp.sendto(b"pong", peer)
            except OSError:
                continue

    threading.Thread(target=answer, daemon=True).start()
    added = False
    if os.geteuid() == 0:
        added = subprocess.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], capture_output=True).returncode == 0
        metadata = socket.socket()
        metadata.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            metadata.bind(("169.254.169.254", 80))
            metadata.listen(64)
            servers.append(metadata)
        except OSError:  # port 80 is served on every address already (a router): that answers there too
            metadata.close()
            assert not port_free(80), "169.254.169.254:80 could not be bound, and nothing answers on port 80"
    yield [s.getsockname()[1] for s in servers[:2]] + [udp.getsockname()[1]]
    stop.set()
    for s in (*servers, udp):
        s.close()
    if added:
        subprocess.run(["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"], capture_output=True)


def targets(runtime, data_dir: Path, other: Deployment, platform_ports: list[int]) -> dict[str, str]:
    other_ports = json.loads((runtime.home(current_spec(other)) / "ports.json").read_text())
    return {
        "P_DATA": str(data_dir),
        "P_DB": str(data_dir / "diploi.sqlite3"),
        "P_OTHER": str(runtime.home(current_spec(other))),
        "P_PID": str(os.getpid()),  # this test process stands for the platform's web server
        "P_REDIS_PORT": str(platform_ports[0]),
        "P_WEB_PORT": str(platform_ports[1]),
        "P_OTHER_REDIS_PORT": str(other_ports["redis"]["redis"]),
        "P_UDP_PORT": str(platform_ports[2]),
        "P_FREE_UDP_PORT": str(free_udp_port()),
    }


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def results(text: str, where: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith(f"{where} ") and ": " in line:
            name, outcome = line[len(where) + 1 :].split(": ", 1)
            found[name] = outcome
    return found


def run_probes(cast, runtime, data_dir: Path, platform_ports: list[int]) -> dict[str, dict[str, str]]:
    """The probes of the service, a build step and an SSH session of a hostile deployment."""
    other = deploy(cast, "Other")
    tasks.provision(other.pk)
    other.refresh_from_db()
    assert other.state == State.RUNNING, other.state_reason

    dev = deploy(cast, "Dev")
    prod = deploy(cast, "Prod", "production")
    for d in (dev, prod):
        for key, value in targets(runtime, data_dir, other, platform_ports).items():
            EnvVar.objects.create(deployment=d, key=key, value=value)
        provision_again(d.pk)
        d.refresh_from_db()
        assert d.state == State.RUNNING, d.state_reason

    found = {}
    code = runtime.home(current_spec(dev)) / "code" / "web"
    probe_out = code / "probe-service.out"
    text = wait_until(lambda: "service done" in _read(probe_out) and _read(probe_out), what="the service's probes")
    found["service"] = results(text, "service")
    found["build"] = results(Build.objects.get(deployment=prod).log, "build")
    code, out = session_output(runtime, current_spec(dev), "web", "sh probe.sh session")
    assert code == 0
    found["session"] = results(out, "session")
    # the deployment itself still works: its page, its add-on, its session
    assert "still serving" in wait_until(lambda: http_get(dev.endpoints["web"] + "/index.html"), what="the hostile page")

    def green() -> dict | None:
        states = {s.name: s.colour.value for s in runtime.observe([current_spec(dev)])[dev.pk].services}
        return states if set(states.values()) == {"green"} else None

    assert set(wait_until(green, what="its services green")) == {"web", "redis"}
    return found


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_a_confined_deployment_reaches_nothing_of_the_platform_or_of_another_deployment(
    cast, hostile, runtime, data_dir, platform_ports
) -> None:
    assert not runtime.unsandboxed
    found = run_probes(cast, runtime, data_dir, platform_ports)
    for where in ("service", "build", "session"):
        assert set(found[where]) == {*PROBES, *(["own_addon"] if where != "build" else [])}, (where, found[where])
        if where != "build":  # (a first build runs before its add-ons start)
            assert found[where].pop("own_addon") == "reached", where  # its own services stay reachable
        reached = [name for name, outcome in found[where].items() if outcome != "refused" and name not in ROOT_ONLY]
        assert reached == [], (where, reached)
    assert not list(data_dir.glob("pwned-*"))
    if os.geteuid() == 0:  # each deployment under a uid of its own, which owns its folders
        d = Deployment.objects.get(slug="dev")
        uid = sandbox.uid_of(d.pk, sandbox.uid_base(data_dir))
        assert (runtime.home(current_spec(d)) / "code").stat().st_uid == uid


def test_unconfined_the_same_probes_reach_everything(cast, hostile, runtime, data_dir, settings, platform_ports) -> None:
    """The probes are real: without confinement each of them gets through."""
    settings.DIPLOI_CONFINE = "off"
    found = run_probes(cast, runtime, data_dir, platform_ports)
    for where in ("service", "build", "session"):
        refused = [name for name, outcome in found[where].items() if outcome != "reached"]
        if os.geteuid() != 0:  # as a regular user /etc/shadow stays out of reach anyway; no metadata stand-in
            refused = [n for n in refused if n not in ("host_shadow", "cloud_metadata")]
        assert refused == [], (where, refused)


@pytest.mark.skipif(sandbox.cgroups_available() != "", reason="no cgroups here (Diploi not root, or none writable)")
def test_a_deployment_cannot_take_more_than_its_share(cast, hostile, runtime, settings) -> None:
    """A fork bomb and a memory hog in one deployment stop at its limits; another keeps serving."""
    settings.DIPLOI_LOCAL_PROCESSES = 40
    settings.DIPLOI_LOCAL_MEMORY_MIB = 128
    other = deploy(cast, "Other")
    tasks.provision(other.pk)
    hog = deploy(cast, "Hog")
    tasks.provision(hog.pk)
    other.refresh_from_db()
    hog.refresh_from_db()
    assert other.state == hog.state == State.RUNNING

    def session(command: str) -> tuple[int, str]:
        return session_output(runtime, current_spec(hog), "web", command)

    fork_bomb = """python3 -c '
import os, time
n = 0
try:
    while n < 1000:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped after", n, e.strerror)
'"""
    code, out = session(fork_bomb)
    assert "stopped after" in out, out
    assert int(out.split("stopped after")[1].split()[0]) < 40
    code, out = session("python3 -c 'x = bytearray(400 * 1024 * 1024); print(\"allocated\")'")
    assert code != 0 and "allocated" not in out
    for d in (other, hog):  # the other deployment, and the hog's own service too
        assert "still serving" in wait_until(lambda d=d: http_get(d.endpoints["web"] + "/index.html"), what=f"{d.name}'s page")


def test_a_deployment_that_fills_its_disk_fills_only_its_own(cast, hostile, runtime, settings) -> None:
    """As root a deployment's folder is a filesystem of its own: its writes fail with ENOSPC at its
    allowance, its status says "disk full" with numbers, a neighbour keeps serving and the dashboard
    keeps answering. Not root, no file may be larger than the allowance (RLIMIT_FSIZE) and many files
    past it turn its status red."""
    settings.DIPLOI_LOCAL_DISK_MIB = 64
    neighbour = deploy(cast, "Neighbour")
    tasks.provision(neighbour.pk)
    d = deploy(cast, "Dev")
    tasks.provision(d.pk)
    d.refresh_from_db()
    neighbour.refresh_from_db()
    spec = current_spec(d)

    def session(command: str) -> tuple[int, str]:
        return session_output(runtime, spec, "web", command)

    def disk() -> ItemState:
        runtime._sizes.clear()  # (without a filesystem of its own: measured once a minute; not now)
        return next(i for i in runtime.observe([spec])[d.pk].storage if i.name == "disk")

    if not disks.available():
        code, out = session("head -c 200M /dev/zero 2>&1 > big; echo exit=$?")
        assert "No space left on device" in out and "exit=0" not in out, out
        state = disk()
        assert state.colour.value == "red" and state.message.startswith("disk full: ") and "MiB used" in state.message, state
        assert 0.9 < disks.usage(runtime.home(spec)).size / (64 * 1024 * 1024) < 1.1  # about what it was allowed
        assert "storage disk: disk full" in derive(runtime.observe([spec])[d.pk], State.RUNNING, True).reason
        assert "still serving" in wait_until(lambda: http_get(neighbour.endpoints["web"] + "/index.html"), what="the neighbour")
        Monitor().tick()  # the monitor stores what it saw: the dashboard shows it
        page = cast.client(cast.viewer).get(d.get_absolute_url())
        assert page.status_code == 200 and "disk full" in page.content.decode()
        assert session("rm big; echo hello > small && echo written")[1].strip() == "written"
        assert disk().colour.value == "green"
        return
    code, out = session("head -c 80M /dev/zero > big; echo exit=$?; ls -l big")
    assert "exit=0" not in out and " 67108864 " in out, out  # stopped at 64 MiB
    assert session("rm big; for i in 1 2 3; do head -c 30M /dev/zero > part$i; done; echo written")[1].strip() == "written"
    state = disk()
    assert state.colour.value == "red" and "over its allowance (DIPLOI_LOCAL_DISK_MIB)" in state.message, state
    assert "storage disk:" in derive(runtime.observe([spec])[d.pk], State.RUNNING, True).reason


def test_a_build_step_has_a_time_limit(cast, hostile, runtime, settings) -> None:
    settings.DIPLOI_BUILD_STEP_TIMEOUT = 2
    d = deploy(cast, "Prod", "production")
    EnvVar.objects.create(deployment=d, key="P_SLOW_BUILD", value="60")
    provision_again(d.pk)
    d.refresh_from_db()
    build = Build.objects.get(deployment=d)
    assert d.state == State.FAILED and build.status == "failed"
    assert "did not finish within 2 s (DIPLOI_BUILD_STEP_TIMEOUT)" in build.error
