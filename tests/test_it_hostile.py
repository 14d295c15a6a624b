"""What a tenant writes is never run, trusted or followed by the platform. A hostile project
(tests/hostile/) plants every trap git offers in its development checkout — hooks, fsmonitor, filters
with attributes, ssh/pager/upload-pack commands, a link to the platform's secret key — from its running
service and from an SSH session, and its build steps leave links, a setuid program and a FIFO in their
releases. Then the platform does all it does with that code: Deploy latest, a polled push, a webhook
push, a branch switch, a clone with storage, a promote and a rollback. Every trap that fires runs as the
deployment (its uid, in its sandbox: the platform's data directory out of sight); nothing appears
outside; everything in the deployment's folders is the deployment's. With confinement switched off the
same traps reach the platform (so this test can fail).

As a regular user there is no uid per deployment: traps run as the platform's user, but inside the
sandbox (the data directory out of sight) — what that path can enforce."""

import hashlib
import hmac
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from deployments import actions
from deployments.models import Deployment, EnvVar, State, Trigger, Webhook
from deployments.provisioning import tasks
from deployments.provisioning.spec import current_spec
from deployments.runtimes.local import sandbox
from projects.git import run_git
from projects.sample import commit_all
from tests.conftest import http_get, provision_again, session_output, wait_until
from tests.test_it_confinement import hostile  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(sandbox.available() != "", reason=f"no sandbox on this machine: {sandbox.available()}")


def deploy(cast, data_dir: Path, name: str, stage: str = "development", plant: bool = True) -> Deployment:
    d = actions.do_create_deployment(cast.project, name, stage, "main", actor=cast.developer)
    EnvVar.objects.create(deployment=d, key="P_DATA", value=str(data_dir))
    if plant:
        EnvVar.objects.create(deployment=d, key="P_PLANT", value="1")
    provision_again(d.pk)
    d = Deployment.objects.select_related("release", "project").get(pk=d.pk)
    assert d.state == State.RUNNING, d.state_reason
    return d


def push(repo: Path, text: str) -> str:
    (repo / "CHANGES").write_text(text)
    return commit_all(repo, text)


def own_uid(runtime, d: Deployment) -> int:
    """Who the deployment's processes run as: its own uid as root, else the platform's user."""
    return sandbox.uid_of(d.pk, sandbox.uid_base(runtime.data_dir)) or os.geteuid()


def ran(code: Path) -> list[tuple[int, str, str]]:
    """(uid, whether the data directory was in sight, which trap) for each trap that fired."""
    path = code / ".git" / "ran"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(uid), seen, what) for uid, seen, what in (line.split(" ", 2) for line in lines)]


def webhook_push(cast, client, commit: str) -> None:
    hook = Webhook.objects.create(project=cast.project, token=uuid.uuid4().hex, secret="s3cret")
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": commit,
            "repository": {"clone_url": cast.project.repository, "html_url": "https://example.com/x", "full_name": "team/hostile"},
            "head_commit": {"id": commit, "message": "Change", "author": {"name": "Ada"}},
            "pusher": {"name": "ada"},
        }
    ).encode()
    signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature}
    r = client.post(f"/hooks/{hook.token}/", data=body, content_type="application/json", headers=headers)
    assert r.status_code == 202, r.content


def assert_all_its_own(path: Path, uid: int, top: bool = True) -> None:
    """Every file and folder under `path` (and `path` itself with `top`) belongs to `uid` (as root:
    nothing the platform left behind)."""
    if os.geteuid() != 0:
        return
    strangers = [str(p) for p in [*([path] if top else []), *path.rglob("*")] if p.lstat().st_uid != uid]
    assert strangers == [], strangers[:10]


