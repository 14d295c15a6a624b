"""Faults injected into a running platform (`manage.py up`, real processes): nothing the user did is lost."""

import re
import sqlite3
import subprocess
from pathlib import Path

import psutil
import pytest
import redis as redis_client
import requests

from deployments.management import embedded_redis
from deployments.web.health import QUEUE_DOWN
from deployments.web.middleware import NOTICE
from tests.conftest import Platform, free_port, wait_until


def start_redis(port: int, folder: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        embedded_redis.redis_command(port, folder, persistent=False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis_client.Redis(port=port, socket_connect_timeout=1)
    wait_until(lambda: client.ping(), timeout=20, what="Redis answering")
    return server


def log_in(base: str, password: str) -> requests.Session:
    s = requests.Session()
    s.get(f"{base}/accounts/login/", timeout=10)
    r = s.post(
        f"{base}/accounts/login/",
        data={"login": "demo", "password": password, "csrfmiddlewaretoken": s.cookies["csrftoken"]},
        headers={"Referer": f"{base}/accounts/login/"},
        timeout=10,
    )
    assert r.url.endswith("/projects/"), r.url
    return s


def submit(session: requests.Session, page: str, action: str, data: dict[str, str]) -> requests.Response:
    """A form on `page` posted to `action`, as the browser would (its CSRF token and Referer)."""
    form = session.get(page, timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    return session.post(action, data={**data, "csrfmiddlewaretoken": token}, headers={"Referer": form.url}, timeout=30)


def test_what_is_asked_for_while_redis_is_away_is_done_once_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(port, tmp_path / "redis")
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "DIPLOI_RECONCILE_AFTER": "30"}
    platform = Platform(tmp_path / "data", free_port(), env=env)
    try:
        base = platform.wait_for(r"Diploi is running at (http://\S+)").group(1).rstrip("/")
        password = platform.wait_for(r"username: demo password: (\S+)").group(1)
        platform.wait_for(r"celery@\S+ ready")
        session = log_in(base, password)

        server.terminate()
        server.wait(timeout=20)
        wait_until(lambda: QUEUE_DOWN in session.get(f"{base}/projects/", timeout=10).text, what="every page saying the queue is away")
        new = f"{base}/projects/diploi-sample/deployments/new/"
        r = submit(session, new, new, {"name": "dev", "stage": "development", "branch": "main", "enabled": "on"})
        assert r.status_code == 200 and r.url.endswith("/d/dev/"), (r.status_code, r.url)  # not a 500
        assert NOTICE in r.text.replace("&#x27;", "'") and "waiting for the task queue" in r.text

        server = start_redis(port, tmp_path / "redis")  # back, empty: the lost task is not in it
        wait_until(lambda: QUEUE_DOWN not in session.get(f"{base}/projects/", timeout=10).text, what="the notice to go")
        wait_until(
            lambda: "<strong>Running</strong>" in session.get(f"{base}/projects/diploi-sample/d/dev/", timeout=10).text,
            timeout=180,
            interval=2,
            what="the deployment running without a second request",
        )
        history = session.get(f"{base}/projects/diploi-sample/d/dev/", timeout=10).text
        assert "provisioning again" in history

        # A restart asked for while the queue is away is kept (its intent was stored with the
        # request) and carried out once the queue is back: the service's process is a new one.
        def web_process() -> psutil.Process:
            def is_web(p: psutil.Process) -> bool:
                try:
                    return "app.py" in " ".join(p.cmdline()) and p.name().startswith("python")
                except psutil.NoSuchProcess:  # one that ended while the tree was read (a health check's, a wrapper's)
                    return False

            [web] = [p for p in platform.descendants() if is_web(p)]
            return web

        before = web_process()
        server.terminate()
        server.wait(timeout=20)
        r = submit(session, f"{base}/projects/diploi-sample/d/dev/", f"{base}/projects/diploi-sample/d/dev/restart/web/", {})
        assert r.status_code == 200 and NOTICE in r.text.replace("&#x27;", "'")
        assert before.is_running(), "nothing restarts while the queue is away"
        server = start_redis(port, tmp_path / "redis")
        wait_until(lambda: web_process().pid != before.pid, timeout=180, interval=2, what="the restart, without a second request")
    finally:
        platform.kill()
        server.terminate()


def test_a_worker_killed_mid_build_leaves_the_build_retried_not_running(tmp_path: Path) -> None:
    """SIGKILL the Celery worker while a release builds: supervisord starts it again, and the build
    is built again (its log says so) and finishes; nothing stays "running"."""
    import json
    import os
    import sys

    from projects.sample import commit_all

    data = tmp_path / "data"
    platform = Platform(data, free_port())
    try:
        platform.wait_for(r"Diploi is running at (http://\S+)")
        platform.wait_for(r"celery@\S+ ready")
        repo = data / "repos" / "diploi-sample"
        package = (Path(__file__).parent.parent / "projects" / "packages" / "python.yaml").read_text()
        (repo / "slowpy").mkdir()
        slow = package.replace("  install: >-\n    ", "  install: >-\n    sleep 12; ", 1)
        assert slow != package
        (repo / "slowpy" / "diploi.yaml").write_text(slow)
        (repo / "diploi.yaml").write_text((repo / "diploi.yaml").read_text().replace("package: python", "package: ./slowpy", 1))
        commit_all(repo, "A slow install")

        env = {**os.environ, "DIPLOI_DATA_DIR": str(data)}
        env.pop("DATABASE_URL", None)
        env["REDIS_URL"] = (data / "redis" / "url").read_text().strip()

        def cli(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "manage.py", "deployments", "--user", "demo", *args], env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        def release() -> dict:
            return json.loads(cli("releases", "diploi-sample/stage", "--json"))[0]

        cli("create", "diploi-sample", "stage", "--stage", "staging")
        wait_until(lambda: release()["steps"]["install"] == "running", timeout=120, what="the install step")
        workers = [p for p in platform.descendants() if "celery" in " ".join(p.cmdline()) and "worker" in " ".join(p.cmdline())]
        assert workers
        for p in workers:
            p.kill()
        platform.wait_for(r"(?s)celery@\S+ ready.*celery@\S+ ready", timeout=120)  # started again

        final = wait_until(
            lambda: (r := release())["status"] in ("succeeded", "failed") and r, timeout=180, interval=1, what="the build to end"
        )
        assert final["status"] == "succeeded" and final["attempts"] == 2, final
        assert "building again (attempt 2)" in final["log"]
        assert [b["status"] for b in json.loads(cli("releases", "diploi-sample/stage", "--json"))] == ["succeeded"]
        wait_until(lambda: release()["running"], timeout=60, what="the release to run")
    finally:
        platform.kill()


def test_a_stopped_worker_is_said_on_every_page_and_its_return_too(tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) stops saying it is alive: within seconds every page says no worker
    answers; continued, the notice goes."""
    platform = Platform(tmp_path / "data", free_port())
    worker = None
    try:
        base = platform.wait_for(r"Diploi is running at (http://\S+)").group(1).rstrip("/")
        password = platform.wait_for(r"username: demo password: (\S+)").group(1)
        platform.wait_for(r"celery@\S+ ready")
        session = log_in(base, password)
        page = lambda: session.get(f"{base}/projects/", timeout=10).text  # noqa: E731
        assert "No worker has answered" not in page()
        workers = [p for p in platform.descendants() if "celery" in " ".join(p.cmdline()) and "worker" in p.cmdline()]
        worker = next(p for p in workers if p.parent().pid not in {w.pid for w in workers})  # the main process
        worker.suspend()
        wait_until(lambda: "No worker has answered for" in page(), timeout=90, interval=2, what="every page saying no worker answers")
        worker.resume()
        worker = None
        wait_until(lambda: "No worker has answered" not in page(), timeout=60, interval=2, what="the notice to go")
    finally:
        if worker is not None:
            worker.resume()
        platform.kill()


def _deployment(cast):
    from deployments.models import Deployment, State

    return Deployment.objects.create(
        project=cast.project, name="Dev", slug="dev", branch="main", state=State.RUNNING, commit=cast.project.stack_commit
    )


@pytest.mark.django_db(transaction=True)
def test_a_locked_database_answers_503_saves_nothing_and_pages_are_still_read(cast) -> None:
    """SQLite's write lock held by another process past the wait: the change answers 503 saying nothing
    was saved (not a 500), the pages that only read are served, and the same change saves afterwards."""
    from django.db import connection

    from deployments.models import EnvVar

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock (PostgreSQL's writers wait on rows instead)")
    _deployment(cast)
    client = cast.client(cast.developer)
    url, change = "/projects/shop/d/dev/env/", {"key": "API_TOKEN", "value": "v1", "service": ""}
    options = connection.settings_dict["OPTIONS"]
    waited, options["timeout"] = options["timeout"], 0.5
    connection.close()
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing, for longer than a request waits
    try:
        r = client.post(url, change)
        assert r.status_code == 503 and r["Retry-After"] == "5", r.status_code
        assert "database is busy right now: nothing of this request was saved" in r.content.decode()
        htmx = client.post(url, change, headers={"HX-Request": "true"})
        assert htmx.status_code == 503 and htmx.content.decode().startswith("The platform's database is busy")
        assert client.get("/projects/shop/d/dev/").status_code == 200  # reading goes on beside the writer
    finally:
        other.execute("ROLLBACK")
        other.close()
        options["timeout"] = waited
        connection.close()
    assert not EnvVar.objects.exists()
    assert client.post(url, change).status_code in (200, 302) and EnvVar.objects.get().key == "API_TOKEN"


@pytest.mark.django_db(transaction=True)
def test_a_full_database_answers_503_and_saves_nothing(cast) -> None:
    """SQLite's "database or disk is full" (its file may not grow: what a full disk does to it) is a 503
    saying so, and nothing of the change is kept."""
    from django.db import connection

    from deployments.models import EnvVar

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's page limit stands in for a full disk")
    _deployment(cast)
    client = cast.client(cast.developer)
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA page_count")
        cursor.execute(f"PRAGMA max_page_count = {cursor.fetchone()[0]}")
    try:
        r = client.post("/projects/shop/d/dev/env/", {"key": "BIG", "value": "x" * 30_000, "service": ""})
        assert r.status_code == 503 and "disk is full: nothing of this request was saved" in r.content.decode(), r.status_code
    finally:
        connection.close()  # (the limit is the connection's)
    assert not EnvVar.objects.exists()


def test_only_the_storage_of_the_moment_is_unavailable_not_every_error() -> None:
    import errno

    from django.db import OperationalError

    from diploi.http import unavailable_reason

    assert unavailable_reason(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert unavailable_reason(OperationalError("database is locked")) == "busy"
    assert unavailable_reason(OperationalError("no such table: x")) is None and unavailable_reason(ValueError("locked")) is None
