"""The Dockerfile, rehearsed without an engine (there is none here): its instructions after the system
set-up run against a copy of the build context (what `.dockerignore` lets through), then its CMD
serves. This catches a dependency missing from the locked non-dev set, a failing collectstatic and
a CMD that does not start; the base image, apt packages and user are the engine's part, not tried."""

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from tests.conftest import BASE_DIR, free_port, http_get, wait_until


def build_context(dest: Path) -> None:
    """The tracked files the build would get: `git ls-files` minus the .dockerignore patterns."""
    patterns = [line.strip() for line in (BASE_DIR / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    files = subprocess.run(["git", "ls-files", "-z"], cwd=BASE_DIR, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        parts = Path(name).parts
        if any(
            fnmatch.fnmatch(name, p.removeprefix("**/")) or fnmatch.fnmatch(parts[0], p) or p.removeprefix("**/") in parts for p in patterns
        ):
            continue
        if (BASE_DIR / name).exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(BASE_DIR / name, dest / name)


def instructions() -> list[tuple[str, str]]:
    text = (BASE_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_image_builds_and_serves_when_rehearsed(tmp_path: Path) -> None:
    app, data = tmp_path / "image-app", tmp_path / "image-data"
    app.mkdir()
    data.mkdir()
    build_context(app)
    assert not (app / "tests").exists() and (app / "manage.py").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIPLOI_", "DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV"))}
    steps = instructions()
    copied = False
    for keyword, rest in steps:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value.replace("/app", str(app)).replace("$PATH", os.environ["PATH"]).replace("/data", str(data))
        elif keyword == "COPY":
            copied = True  # the whole context is in place already
        elif keyword == "RUN" and copied:  # before the first COPY: system packages and the user, the engine's part
            command = "chown() { :; }; " + rest.replace("/data", str(data))  # no user diploi here
            result = subprocess.run(["bash", "-c", command], cwd=app, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"RUN {rest}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert (data / "static" / "css" / "diploi.css").exists(), "collectstatic did not run"

    cmd = next(rest for keyword, rest in steps if keyword == "CMD")
    port = free_port()
    argv = [a.replace("8000", str(port)) for a in json.loads(cmd)]
    server = subprocess.Popen(
        argv, cwd=app, env={**env, "DIPLOI_SECRET_KEY": "rehearsal"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz") == "ok", timeout=60, what="the image's CMD serving /healthz")
        assert ".card" in http_get(f"http://127.0.0.1:{port}/static/css/diploi.css")  # WhiteNoise serves what the build collected
        for process in (
            ["celery", "-A", "diploi", "inspect", "--help"],
            ["python", "manage.py", "sshgateway", "--help"],
            ["python", "manage.py", "monitor", "--help"],
            ["python", "manage.py", "check"],
            ["python", "-c", "import deployments.runtimes.kubernetes"],
        ):
            result = subprocess.run(
                process, cwd=app, env={**env, "DIPLOI_SECRET_KEY": "rehearsal"}, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, (process, result.stderr[-2000:])
    finally:
        server.terminate()
        server.wait(30)