def test_git_traps_in_a_development_checkout_run_only_as_the_deployment(cast, hostile, runtime, data_dir, client) -> None:  # noqa: F811
    repo = Path(hostile.repository)
    d = deploy(cast, data_dir, "Dev")
    spec = current_spec(d)
    code = runtime.layout.code(spec)
    uid = own_uid(runtime, d)
    # planted by the running service (a compromised dependency would do the same)
    wait_until(lambda: "service planted" in _read(code / "web" / "plant-service.out"), what="the service's traps")
    assert (code / ".git" / "hooks" / "reference-transaction").exists()

    # Deploy latest
    first = push(repo, "first")
    actions.do_deploy(d, actor=cast.developer)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.commit == first, (d.state_reason, d.code_behind)

    # planted again, from an SSH session
    status, out = session_output(runtime, spec, "web", "sh plant.sh session")
    assert status == 0 and "session planted" in out, out

    # a polled push
    second = push(repo, "second")
    assert actions.do_receive_push(cast.project, "main", second, trigger=Trigger.POLL, actor="poll") == [d]
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.commit == second, d.state_reason

    # a webhook push
    third = push(repo, "third")
    webhook_push(cast, client, third)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.commit == third, d.state_reason

    # a branch switch
    run_git("checkout", "--quiet", "-b", "other", cwd=repo)
    other = push(repo, "on another branch")
    run_git("checkout", "--quiet", "main", cwd=repo)
    actions.do_follow_branch(d, "other", actor=cast.developer)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.commit == other and d.state == State.RUNNING, d.state_reason

    # a clone with its storage (the checkout, its planted link included)
    clone = actions.do_clone(d, "Copy", "development", "other", actor=cast.developer, copy_storage=True)
    tasks.provision(clone.pk)
    clone.refresh_from_db()
    assert clone.state == State.RUNNING, clone.state_reason
    copied = runtime.layout.code(current_spec(clone))
    assert (copied / "secret-link").is_symlink() and os.readlink(copied / "secret-link") == str(data_dir / "secret_key")
    assert_all_its_own(copied, own_uid(runtime, clone))

    fired = ran(code)
    assert {what for _, _, what in fired} >= {"service:reference-transaction", "session:reference-transaction", "session:post-checkout"}
    assert {(u, seen) for u, seen, _ in fired} == {(uid, "hidden")}, fired  # as the deployment, in its sandbox
    assert sorted(p.name for p in data_dir.glob("pwned-*")) == []
    assert [p.name for p in code.glob("stolen-*")] == []
    assert_all_its_own(code, uid)

    # the developer's own git works inside, on a checkout the platform fetched into and merged
    # (once it undoes its own traps: upload-pack is its to choose)
    git_inside = "git config --unset remote.origin.uploadpack; git status --porcelain --untracked-files=no && git log -1 --format=%H"
    status, out = session_output(runtime, spec, "web", f"{git_inside} && git pull --ff-only -q origin other 2>&1 && echo pulled")
    assert status == 0 and other in out and "pulled" in out, out
    # …and its push to the repository on this machine goes through the platform's receiver
    edit = "echo edited >> index.html && git -c user.name=Dev -c user.email=dev@example.com commit -qam 'An edit over SSH'"
    status, out = session_output(runtime, spec, "web", f"{edit} && git push -q origin other 2>&1 && git rev-parse HEAD")
    assert status == 0, out
    assert run_git("rev-parse", "other", cwd=repo).decode().strip() == out.split()[-1]
    assert "still serving" in wait_until(lambda: http_get(d.endpoints["web"] + "/index.html"), what="the hostile page")


def test_without_confinement_the_same_traps_reach_the_platform(cast, hostile, runtime, data_dir, settings) -> None:  # noqa: F811
    """The traps are real: run as the platform (no sandbox), Deploy latest fires them in plain sight."""
    settings.DIPLOI_CONFINE = "off"
    repo = Path(hostile.repository)
    d = deploy(cast, data_dir, "Dev")
    code = runtime.layout.code(current_spec(d))
    wait_until(lambda: "service planted" in _read(code / "web" / "plant-service.out"), what="the service's traps")
    push(repo, "first")
    actions.do_deploy(d, actor=cast.developer)
    tasks.provision(d.pk)
    assert {seen for _, seen, _ in ran(code)} == {"visible"}
    assert list(data_dir.glob("pwned-service-*"))


