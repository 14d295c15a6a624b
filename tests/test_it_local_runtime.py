"""Deployments of the sample project run for real: supervisord, the Redis add-on, git, builds."""

import contextlib
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.core.exceptions import ValidationError

from deployments import actions
from deployments.actions import do_create_deployment
from deployments.models import Build, BuildStatus, Deployment, EnvVar, State, StateTransition
from deployments.provisioning import tasks
from deployments.provisioning.spec import current_spec
from deployments.runtimes.base import Colour
from deployments.runtimes.local.observe import processes_of
from projects.sample import commit_all
from tests.conftest import http_get, provision_again, session_output, wait_until


def visits(url: str) -> int:
    return int(re.search(r"<strong id='visits'>(\d+)</strong>", http_get(url)).group(1))


def deploy(cast, name: str, stage: str = "development") -> Deployment:
    d = do_create_deployment(cast.project, name, stage, "main", actor=cast.developer)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, d.state_reason
    return d


def test_a_development_deployment_runs_the_branch_and_reloads_edits(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    url = d.endpoints["web"]
    assert url.startswith("http://localhost:")
    first = wait_until(lambda: visits(url), what="the sample page")
    assert visits(url) == first + 1  # the counter lives in the Redis add-on
    page = http_get(url)
    assert "Stage: <span id='stage'>development</span>" in page
    assert d.commit[:10] in page

    app = runtime.home(current_spec(d)) / "code" / "web" / "app.py"
    app.write_text(app.read_text().replace("Visits:", "Hits:"))
    wait_until(lambda: "Hits:" in http_get(url), what="the edit to show")
    # The platform restarted it (the sample has no reloader of its own): a kept watcher, not a --reload flag.
    assert "diploi: files changed; restarting" in "\n".join(runtime.logs(current_spec(d), "web"))

    # The edit is the developer's: it survives a restart and another provisioning.
    tasks.restart(d.pk, "web")
    provision_again(d.pk)
    wait_until(lambda: "Hits:" in http_get(url), what="the page after a restart")
    assert [t.to_state for t in StateTransition.objects.filter(deployment=d)] == ["provisioning", "running", "provisioning", "running"]


def test_production_builds_a_release_and_keeps_it_when_a_build_fails(cast, runtime, sample_repo: Path) -> None:
    d = deploy(cast, "Prod", stage="production")
    build = d.release
    assert build.status == BuildStatus.SUCCEEDED and build.progress == 100
    assert [s["name"] for s in build.steps] == ["clone", "install", "build", "release"]
    assert all(s["status"] == "succeeded" and s["started"] and s["finished"] for s in build.steps)
    assert "Release" in build.log and "ready" in build.log
    url = d.endpoints["web"]
    wait_until(lambda: "Stage: <span id='stage'>production</span>" in http_get(url), what="the production page")
    good_commit = d.commit

    (sample_repo / "web" / "requirements.txt").write_text("this is not a requirement !!!\n")
    commit_all(sample_repo, "Break the build")
    actions.do_deploy(d, actor=cast.owner)
    tasks.provision(d.pk)

    d.refresh_from_db()
    failed = Build.objects.filter(deployment=d).first()
    assert failed.status == BuildStatus.FAILED
    assert failed.commit != good_commit
    assert [s["status"] for s in failed.steps] == ["succeeded", "failed", "queued", "queued"]
    assert "install failed" in failed.error
    assert "requirements.txt" in failed.log or "Invalid requirement" in failed.log
    assert d.release == build and d.commit == good_commit
    assert d.state == State.RUNNING and "failed" in d.state_reason and "still running" in d.state_reason
    assert good_commit[:10] in http_get(url)  # the previous release still serves


def test_a_development_deployment_installs_its_dependencies_and_again_when_they_change(cast, runtime, sample_repo: Path) -> None:
    """As Diploi's install-dependencies step: at each start of a development component (here uv and a
    requirements.txt, into the code's .venv), and again when a lockfile changes; NODE_ENV follows the
    stage and the deployment's own value overrides it."""
    (sample_repo / "web" / "requirements.txt").write_text("# nothing yet\n")
    commit_all(sample_repo, "Requirements")
    d = deploy(cast, "Dev")
    spec = current_spec(d)
    code = runtime.home(spec) / "code" / "web"
    assert (code / ".venv" / "bin" / "python").exists()
    logs = "\n".join(runtime.logs(spec, "web"))
    assert "Creating virtual environment" in logs or "Using CPython" in logs, logs
    status, out = session_output(runtime, spec, "web", 'uv --version && echo "node-env=$NODE_ENV"')
    assert status == 0 and out.startswith("uv ") and "node-env=development" in out, out

    (code / "requirements.txt").write_text("# still nothing, but changed\n")
    wait_until(lambda: "diploi: dependencies changed; installing again" in "\n".join(runtime.logs(spec, "web")), what="the new install")
    wait_until(lambda: visits(d.endpoints["web"]) is not None, what="the page after the install")

    EnvVar.objects.create(deployment=d, key="NODE_ENV", value="test")
    provision_again(d.pk)
    status, out = session_output(runtime, current_spec(d), "web", 'echo "node-env=$NODE_ENV"')
    assert "node-env=test" in out, out


def test_a_restart_starts_a_release_afresh(cast, runtime) -> None:
    d = deploy(cast, "Prod", stage="production")
    spec = current_spec(d)
    scratch = runtime.home(spec) / "scratch" / "web" / "web"
    wait_until(lambda: (scratch / "app.py").exists(), what="the scratch copy")
    (scratch / "junk.txt").write_text("written at run time")
    tasks.restart(d.pk, "web")
    wait_until(lambda: visits(d.endpoints["web"]), what="the page after restart")
    assert not (scratch / "junk.txt").exists()
    assert (runtime.home(spec) / "storage" / "redis" / "data").is_dir()  # storage stays


def test_a_killed_process_is_seen_restarted_and_counted(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    spec = current_spec(d)
    wait_until(lambda: visits(d.endpoints["web"]), what="the sample page")
    name = f"d{d.pk}-web"
    info = runtime.supervisor.process_info()[f"{name}:{name}"]
    app = next(p for p in psutil.Process(info["pid"]).children(recursive=True) if "app.py" in " ".join(p.cmdline()))
    app.kill()

    def restarted():
        web = runtime.observe([spec])[d.pk].containers[0]
        return web if web.restarts == 1 and web.colour == Colour.GREEN else None

    web = wait_until(restarted, what="the restart to be observed")
    assert "restarted 1×" in web.message
    assert runtime.supervisor.process_info()[f"{name}:{name}"]["pid"] != info["pid"]
    wait_until(lambda: visits(d.endpoints["web"]), what="the page after the crash")
    assert not psutil.pid_exists(app.pid) or psutil.Process(app.pid).status() == psutil.STATUS_ZOMBIE


def test_observe_reports_every_branch_of_the_status_tree(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    spec = current_spec(d)
    wait_until(lambda: visits(d.endpoints["web"]), what="the sample page")

    def all_green():
        o = runtime.observe([spec])[d.pk]
        return o if all(i.colour == Colour.GREEN for i in (*o.containers, *o.services, *o.storage)) else None

    o = wait_until(all_green, what="everything green")
    assert [i.name for i in o.containers] == ["web", "redis"]
    assert [i.name for i in o.storage] == ["redis/data", "disk"]
    assert o.storage[1].message.endswith(" of 10 GiB used")  # DIPLOI_LOCAL_DISK_MIB's default
    assert o.services[0].message == "HTTP 200 on /"
    assert o.containers[0].memory_bytes > 1_000_000
    assert o.containers[0].cpu_percent is not None


def test_disable_stops_and_keeps_storage_enable_starts_again(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    url = d.endpoints["web"]
    count = wait_until(lambda: visits(url), what="the sample page")
    Deployment.objects.filter(pk=d.pk).update(enabled=False)
    tasks.set_enabled(d.pk)
    assert Deployment.objects.get(pk=d.pk).state == State.STOPPED
    with pytest.raises(OSError):
        http_get(url, timeout=1)
    assert not processes_of(runtime.home(current_spec(d)))

    Deployment.objects.filter(pk=d.pk).update(enabled=True)
    tasks.set_enabled(d.pk)
    assert wait_until(lambda: visits(url), what="the page after enabling") > count  # Redis kept its data


def test_destroy_leaves_nothing_and_can_run_twice(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    home = runtime.home(current_spec(d))
    wait_until(lambda: visits(d.endpoints["web"]), what="the sample page")
    assert len(processes_of(home)) >= 2

    tasks.destroy(d.pk)
    assert not Deployment.objects.filter(pk=d.pk).exists()
    assert not home.exists()
    assert processes_of(home) == []
    assert not any(k.startswith(f"d{d.pk}-") for k in runtime.supervisor.process_info())

    tasks.destroy(d.pk)  # a redelivered task finds nothing to do
    runtime.destroy(current_spec(d))  # and the runtime is fine with nothing left


def test_a_destroy_interrupted_half_way_completes_on_retry(cast, runtime, monkeypatch) -> None:
    d = deploy(cast, "Dev")
    home = runtime.home(current_spec(d))
    import deployments.runtimes.local.runtime as local

    real_rmtree = local.shutil.rmtree

    def crash(*args, **kwargs):
        raise SystemExit("worker killed")  # what a dying worker looks like from inside the task

    monkeypatch.setattr(local.shutil, "rmtree", crash)
    with pytest.raises(SystemExit):
        tasks.destroy(d.pk)
    d.refresh_from_db()
    assert d.state == State.DELETING and home.exists()

    monkeypatch.setattr(local.shutil, "rmtree", real_rmtree)
    tasks.destroy(d.pk)
    assert not Deployment.objects.filter(pk=d.pk).exists()
    assert not home.exists() and processes_of(home) == []


def test_deleting_needs_no_shut_down_first_and_provision_ignores_it(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    d.transition(State.DELETING, "user:owner")
    tasks.provision(d.pk)  # arrives late: must not bring it back
    assert Deployment.objects.get(pk=d.pk).state == State.DELETING
    tasks.destroy(d.pk)
    assert not Deployment.objects.filter(pk=d.pk).exists()


@pytest.mark.parametrize(
    "name, branch, field, message",
    [
        ("dev", "bad..branch", "branch", "is not a valid branch name"),
        ("dev", "nope", "branch", "Branch “nope” does not exist in the repository."),
        ("---", "main", "name", "must contain at least one letter or digit"),
        ("x" * 64, "main", "name", "must be at most 63 characters"),
    ],
)
def test_bad_input_is_refused_before_anything_exists(cast, runtime, name, branch, field, message) -> None:
    with pytest.raises(ValidationError) as e:
        do_create_deployment(cast.project, name, "development", branch, actor=cast.developer)
    assert any(message in m for m in e.value.message_dict[field])
    assert not Deployment.objects.exists()
    assert not (runtime.data_dir / "deployments").exists() or not any((runtime.data_dir / "deployments").iterdir())


def test_a_duplicate_name_is_refused(cast, runtime) -> None:
    do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    with pytest.raises(ValidationError) as e:
        do_create_deployment(cast.project, "dev", "development", "main", actor=cast.developer)
    assert "already has a deployment called “dev”" in e.value.message_dict["name"][0]
    assert Deployment.objects.count() == 1


def test_a_stack_file_naming_an_unknown_package_is_refused(cast, runtime, sample_repo: Path) -> None:
    stack = sample_repo / "diploi.yaml"
    stack.write_text(stack.read_text().replace("package: python", "package: mongo"))
    commit_all(sample_repo, "Unknown package")
    with pytest.raises(ValidationError) as e:
        do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    assert "unknown package “mongo”" in e.value.message_dict["branch"][0]
    assert not Deployment.objects.exists()


def test_a_port_taken_by_another_program_is_a_clear_error(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    port = int(d.endpoints["web"].rsplit(":", 1)[1])
    Deployment.objects.filter(pk=d.pk).update(enabled=False)
    tasks.set_enabled(d.pk)
    with socket.socket() as squatter:
        # as servers do (and the platform's own check): the health checks that now precede Running
        # leave the stopped service's connections in TIME_WAIT on that port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        Deployment.objects.filter(pk=d.pk).update(enabled=True)
        provision_again(d.pk)
        d.refresh_from_db()
        assert f"port {port} (web/app) is in use by another program" in d.state_reason
        home = runtime.home(current_spec(d))
        # Nothing was started (a process still exiting from the stop above may take a moment to go).
        wait_until(lambda: not processes_of(home), timeout=15, what=f"no process of the deployment; left: {processes_of(home)}")
        assert all(i["statename"] == "STOPPED" for k, i in runtime.supervisor.process_info().items() if k.startswith(f"d{d.pk}-"))


def test_a_postgresql_that_cannot_reach_its_data_is_a_clear_red_status(cast, runtime, sample_repo: Path, settings) -> None:
    """Unconfined, PostgreSQL runs as the `postgres` user, who may not reach the data directory.
    (Confined, it runs as the deployment's own uid in a sandbox where its folder is reachable.)"""
    import os

    from deployments.runtimes.local import programs

    if os.geteuid() != 0 or programs.postgres_bin_dir() is None:
        pytest.skip("only as root, with PostgreSQL installed")
    settings.DIPLOI_CONFINE = "off"
    stack = sample_repo / "diploi.yaml"
    stack.write_text(stack.read_text().replace("addons:\n", "addons:\n  - name: DB\n    identifier: db\n    package: postgres\n"))
    commit_all(sample_repo, "Add a database")
    runtime.data_dir.parent.chmod(0o700)
    d = deploy(cast, "Dev")
    db = next(c for c in runtime.observe([current_spec(d)])[d.pk].containers if c.name == "db")
    assert db.colour == Colour.RED
    blocked = re.search(r"the user “postgres” cannot reach (\S+);", db.message).group(1)
    assert runtime.data_dir.is_relative_to(blocked)
    assert f"allow it (chmod o+x {blocked}) or run Diploi as a regular user" in db.message


def test_a_missing_postgresql_is_a_clear_red_status(cast, runtime, monkeypatch, sample_repo: Path) -> None:
    from deployments.runtimes.local import programs

    stack = sample_repo / "diploi.yaml"
    stack.write_text(stack.read_text().replace("addons:\n", "addons:\n  - name: DB\n    identifier: db\n    package: postgres\n"))
    commit_all(sample_repo, "Add a database")
    monkeypatch.setattr(programs, "postgres_bin_dir", lambda: None)
    d = deploy(cast, "Dev")
    db = next(c for c in runtime.observe([current_spec(d)])[d.pk].containers if c.name == "db")
    assert db.colour == Colour.RED
    assert db.message == "PostgreSQL is not installed on this machine (initdb and postgres were not found)"


def test_a_shell_runs_in_the_component_with_its_env(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    spec = current_spec(d)
    shell = runtime.open_shell(spec, "web", 'echo "$GREETING" && pwd && echo $REDIS_URL && exit 3', pty=False)
    out = b""
    while chunk := shell.read():
        out += chunk
    assert shell.close() == 3
    greeting, cwd, redis_url = out.decode().splitlines()
    assert greeting == "Hello from Diploi"
    assert cwd == str(runtime.home(spec) / "code" / "web")
    assert redis_url.startswith("redis://:") and "@127.0.0.1:" in redis_url

    tty = runtime.open_shell(spec, "web", None, pty=True)
    tty.resize(100, 30)
    tty.write(b"stty size; echo marker-$((6*7)); exit 0\n")
    seen = b""
    while b"marker-42" not in seen and (chunk := tty.read()):
        seen += chunk
    assert b"30 100" in seen and b"marker-42" in seen
    assert tty.close() == 0
    # What a client still sends after the end goes nowhere: the terminal's descriptor number may by
    # now belong to a file another thread opened.
    with pytest.raises(BrokenPipeError):
        tty.write(b"late keystrokes\n")
    assert tty.read() == b"" and tty.read_stderr() == b""
    tty.resize(80, 24)
    with pytest.raises(Exception, match="no component or add-on “nope”"):
        runtime.open_shell(spec, "nope", "true", pty=False)


def test_logs_tail_and_follow(cast, runtime) -> None:
    d = deploy(cast, "Dev")
    spec = current_spec(d)
    wait_until(lambda: visits(d.endpoints["web"]), what="the sample page")
    lines = wait_until(lambda: list(runtime.logs(spec, "web")), what="log lines")
    assert any(line.startswith("Listening on port") for line in lines)
    followed: list[str] = []
    stop = threading.Event()

    def follow() -> None:
        for line in runtime.logs(spec, "web", follow=True, tail=0):
            followed.append(line)
            if stop.is_set():
                return

    threading.Thread(target=follow, daemon=True).start()
    # Requests until one shows up: the reader may open the file after the first request was logged.
    wait_until(lambda: http_get(d.endpoints["web"]) and any("GET / HTTP/1.1" in line for line in followed), what="a followed line")
    stop.set()
    assert not any(line.startswith("Listening on port") for line in followed)  # tail=0: only new lines
    # The wrapper writes the log: supervisord, which supervises every deployment, does not see each line.
    supervisord = psutil.Process(int((runtime.supervisor.dir / "supervisord.pid").read_text()))
    assert str(runtime.layout.log_file(spec, "web")) not in {f.path for f in supervisord.open_files()}


def test_the_monitors_health_checks_are_not_the_samples_visits(cast, runtime) -> None:
    """The sample answers the platform's look without counting it or logging it: a new user's counter and
    log show their own visits only."""
    d = deploy(cast, "Dev")
    spec = current_spec(d)
    first = wait_until(lambda: visits(d.endpoints["web"]), what="the sample page")
    for _ in range(3):
        services = runtime.observe([spec])[d.pk].services
        assert next(s for s in services if s.name == "web").colour == Colour.GREEN
    assert visits(d.endpoints["web"]) == first + 1

    def requests() -> list[str]:  # (the wrapper writes the output to the log a moment after it is printed)
        return [line for line in runtime.logs(spec, "web", tail=1000) if "GET / " in line]

    wait_until(lambda: len(requests()) >= first + 1, what="the visits in the log")
    assert len(requests()) == first + 1, requests()


def test_provisioning_interrupted_half_way_completes_on_the_next_run(cast, runtime, monkeypatch) -> None:
    d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    real_update = runtime.supervisor.update
    monkeypatch.setattr(runtime.supervisor, "update", lambda: (_ for _ in ()).throw(SystemExit("worker killed")))
    with pytest.raises(SystemExit):
        tasks.provision(d.pk)
    assert Deployment.objects.get(pk=d.pk).state == State.PROVISIONING
    monkeypatch.setattr(runtime.supervisor, "update", real_update)
    tasks.provision(d.pk)  # the redelivered task
    d.refresh_from_db()
    assert d.state == State.RUNNING
    assert wait_until(lambda: visits(d.endpoints["web"]), what="the page") >= 1


def test_cli_status_shows_the_colour_and_the_reason(cast, runtime) -> None:
    import json
    from io import StringIO

    from django.core.management import call_command

    d = deploy(cast, "Dev")
    wait_until(lambda: visits(d.endpoints["web"]), what="the sample page")

    def status() -> dict:
        out = StringIO()
        call_command("deployments", "--user", "viewer", "status", "shop/dev", "--json", stdout=out)
        return json.loads(out.getvalue())

    s = wait_until(lambda: (s := status())["colour"] == "green" and s, what="green")
    assert s["reason"] == "Every process runs and answers"
    assert {(i["branch"], i["name"]) for i in s["items"]} == {
        ("storage", "redis/data"),
        ("storage", "disk"),
        ("containers", "web"),
        ("containers", "redis"),
        ("services", "web"),
        ("services", "redis"),
    }


@pytest.mark.skipif(
    __import__("deployments.runtimes.local.programs", fromlist=["x"]).postgres_bin_dir() is None,
    reason="PostgreSQL is not installed on this machine",
)
def test_the_postgresql_add_on_runs_and_keeps_its_data(cast, runtime, sample_repo: Path) -> None:
    stack = sample_repo / "diploi.yaml"
    stack.write_text(
        stack.read_text()
        .replace("addons:\n", "addons:\n  - name: DB\n    identifier: db\n    package: postgres\n")
        .replace("        - redis.REDIS_URL\n", "        - redis.REDIS_URL\n        - db.DATABASE_URL\n")
    )
    commit_all(sample_repo, "Add a database")
    # As root, PostgreSQL runs as the postgres user, which must be able to enter the data directory;
    # pytest makes its temporary directories private (0700).
    for parent in (runtime.data_dir, *runtime.data_dir.parents):
        if parent.owner() == "root" and str(parent).startswith("/tmp/pytest-of-"):
            parent.chmod(parent.stat().st_mode | 0o001)
    d = deploy(cast, "Dev")
    spec = current_spec(d)

    def query(sql: str) -> str:
        shell = runtime.open_shell(spec, "web", f'psql "$DATABASE_URL" -tAc "{sql}"', pty=False)
        out = b""
        while chunk := shell.read():
            out += chunk
        assert shell.close() == 0, shell.read_stderr()
        return out.decode().strip()

    wait_until(lambda: query("SELECT 1") == "1", timeout=60, what="PostgreSQL to accept connections")
    query("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept')")
    wait_until(
        lambda: next(c for c in runtime.observe([spec])[d.pk].containers if c.name == "db").colour == Colour.GREEN,
        what="the db container to be green",
    )
    tasks.restart(d.pk, "db")
    assert wait_until(lambda: query("SELECT body FROM notes"), timeout=60, what="the data after a restart") == "kept"

    # A clone with storage: the copied data directory is the clone's own (its uid, as root), and it starts.
    clone = do_create_deployment(cast.project, "Copy", "development", "main", actor=cast.developer, clone_of=d, copy_storage=True)
    tasks.provision(clone.pk)
    spec = current_spec(Deployment.objects.get(pk=clone.pk))
    assert wait_until(lambda: query("SELECT body FROM notes"), timeout=60, what="the clone's copy of the data") == "kept"


def test_a_clone_gets_a_copy_of_storage_and_env_and_the_source_keeps_running(cast, runtime) -> None:
    from deployments.models import EnvVar

    source = deploy(cast, "Dev")
    EnvVar.objects.create(deployment=source, key="GREETING", value="Cloned greeting")
    provision_again(source.pk)
    url = source.endpoints["web"]
    count = wait_until(lambda: visits(url), what="the source page")
    app = runtime.home(current_spec(source)) / "code" / "web" / "app.py"
    app.write_text(app.read_text().replace("Visits:", "Edited:"))
    wait_until(lambda: "Edited:" in http_get(url), what="the edit")
    for _ in range(5):  # what the clone's copied storage must show (well above a fresh start's count)
        visits(url)

    clone = do_create_deployment(cast.project, "Copy", "development", "main", actor=cast.developer, clone_of=source, copy_storage=True)
    tasks.provision(clone.pk)
    clone.refresh_from_db()
    assert clone.state == State.RUNNING and not clone.copy_storage_pending
    page = wait_until(lambda: http_get(clone.endpoints["web"]), what="the clone's page")
    assert "Cloned greeting" in page and "Edited:" in page  # env and the edited code came along
    clone_count = int(re.search(r"<strong id='visits'>(\d+)</strong>", page).group(1))
    assert clone_count > count  # the Redis data came along too
    assert clone.endpoints["web"] != url and visits(url) > count  # the source keeps running on its own

    fresh = do_create_deployment(cast.project, "Fresh", "development", "main", actor=cast.developer, clone_of=source, copy_storage=False)
    tasks.provision(fresh.pk)
    fresh.refresh_from_db()
    fresh_count = wait_until(lambda: visits(fresh.endpoints["web"]), what="the fresh clone's page")
    assert fresh_count <= 3 < clone_count  # its own, empty storage (the health check may have counted a visit)


def test_changing_the_branch_of_a_development_deployment_checks_it_out(cast, runtime, sample_repo: Path) -> None:
    from projects.git import run_git

    d = deploy(cast, "Dev")
    run_git("checkout", "--quiet", "-b", "feature", cwd=sample_repo)
    app = sample_repo / "web" / "app.py"
    app.write_text(app.read_text().replace("Visits:", "Feature visits:"))
    commit_all(sample_repo, "Feature")
    run_git("checkout", "--quiet", "main", cwd=sample_repo)

    code = runtime.home(current_spec(d)) / "code" / "web" / "app.py"
    code.write_text(code.read_text() + "\n# an uncommitted edit\n")
    Deployment.objects.filter(pk=d.pk).update(branch="feature")
    provision_again(d.pk)
    d.refresh_from_db()
    assert "uncommitted changes on main" in d.state_reason and d.state == State.RUNNING  # nothing lost
    assert "# an uncommitted edit" in code.read_text()

    run_git("checkout", "--quiet", "--", ".", cwd=code.parent.parent)
    provision_again(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING and d.state_reason == ""
    wait_until(lambda: "Feature visits:" in http_get(d.endpoints["web"]), what="the feature branch's page")


def test_running_means_answering(cast, runtime, sample_repo: Path, settings) -> None:
    """Provisioning says Running only once the public component answers its health check; one that
    never answers runs after DIPLOI_READY_TIMEOUT with its status saying why (yellow)."""
    from deployments.status.tree import derive

    app = sample_repo / "web" / "app.py"
    app.write_text("import time\ntime.sleep(2)  # a slow start\n" + app.read_text())
    commit_all(sample_repo, "A slow start")
    d = deploy(cast, "Dev")
    assert "Visits:" in http_get(d.endpoints["web"])  # at once: Running came after it answered
    settings.DIPLOI_READY_TIMEOUT = 2
    (sample_repo / "web" / "app.py").write_text("import time\ntime.sleep(3600)\n")  # starts, never listens
    commit_all(sample_repo, "An app that never answers")
    late = deploy(cast, "Late")
    assert late.state == State.RUNNING  # after the bounded wait
    tree = derive(runtime.observe([current_spec(late)])[late.pk], late.state, late.enabled)
    assert tree.colour.value == "yellow" and tree.reason.startswith("web:"), tree


def test_a_supervisor_that_hangs_is_a_bounded_wait_not_a_frozen_worker(tmp_path: Path, monkeypatch) -> None:
    """A socket that accepts and never answers, where supervisord's should be: each call gives up."""
    import time

    from deployments.runtimes.base import TransientFailure
    from deployments.runtimes.local import supervisor as supervisor_module
    from deployments.runtimes.local.supervisor import Supervisor

    monkeypatch.setattr(supervisor_module, "RPC_TIMEOUT", 1.0)
    sup = Supervisor(tmp_path)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(sup.sock))
    silent.listen(8)
    try:
        for call in (sup.process_info, sup.update):
            started = time.monotonic()
            with pytest.raises(TransientFailure, match="not answering"):
                call()
            assert time.monotonic() - started < 10
        assert not sup.running()
        with sup.lock(), pytest.raises(TransientFailure, match="took longer than 1 s"), Supervisor(tmp_path).lock(timeout=1):
            pass  # another process holds the lock
    finally:
        silent.close()
        sup.sock.unlink(missing_ok=True)


def test_a_crash_looping_process_shows_its_last_words(cast, runtime, sample_repo: Path, settings) -> None:
    settings.DIPLOI_READY_TIMEOUT = 1
    (sample_repo / "web" / "app.py").write_text("import sys\nprint('boom: DATABASE_URL is not set', file=sys.stderr)\nsys.exit(1)\n")
    commit_all(sample_repo, "An app that cannot start")
    d = deploy(cast, "Dev")

    def web() -> str:
        item = next(c for c in runtime.observe([current_spec(d)])[d.pk].containers if c.name == "web")
        return item.colour == Colour.RED and item.message

    message = wait_until(web, timeout=60, what="web red")
    assert "boom: DATABASE_URL is not set" in message and "may have details" not in message, message


def test_services_a_dead_supervisor_left_are_ended_before_a_new_one_starts(tmp_path: Path) -> None:
    """What supervisord runs for a service (its wrapper) is recognisable by its run file in the data
    directory; with no supervisord answering there, each is an orphan, ended with its whole group."""
    import json
    import subprocess
    import sys

    from deployments.runtimes.local.supervisor import EXEC, Supervisor

    data = tmp_path / "data"
    run = data / "deployments" / "p.d" / "run" / "web.json"
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps({"env": {"PATH": "/usr/bin:/bin"}, "cwd": str(tmp_path / "web"), "command": "sleep 300 & sleep 301"}))
    elsewhere = tmp_path / "other" / "deployments" / "p.d" / "run" / "web.json"  # another data directory's
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text(run.read_text())
    orphan = subprocess.Popen([sys.executable, str(EXEC), str(run)], start_new_session=True)
    other = subprocess.Popen([sys.executable, str(EXEC), str(elsewhere)], start_new_session=True)
    try:

        def started() -> list[psutil.Process]:  # its shell and both sleeps
            found = psutil.Process(orphan.pid).children(recursive=True)
            return found if len(found) >= 3 else []

        sleeps = wait_until(started, what="the service")
        assert Supervisor(data).end_orphans() == 1
        assert orphan.wait(timeout=5) is not None
        wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sleeps), what="its processes to end")
        assert other.poll() is None, "another data directory's service is not this one's orphan"
    finally:
        for p in (orphan, other):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


def test_a_provision_task_whose_changes_are_done_makes_no_pass(cast, runtime) -> None:
    """The task queued on create, taken after another ran the pass (or a task delivered twice), does
    nothing: the deployment does not go to provisioning and back. One left in between states (a worker
    killed mid-pass) is driven again."""
    d = deploy(cast, "Dev")
    before = StateTransition.objects.filter(deployment=d).count()
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING and StateTransition.objects.filter(deployment=d).count() == before
    Deployment.objects.filter(pk=d.pk).update(state=State.PROVISIONING)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING and StateTransition.objects.filter(deployment=d).count() == before + 2


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_saves_coalesces_and_a_delete_waits_its_turn(cast, runtime) -> None:
    """Twenty env saves while a worker provisions: their tasks return at once (another holds the
    deployment's lease) and that worker runs one more pass for all of them. A delete asked for
    meanwhile is retried until the pass ends, and the provisioning stops for it."""
    from deployments.actions import do_delete, do_save_env
    from deployments.provisioning.lease import Busy

    d = deploy(cast, "Dev")
    passes_before = StateTransition.objects.filter(deployment=d, to_state=State.PROVISIONING).count()

    def provision_in_a_worker() -> threading.Thread:
        worker = threading.Thread(target=tasks.provision, args=(d.pk,))
        worker.start()
        wait_until(lambda: Deployment.objects.get(pk=d.pk).lease_owner, what="the worker to take the lease")
        return worker

    do_save_env(d, "web", {"BURST": ("0", False)}, actor=cast.developer)
    worker = provision_in_a_worker()
    for i in range(1, 20):
        do_save_env(d, "web", {"BURST": (str(i), False)}, actor=cast.developer)
        tasks.provision(d.pk)  # what a second worker does with each save's task: nothing, at once
    worker.join(timeout=180)
    assert not worker.is_alive()
    d.refresh_from_db()
    assert d.state == State.RUNNING and d.wanted == d.provisioned and not d.lease_owner
    passes = StateTransition.objects.filter(deployment=d, to_state=State.PROVISIONING).count() - passes_before
    assert passes == 2, f"{passes} provisioning passes for 20 saves"
    spec = current_spec(d)
    shell = runtime.open_shell(spec, "web", "echo $BURST", pty=False)
    assert shell.read() == b"19\n" and shell.close() == 0

    do_save_env(d, "web", {"BURST": ("last", False)}, actor=cast.developer)
    worker = provision_in_a_worker()
    do_delete(d, actor=cast.developer)

    def destroyed() -> bool:  # as Celery retries the task while the lease is taken
        try:
            tasks.destroy(d.pk)
        except Busy:
            return False
        return True

    wait_until(destroyed, timeout=180, what="the deletion's turn")
    worker.join(timeout=180)
    assert not worker.is_alive() and not Deployment.objects.filter(pk=d.pk).exists()
    assert not runtime.layout.home(spec).exists()


def test_under_up_a_worker_waits_for_the_supervisor_instead_of_starting_a_second(tmp_path: Path, monkeypatch) -> None:
    """While `up`'s supervisord restarts the deployments' one, a worker's apply must not start its
    own daemonised supervisord: that one would outlive the platform, deployments and all."""
    import psutil

    from deployments.runtimes.base import TransientFailure
    from deployments.runtimes.local.supervisor import Supervisor

    monkeypatch.setenv("DIPLOI_SUPERVISOR_MANAGED", "1")
    with pytest.raises(TransientFailure, match="restarting"):
        Supervisor(tmp_path / "data").ensure_running(timeout=1)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


def test_updates_asked_for_together_reload_supervisord_once(cast, runtime, monkeypatch) -> None:
    """A reload reads every program; an update that finds the programs loaded as they are now (another
    caller's reload covered its change while it waited) does not reload again."""
    d = deploy(cast, "Dev")
    reloads = []
    real_rpc = runtime.supervisor.rpc

    class Counted:
        def __init__(self, rpc) -> None:
            self.rpc = rpc

        def __getattr__(self, name: str):
            if name == "reloadConfig":
                reloads.append(name)
            return getattr(self.rpc, name)

    monkeypatch.setattr(runtime.supervisor, "rpc", lambda: Counted(real_rpc()))
    runtime.supervisor.update()
    assert reloads == []  # the deploy's own update loaded them
    conf = runtime.home(current_spec(d)) / "supervisor.conf"
    conf.write_text(conf.read_text() + "\n; changed\n")
    runtime.supervisor.update()
    runtime.supervisor.update()
    assert len(reloads) == 1
    assert "visits" in http_get(d.endpoints["web"])  # still running, untouched

    # Two callers wait while another holds the lock; a third config changes while the first of them
    # reloads. The second was covered by that reload: it does not reload for the third's change.
    real_write = runtime.supervisor.write_programs

    def write_and_meanwhile_another_changes() -> str:
        text = real_write()
        conf.write_text(conf.read_text() + f"\n; changed {len(text)}\n")
        return text

    monkeypatch.setattr(runtime.supervisor, "write_programs", write_and_meanwhile_another_changes)
    conf.write_text(conf.read_text() + "\n; changed again\n")
    with runtime.supervisor.lock():
        waiting = [threading.Thread(target=runtime.supervisor.update) for _ in range(2)]
        for t in waiting:
            t.start()
        time.sleep(0.5)
    for t in waiting:
        t.join(timeout=60)
    assert len(reloads) == 2


def test_a_components_wrapper_waits_for_it_asleep(cast, runtime) -> None:
    """The wrapper (exec.py) that runs each component wakes once a second (to look at the code and at
    a stop's grace period); waiting with `Popen.wait(timeout)` woke it 20 times a second, which kept a
    core busy with 1,000 idle deployments."""
    d = deploy(cast, "Dev")
    pid = runtime.supervisor.process_info()[runtime.layout.program(current_spec(d), "web")]["pid"]

    def wakeups() -> int:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return sum(int(line.split()[1]) for line in status if line.split(":")[0].endswith("voluntary_ctxt_switches"))

    before = wakeups()
    time.sleep(3)
    assert wakeups() - before <= 12, wakeups() - before


def test_a_few_deployments_are_observed_alone_as_all_of_them_would_be(cast, runtime, monkeypatch) -> None:
    """observe() of a few deployments asks supervisord about their programs and reads their process trees;
    of many, it lists everything once. Both say the same."""
    from deployments.runtimes.local import runtime as local

    d = deploy(cast, "Dev")
    spec = current_spec(d)
    # (a deployment answers while supervisord still counts its processes' first second: settled first)
    wait_until(lambda: all(i.colour.value == "green" for i in runtime.observe([spec])[d.pk].containers), what="every process started")

    def looked(few: int) -> list[tuple]:
        monkeypatch.setattr(local, "FEW", few)
        o = runtime.observe([spec])[d.pk]
        return [(i.name, i.colour, i.message, i.memory_bytes is not None, i.cpu_percent is not None) for i in o.containers + o.services]

    alone, with_all = looked(8), looked(0)
    assert alone == with_all
    assert all(memory and cpu for *_, memory, cpu in alone if _[1] == "web")  # the component's figures, from its tree


def test_a_checkout_shares_no_file_with_the_projects_repository(cast, runtime, sample_repo: Path) -> None:
    """A local clone hardlinks the repository's objects by default: handing the checkout to the
    deployment's user would then hand it the platform's repository (and every other checkout's) too."""
    d = deploy(cast, "Dev")
    source = {(f.stat().st_dev, f.stat().st_ino) for f in (sample_repo / ".git" / "objects").rglob("*") if f.is_file()}
    checkout = {(f.stat().st_dev, f.stat().st_ino) for f in (runtime.home(current_spec(d)) / "code" / ".git").rglob("*") if f.is_file()}
    assert source and checkout and not source & checkout


def test_ports_come_from_the_configured_range_outside_the_ephemeral_one(cast, runtime, settings) -> None:
    from deployments.runtimes.base import RuntimeFailure
    from deployments.runtimes.local.programs import allocate_ports

    settings.DIPLOI_LOCAL_PORT_FIRST, settings.DIPLOI_LOCAL_PORT_LAST = 24000, 24002
    with socket.socket() as busy:  # something of the machine's listens on one of them: never given
        busy.bind(("127.0.0.1", 24001))
        busy.listen()
        d = Deployment.objects.create(project=cast.project, name="A", slug="a", branch="main", commit=cast.project.stack_commit)
        runtime.home(current_spec(d)).mkdir(parents=True)
        given = allocate_ports(runtime.layout, current_spec(d))  # the sample: web and redis, one port each
        assert sorted(p for svc in given.values() for p in svc.values()) == [24000, 24002]
        other = Deployment.objects.create(project=cast.project, name="B", slug="b", branch="main", commit=cast.project.stack_commit)
        runtime.home(current_spec(other)).mkdir(parents=True)
        with pytest.raises(RuntimeFailure, match="no free port left in 24000–24002"):
            allocate_ports(runtime.layout, current_spec(other))
