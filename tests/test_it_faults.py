"""Faults injected into a running platform (`manage.py up`, real processes): nothing the user did is lost."""

import re
import subprocess
import time
from pathlib import Path

import redis as redis_client
import requests

from deployments.management import embedded_redis
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


def test_a_deployment_created_while_redis_is_away_runs_once_it_is_back(tmp_path: Path) -> None:
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
        form = session.get(f"{base}/projects/diploi-sample/deployments/new/", timeout=10)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        started = time.monotonic()
        r = session.post(
            f"{base}/projects/diploi-sample/deployments/new/",
            data={"name": "dev", "stage": "development", "branch": "main", "enabled": "on", "csrfmiddlewaretoken": token},
            headers={"Referer": form.url},
            timeout=30,
        )
        assert r.status_code == 200 and r.url.endswith("/d/dev/"), (r.status_code, r.url)  # not a 500
        assert time.monotonic() - started < 20  # answered, not hung on the queue
        assert NOTICE in r.text.replace("&#x27;", "'") and "waiting for the task queue" in r.text

        server = start_redis(port, tmp_path / "redis")  # back, empty: the lost task is not in it
        wait_until(
            lambda: "<strong>Running</strong>" in session.get(f"{base}/projects/diploi-sample/d/dev/", timeout=10).text,
            timeout=180,
            interval=2,
            what="the deployment running without a second request",
        )
        history = session.get(f"{base}/projects/diploi-sample/d/dev/", timeout=10).text
        assert "provisioning again" in history
    finally:
        platform.kill()
        server.terminate()