def test_releases_are_copied_without_following_links_or_keeping_setuid_bits(cast, hostile, runtime, data_dir) -> None:  # noqa: F811
    repo = Path(hostile.repository)
    staging = deploy(cast, data_dir, "Staging", "staging")
    production = deploy(cast, data_dir, "Prod", "production")
    first = production.release
    tested = push(repo, "tested on staging")
    actions.do_deploy(staging, actor=cast.developer)
    tasks.provision(staging.pk)
    staging.refresh_from_db()
    assert staging.commit == tested

    actions.do_promote(staging, staging.release_id, production, actor=cast.developer)
    tasks.provision(production.pk)
    production = Deployment.objects.select_related("release").get(pk=production.pk)
    assert production.commit == tested and production.state == State.RUNNING, production.state_reason
    actions.do_rollback(production, first.pk, actor=cast.developer)
    tasks.provision(production.pk)
    production = Deployment.objects.select_related("release").get(pk=production.pk)
    assert production.commit == first.commit and production.state == State.RUNNING, production.state_reason

    spec = current_spec(production)
    uid = own_uid(runtime, production)
    for folder in (runtime.layout.releases(spec) / tested / "web", runtime.layout.files_root(spec, spec.service("web")) / "web"):
        link = folder / "secret-link"
        assert link.is_symlink() and os.readlink(link) == str(data_dir / "secret_key"), folder
        mode = (folder / "setuid-sh").lstat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID), (folder, oct(mode))
        assert not (folder / "blocking-fifo").exists() or stat.S_ISFIFO((folder / "blocking-fifo").lstat().st_mode)
    # (releases/ and scratch/ hold them: the platform's folders, never the tenant's to write)
    assert_all_its_own(runtime.home(spec) / "releases", uid, top=False)
    assert_all_its_own(runtime.home(spec) / "scratch", uid, top=False)
    assert "still serving" in wait_until(lambda: http_get(production.endpoints["web"] + "/index.html"), what="the page")


def test_a_deployment_has_a_writable_private_tmp_and_home_and_no_namespaces(cast, hostile, runtime, data_dir) -> None:  # noqa: F811
    d = deploy(cast, data_dir, "Dev", plant=False)
    spec = current_spec(d)
    command = (
        'f=$(mktemp) && echo tmp-ok; touch "$HOME/.npmrc" && echo home-$HOME; df -k /tmp | tail -1;'
        " unshare -Ur true && echo userns-allowed;"
        " python3 -c 'import os; os.unshare(os.CLONE_NEWNET)' 2>/dev/null && echo netns-allowed;"
        ' python3 -c \'import os; print("fork", os.fork() or "")\'; echo done'
    )
    status, out = session_output(runtime, spec, "web", command)
    assert "tmp-ok" in out and "home-/tmp" in out and "done" in out, out
    assert "allowed" not in out, out  # neither user nor network namespaces
    assert "fork" in out  # while forking (clone without namespace flags) still works
    size_kib = int(out.split("home-/tmp")[1].split()[1])
    assert size_kib == sandbox.TMP_BYTES // 1024
    # the host's /tmp is not where it wrote
    assert not Path("/tmp/.npmrc").exists()


@pytest.fixture
def tcp_resolver(monkeypatch, tmp_path):
    """The machine's resolver, as the sandbox sees it: a DNS server on port 53 of a loopback address that
    answers over TCP only (it knows one name)."""
    import dns.message
    import dns.rrset

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.153", 53))
    except OSError as e:
        pytest.skip(f"port 53 of 127.0.0.153: {e}")
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                query = dns.message.from_wire(conn.recv(2 + 512)[2:])
                response = dns.message.make_response(query)
                if query.question[0].name.to_text() == "app.example.test." and query.question[0].rdtype == 1:
                    response.answer.append(dns.rrset.from_text("app.example.test.", 60, "IN", "A", "192.0.2.7"))
                wire = response.to_wire()
                conn.sendall(len(wire).to_bytes(2, "big") + wire)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.153\n")
    monkeypatch.setattr(sandbox, "RESOLV_CONF", resolv)
    yield
    stop.set()
    thread.join()
    server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="a regular user's sandbox keeps UDP (one user: nothing to keep apart)")
def test_a_deployment_has_no_udp_and_resolves_names_over_tcp(cast, hostile, runtime, data_dir, tcp_resolver) -> None:  # noqa: F811
    """No UDP socket at all (so no UDP port of any number held), while names still resolve: the
    sandbox's resolv.conf asks for TCP."""
    d = deploy(cast, data_dir, "Dev", plant=False)
    command = (
        "python3 -c 'import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)' 2>&1 | tail -1;"
        " python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)' 2>&1 | tail -1;"  # MPTCP
        ' python3 -c \'import socket; print("resolved", socket.gethostbyname("app.example.test"))\''
    )
    status, out = session_output(runtime, current_spec(d), "web", command)
    assert out.count("PermissionError") == 2, out
    assert "resolved 192.0.2.7" in out, out


