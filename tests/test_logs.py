"""A service's log: written by its wrapper (exec.py) into a file rotated as supervisord rotated it, and
followed by readers across rotations (deployments/runtimes/local/shell.py: read_log)."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from deployments.runtimes.local.exec import RotatingLog
from deployments.runtimes.local.shell import read_log
from deployments.runtimes.local.supervisor import EXEC
from tests.conftest import wait_until


def test_a_followed_log_is_read_whole_across_rotations(tmp_path: Path) -> None:
    """Every line once and in order, while the writer renames the file four times (at the pace of a busy
    service: a file renamed twice before the reader came back to it would be skipped, as with supervisord)."""
    path = tmp_path / "web.log"
    log = RotatingLog(str(path), max_bytes=2000, backups=2)
    log.write(b"before the reader\n")
    seen: list[str] = []
    stop = threading.Event()

    def follow() -> None:
        for line in read_log(path, True, None, 10, stop):
            seen.append(line)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_until(lambda: seen, what="the first line")
    written = [f"line {i:04d} " + "x" * 80 for i in range(100)]  # ~9 KB: four rotations
    for line in written:
        log.write(line.encode() + b"\n")
        time.sleep(0.03)
    wait_until(lambda: len(seen) >= 101, what="every line", timeout=20)
    stop.set()
    reader.join(timeout=5)
    assert seen == ["before the reader", *written]
    kept = sorted(tmp_path.glob("web.log*"))
    assert [p.name for p in kept] == ["web.log", "web.log.1", "web.log.2"]  # no more
    assert all(p.stat().st_size <= 2000 for p in kept)


def test_the_wrapper_writes_what_the_service_and_its_steps_print(tmp_path: Path) -> None:
    """The preparation step's, the command's and its child's output (stdout and stderr), and what the
    wrapper says itself, in the log named by the run file; nothing on the wrapper's own stdout (which is
    supervisord's pipe)."""
    log = tmp_path / "logs" / "web.log"
    log.parent.mkdir()
    run = tmp_path / "web.json"
    run.write_text(
        json.dumps(
            {
                "env": {"PATH": "/usr/bin:/bin"},
                "cwd": str(tmp_path / "web"),
                "before": ["echo installing", "echo failing >&2; exit 4"],
                "command": "echo never",
                "log": str(log),
            }
        )
    )
    done = subprocess.run([sys.executable, str(EXEC), str(run)], capture_output=True, timeout=30)
    assert done.returncode == 4
    assert done.stdout == done.stderr == b""
    assert log.read_text().splitlines() == ["installing", "failing", "diploi: preparation step 2 failed with exit code 4"]

    run.write_text(json.dumps({**json.loads(run.read_text()), "before": [], "command": "echo out; sh -c 'echo err >&2'; exit 3"}))
    done = subprocess.run([sys.executable, str(EXEC), str(run)], capture_output=True, timeout=30)
    assert done.returncode == 3 and done.stdout == done.stderr == b""
    assert log.read_text().splitlines()[-2:] == ["out", "err"]


def test_a_log_that_cannot_be_written_never_blocks_the_service(tmp_path: Path) -> None:
    """A full disk (here /dev/full) loses the output; the service still runs to its end instead of
    blocking on a pipe that nobody empties."""
    run = tmp_path / "web.json"
    command = "head -c 300000 /dev/zero | tr '\\\\0' x; echo; exit 5"  # several pipe buffers' worth
    run.write_text(json.dumps({"env": {"PATH": "/usr/bin:/bin"}, "cwd": str(tmp_path / "web"), "command": command, "log": "/dev/full"}))
    done = subprocess.run([sys.executable, str(EXEC), str(run)], capture_output=True, timeout=30)
    assert done.returncode == 5
