"""`manage.py up` for real: embedded Redis, migrations, demo account, daphne and a Celery worker."""

import contextlib
import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

from tests.conftest import BASE_DIR, Platform, free_port, http_get, wait_until


def log_in(port: int, username: str, password: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://localhost:{port}"
    page = opener.open(f"{base}/accounts/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "login": username, "password": password}).encode()
    response = opener.open(f"{base}/accounts/login/", data)
    assert response.url == f"{base}/projects/", response.url
    return opener


def assert_all_gone(procs: list[psutil.Process]) -> None:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"left behind: {alive}"


def test_it_starts_everything_logs_in_and_stops_cleanly(platform: Platform) -> None:
    url = platform.wait_for(r"Diploi is running at (http://\S+)").group(1)
    assert url == f"http://localhost:{platform.port}/"
    m = platform.wait_for(r"username: (\S+) password: (\S+)")
    platform.wait_for(rf"SSH into deployments: port {platform.ssh_port} ")
    # whether Dockerfile components can run here, and if not, what stops them (its data directory is private here)
    platform.wait_for(r"Dockerfile components and image add-ons(: run as containers| cannot run here: \S.+)")
    platform.wait_for(r"celery@\S+ ready")

    opener = log_in(platform.port, m.group(1), m.group(2))
    projects = opener.open(f"{url}projects/").read().decode()
    assert "Diploi sample" in projects
    detail = opener.open(f"{url}projects/diploi-sample/").read().decode()
    assert "Valid at commit" in detail

    procs = platform.descendants()
    names = " ".join(" ".join(p.cmdline()) for p in procs)
    assert "valkey-server" in names and "daphne" in names and "celery" in names

    assert platform.stop() == 0
    assert_all_gone(procs)
    assert "stopped" in platform.output()


def test_it_stops_everything_under_load(platform: Platform) -> None:
    platform.wait_for(r"Diploi is running at")
    platform.wait_for(r"celery@\S+ ready")
    procs = platform.descendants()

    stop_load = threading.Event()
    served = []

    def hammer() -> None:
        while not stop_load.is_set():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{platform.port}/accounts/login/", timeout=2).read()
                served.append(1)
            except (urllib.error.URLError, OSError):
                pass

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(served) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert len(served) >= 100
        platform.stop()
    finally:
        stop_load.set()
        for t in threads:
            t.join(timeout=5)
    assert_all_gone(procs)


def test_up_says_little_and_the_demo_account_is_created_once(tmp_path: Path) -> None:
    """Without --verbose, `up` prints a few progress lines and a box with the URL and, on the first
    start only, the demo login; every process's output is in its log file instead."""
    data = tmp_path / "data"
    first = Platform(data, free_port(), verbose=False)
    try:
        first.wait_for(r"Diploi is running at")
        login = first.wait_for(r"│  Log in with username: demo password: (\S+)\s+│")
        before_box = first.output().split("╭")[0].strip().splitlines()
        assert len(before_box) <= 4, before_box  # the confinement, the processes, the database
        assert any("starting" in line and "web, worker, monitor, ssh" in line for line in before_box), before_box
        assert "Applying" not in first.output() and "celery@" not in first.output()
        logs = data / "platform" / "logs"
        assert "Applying accounts.0001_initial" in (logs / "setup.log").read_text()
        wait_until(lambda: re.search(r"celery@\S+ ready", (logs / "worker.log").read_text()), what="the worker's output in its log")
        assert log_in(first.port, "demo", login.group(1))
        first.stop()
        second = Platform(data, free_port(), verbose=False)
        try:
            second.wait_for(r"Diploi is running at")
            assert "password:" not in second.output()
            assert "the demo password was shown on the first start" in second.output()
            second.stop()
        finally:
            second.kill()
    finally:
        first.kill()


def test_a_used_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "up", "--port", str(port), "--data-dir", str(tmp_path / "d")],
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_sample_project_deploys_from_a_fresh_install(platform: Platform, tmp_path: Path) -> None:
    """The out-of-the-box path: queued through Redis to the real worker, run under the launcher's supervisor."""
    platform.wait_for(r"Diploi is running at")
    platform.wait_for(r"celery@\S+ ready")
    redis_port = platform.wait_for(r"embedded Redis on port (\d+), with a password").group(1)
    import pytest
    import redis

    with pytest.raises(redis.AuthenticationError):  # the platform's queue answers only with its password
        redis.Redis.from_url(f"redis://127.0.0.1:{redis_port}/0").ping()
    url = (tmp_path / "data" / "redis" / "url").read_text().strip()
    assert oct((tmp_path / "data" / "redis" / "url").stat().st_mode & 0o777) == "0o600"
    assert f":{redis_port}/0" in url and redis.Redis.from_url(url).ping()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(DIPLOI_DATA_DIR=str(tmp_path / "data"), REDIS_URL=url)

    def cli(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "manage.py", "deployments", "--user", "demo", *args],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "Starting" in cli("create", "diploi-sample", "dev")
    cli("create", "diploi-sample", "prod", "--stage", "production")

    pages = {}
    for name, stage in (("dev", "development"), ("prod", "production")):
        status = wait_until(
            lambda name=name: (s := json.loads(cli("status", f"diploi-sample/{name}", "--json")))["state"] == "running" and s,
            timeout=120,
            what=f"{name} to run",
        )
        assert [h["actor"] for h in status["history"]][0] == "user:demo"
        pages[name] = wait_until(lambda status=status: http_get(status["endpoints"]["web"]), what=f"the {name} page")
        assert f"Stage: <span id='stage'>{stage}</span>" in pages[name] and "Visits:" in pages[name]
    listing = json.loads(cli("list", "--json"))
    assert sorted(d["slug"] for d in listing) == ["dev", "prod"]

    # The deployments' supervisor killed: the platform's restarts it, and it starts the deployments
    # again, after ending what the dead one left (nothing keeps a port, nothing runs unsupervised).
    def apps() -> list[psutil.Process]:
        def is_app(p: psutil.Process) -> bool:
            try:
                return p.name().startswith("python") and "app.py" in " ".join(p.cmdline())
            except psutil.Error:  # one that ended while the tree was read (a wrapper, a health check's)
                return False

        return [p for p in platform.descendants() if is_app(p)]

    before = apps()
    assert len(before) == 2
    [agent] = [p for p in platform.descendants() if "runtime/supervisord.conf" in " ".join(p.cmdline())]
    agent.kill()
    platform.wait_for(r"agent: stopped unexpectedly \(terminated by SIGKILL\) and was restarted")
    for name, stage in (("dev", "development"), ("prod", "production")):
        status = json.loads(cli("status", f"diploi-sample/{name}", "--json"))
        page = wait_until(lambda status=status: http_get(status["endpoints"]["web"]), what=f"the {name} page again")
        assert f"Stage: <span id='stage'>{stage}</span>" in page
    assert_all_gone(before)
    after = apps()
    [new_agent] = [p for p in platform.descendants() if "runtime/supervisord.conf" in " ".join(p.cmdline())]
    wrappers = [p for p in platform.descendants() if "local/exec.py" in " ".join(p.cmdline())]
    assert len(after) == 2 and wrappers and all(p.ppid() == new_agent.pid for p in wrappers)

    procs = platform.descendants()
    assert platform.stop() == 0
    assert_all_gone(procs)


def test_a_platform_process_that_dies_is_restarted_shown_and_retried(tmp_path: Path) -> None:
    """Only Ctrl-C stops the platform: a killed worker, monitor, Redis or gateway is restarted and
    said so (in up's output and to staff on every page); one that keeps failing to start is given
    up on by supervisord, then started again by `up` a moment later."""
    from deployments.runtimes.local.supervisor import rpc_at, socket_path

    data = tmp_path / "data"
    platform = Platform(data, free_port(), env={"DIPLOI_PLATFORM_RETRY": "2"})
    try:
        platform.wait_for(r"Diploi is running at")
        password = platform.wait_for(r"username: demo password: (\S+)").group(1)
        platform.wait_for(r"celery@\S+ ready")

        def programs() -> list[psutil.Process]:  # what the platform's supervisord runs
            [supervisord] = [p for p in platform.descendants() if "platform/supervisord.conf" in " ".join(p.cmdline())]
            return supervisord.children()

        for name, marker in (("worker", "celery -A diploi worker"), ("monitor", "manage.py monitor"), ("redis", "valkey-server")):
            [main] = [p for p in programs() if marker in " ".join(p.cmdline())]
            main.kill()
            platform.wait_for(rf"{name}: stopped unexpectedly \(terminated by SIGKILL\) and was restarted")
        assert len(re.findall(r"celery@\S+ ready", platform.wait_for(r"(?s)celery@\S+ ready.*celery@\S+ ready").group(0))) == 2
        events = json.loads((data / "platform" / "events.json").read_text())
        assert [e["process"] for e in events] == ["worker", "monitor", "redis"]

        opener = log_in(platform.port, "demo", password)  # the first account is the operator's
        page = opener.open(f"http://localhost:{platform.port}/projects/").read().decode()
        assert "Platform process “worker” stopped unexpectedly (terminated by SIGKILL) and was restarted" in page
        assert "Platform process “redis” stopped unexpectedly" in page

        # The gateway's port taken while it is stopped: it fails to start, supervisord backs off
        # and gives up, `up` says so and tries again; once the port is free it runs again.
        rpc = rpc_at(socket_path(data, "-platform"))
        rpc.stopProcess("ssh")
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", platform.ssh_port))
            squatter.listen()
            rpc.startProcess("ssh", False)
            platform.wait_for(r"ssh: keeps failing to start; trying again every 2 s", timeout=120)
        platform.wait_for(r"ssh: is running again", timeout=60)
        wait_until(lambda: socket.create_connection(("127.0.0.1", platform.ssh_port), timeout=1), what="the gateway")
        procs = platform.descendants()
        assert platform.stop() == 0
        assert_all_gone(procs)
    finally:
        platform.kill()


def test_several_web_processes_serve_one_port_and_each_takes_over_from_the_other(tmp_path: Path) -> None:
    """`up --web-processes 2`: two daphne processes accept on the one port; with either of them
    frozen the other answers every request, and one that is killed is restarted."""
    platform = Platform(tmp_path / "data", free_port(), env={"DIPLOI_WEB_PROCESSES": "2"})
    try:
        url = platform.wait_for(r"Diploi is running at (http://\S+)").group(1)

        def webs_running() -> list:  # (the second may still be starting when the first answers)
            found = [p for p in platform.descendants() if "shared_socket" in " ".join(p.cmdline()) or "daphne" in " ".join(p.cmdline())]
            return found if len(found) == 2 else []

        webs = wait_until(webs_running, timeout=60, what="two web processes")
        for frozen in webs:
            frozen.suspend()
            try:  # (the other may still be loading when the first answers: once it answers, it answers every time)
                wait_until(lambda: http_get(f"{url}healthz", timeout=5), timeout=90, what="the other web process")
                for _ in range(20):  # a new connection each: the kernel hands each to a process waiting in accept()
                    with urllib.request.urlopen(f"{url}healthz", timeout=5) as r:
                        assert r.status == 200
            finally:
                frozen.resume()
        webs[0].kill()
        platform.wait_for(r"web-[01]: stopped unexpectedly \(terminated by SIGKILL\) and was restarted")
        assert http_get(f"{url}healthz")
        procs = platform.descendants()
        assert platform.stop() == 0
        assert_all_gone(procs)
    finally:
        platform.kill()


def test_the_data_directory_is_the_platforms_alone(platform: Platform, tmp_path: Path) -> None:
    platform.wait_for(r"Diploi is running at")
    data = tmp_path / "data"
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    for name in ("secret_key", "diploi.sqlite3", "ssh_host_ed25519_key"):
        wait_until((data / name).exists, what=name)
    for path in data.iterdir():  # whatever else is there too (the demo repository, Redis, deployments…)
        assert path.stat().st_mode & 0o077 == 0, (path.name, oct(path.stat().st_mode))


def test_a_short_soak_leaves_nothing_stuck_or_behind() -> None:
    """bench/soak.py, short: four cycles, one with the worker killed, one with a deployment's
    process killed, and the deployments' supervisord, the monitor and Redis each killed once."""
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--cycles", "4", "--seed", "4"], cwd=BASE_DIR, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for fault in ("cycle with fault worker", "cycle with fault process", "killed the platform's agent", "killed the platform's redis"):
        assert fault in result.stdout
    assert "cycles stuck: 0" in result.stdout and "processes left after up stopped: 0" in result.stdout


def test_the_platforms_supervisord_killed_leaves_nothing_running(tmp_path: Path) -> None:
    """`kill -9` of the platform's supervisord: `up` stops what it had started (adopted, as a subreaper),
    the deployments' supervisord by asking it, and exits; no process of the data directory is left, and
    the next `up` starts."""
    data_dir = tmp_path / "data"
    platform = Platform(data_dir, free_port())
    try:
        platform.wait_for(r"Diploi is running at")
        platform.wait_for(r"celery@\S+ ready")
        children = psutil.Process(platform.proc.pid).children()  # (the deployments' supervisord is its program)
        next(p for p in children if "supervisord" in " ".join(p.cmdline())).kill()
        assert platform.proc.wait(timeout=120) == 1
        assert "stopping what the platform's supervisord left running" in platform.output()

        def of_data_dir() -> list[str]:
            found = []
            for p in psutil.process_iter(["pid", "cmdline", "status"]):
                with contextlib.suppress(psutil.Error):
                    if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                        continue
                    text = " ".join(p.info["cmdline"] or []) + "\0" + "\0".join(f"{k}={v}" for k, v in p.environ().items())
                    if str(data_dir) in text:
                        found.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
            return found

        assert of_data_dir() == []
    finally:
        platform.kill()
    again = Platform(data_dir, free_port())
    try:
        again.wait_for(r"Diploi is running at")
        assert again.stop() == 0
    finally:
        again.kill()


def test_a_process_answering_half_at_start_is_waited_for_not_a_failed_start() -> None:
    """The router's admin API restarting while the monitor loads the routes raised out of `up` (1 in ~35
    starts): such an answer is "not ready yet"; any other error is still an error."""
    import pytest

    from deployments.management.launcher import _ready
    from deployments.runtimes.base import TransientFailure

    answers = iter([TransientFailure("the router's admin API is restarting"), ConnectionResetError(), True])

    def router_synced() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert [_ready(router_synced) for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError):
        _ready(lambda: int("not a number"))