def test_a_push_from_inside_reaches_a_repository_on_this_machine_from_a_deep_data_directory(cast, settings, tmp_path) -> None:
    """The receiver's socket lives in the deployment's folder, whose path may be longer than a unix
    socket's may be (107 bytes)."""
    from deployments.runtimes import get_runtime

    settings.DATA_DIR = tmp_path / ("a-data-directory-deep-enough-for-a-long-socket-path-" * 2) / "data"
    settings.DATA_DIR.mkdir(parents=True)
    get_runtime.cache_clear()
    runtime = get_runtime()
    try:
        d = actions.do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
        tasks.provision(d.pk)
        d = Deployment.objects.get(pk=d.pk)
        assert d.state == State.RUNNING, d.state_reason
        assert len(str(runtime.push_socket(current_spec(d)))) > 107
        edit = "echo '# edited' >> app.py && git -c user.name=Dev -c user.email=dev@example.com commit -qam 'An edit'"
        run_git("checkout", "--quiet", "-b", "elsewhere", cwd=Path(cast.project.repository))  # (main is checked out there)
        status, out = session_output(runtime, current_spec(d), "web", f"{edit} && git push -q origin main 2>&1 && git rev-parse HEAD")
        assert status == 0, out
        assert run_git("rev-parse", "main", cwd=Path(cast.project.repository)).decode().strip() == out.split()[-1]
    finally:
        runtime.supervisor.shutdown()


EVIL_LIBRARY = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    FILE *f = fopen(MARKS, "a");
    if (f) { fprintf(f, "%d\n", (int) getuid()); fclose(f); }
    FILE *g = fopen(PWNED, "w");
    if (g) fclose(g);
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (the planted library)")
def test_the_deployments_environment_reaches_only_its_own_command(cast, hostile, runtime, data_dir, tmp_path) -> None:  # noqa: F811
    """Env vars are the deployment's to set (a developer can): LD_PRELOAD naming a library in its code
    and PATH naming its own folder first. They must reach its command, never a program the platform runs
    before the deployment's limits are in place (bubblewrap as root, setpriv, prlimit, inside.py)."""
    d = deploy(cast, data_dir, "Dev", plant=False)
    spec = current_spec(d)
    code = runtime.layout.code(spec)
    uid = own_uid(runtime, d)
    marks, pwned = code / "loaded-by", data_dir / "pwned-environment"
    source = tmp_path / "evil.c"
    source.write_text(EVIL_LIBRARY)
    defines = [f'-DMARKS="{marks}"', f'-DPWNED="{pwned}"']
    subprocess.run(["cc", "-shared", "-fPIC", *defines, "-o", str(code / "evil.so"), str(source)], check=True)
    (code / "bin").mkdir()
    for name in ("bwrap", "setpriv", "prlimit", "python3", "env"):  # what a chain would look up on PATH
        fake = code / "bin" / name
        fake.write_text(f'#!/bin/sh\necho "$(id -u) {name}" >> {marks}.path\ntouch {pwned}-{name}\nexec /usr/bin/{name} "$@"\n')
        fake.chmod(0o755)
    for path in [code, *code.rglob("*")] if os.geteuid() == 0 else []:  # as the tenant would have written them
        os.lchown(path, uid, uid)
    for key, value in (("LD_PRELOAD", str(code / "evil.so")), ("PATH", f"{code / 'bin'}:/usr/bin:/bin")):
        EnvVar.objects.create(deployment=d, key=key, value=value)
    provision_again(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, d.state_reason
    status, out = session_output(runtime, current_spec(d), "web", "echo $LD_PRELOAD; echo $PATH")
    assert status == 0 and str(code / "evil.so") in out and str(code / "bin") in out, out  # its command has them
    loaded = {int(line) for line in _read(marks).split()}
    assert loaded == {uid}, loaded  # the library ran, as the deployment only
    assert {line.split()[0] for line in _read(Path(f"{marks}.path")).splitlines()} <= {str(uid)}
    assert sorted(p.name for p in data_dir.glob("pwned-*")) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="a uid range per installation exists only when Diploi runs as root")
def test_two_installations_never_share_uids_or_cgroups(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    first, second = sandbox.uid_base(one), sandbox.uid_base(two)
    assert first != second and sandbox.uid_base(one) == first  # kept
    assert abs(first - second) >= sandbox.UID_RANGE
    assert sandbox.cgroup_dirs(first + 1) != sandbox.cgroup_dirs(second + 1)
    held = sandbox.hold_range(one, first)
    try:
        # a copy of the data directory (same range), started while the first runs: refused
        copy = tmp_path / "copy"
        copy.mkdir()
        (copy / "uid-base").write_text(str(first))
        with pytest.raises(sandbox.RangeInUse, match="in use by another running Diploi"):
            sandbox.hold_range(copy, sandbox.uid_base(copy))
        other = sandbox.hold_range(two, second)  # another range: fine
        other.close()
    finally:
        held.close()
    sandbox.hold_range(copy, first).close()  # free again once the first stopped


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
