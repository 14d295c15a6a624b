"""How long from "create" to a page that answers, and what one observe() costs as deployments grow.

    uv run python bench/provision.py [--deployments 1,10,50,100] [--repeat 5]

Runs in a temporary data directory with its own SQLite database and process supervisor, and
prints figures with baselines measured in the same run:
- `manage.py up` until it shows the URL, on a fresh data directory and again on the prepared one,
  next to one daphne serving the dashboard (the least a start takes);
- create → endpoint answering, for a development and a production deployment of the sample
  project, next to the sample app started by hand (python3 app.py, no Diploi) as the baseline, and
  confined (the sandbox) next to unconfined (DIPLOI_CONFINE=off);
- observe() for 1, 10, 50 and 100 running development deployments: ms per call, ms per deployment (wall
  time, and the CPU time of the monitor and supervisord), and the number of supervisor calls per observe
  (batched: one, whatever the count).
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DATA = Path(tempfile.mkdtemp(prefix="diploi-bench-"))
os.environ.update(DIPLOI_DATA_DIR=str(DATA / "data"), DJANGO_SETTINGS_MODULE="diploi.settings")
os.environ.pop("DATABASE_URL", None)
os.environ.pop("REDIS_URL", None)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from accounts.models import User  # noqa: E402
from bench.sample import sample_project  # noqa: E402
from deployments.actions import do_create_deployment  # noqa: E402
from deployments.models import Deployment  # noqa: E402
from deployments.provisioning import tasks  # noqa: E402
from deployments.provisioning.spec import current_spec  # noqa: E402
from deployments.runtimes import get_runtime  # noqa: E402
from deployments.runtimes.local import disks  # noqa: E402
from projects.models import Project  # noqa: E402


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer(argv: list[str], cwd: Path, port: int, path: str = "/", env: dict[str, str] | None = None) -> float:
    """Seconds from starting `argv` to its first answer on `port`; then it is stopped."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}{path}")
        return time.perf_counter() - t
    finally:
        proc.kill()
        proc.wait()


def baseline_start(repo: Path) -> float:
    """The sample app alone: start it and wait for its first answer (no Redis, no Diploi)."""
    port = free_port()
    env = {"PORT": str(port), "REDIS_URL": "redis://127.0.0.1:1/0", "PATH": os.environ["PATH"]}
    return first_answer([sys.executable, "app.py"], repo / "web", port, env=env)


def daphne_start() -> float:
    """The baseline of a start: one daphne serving the dashboard, until /healthz answers (no migration,
    no other process)."""
    port = free_port()
    daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "diploi.asgi:application"]
    return first_answer(daphne, BASE_DIR, port, "/healthz")


def up_start(data_dir: Path) -> float:
    """`manage.py up` as a user starts it: seconds until it says where the dashboard is; then stopped."""
    env = dict(os.environ, DIPLOI_SSH_PORT=str(free_port()))
    argv = [sys.executable, "manage.py", "up", "--port", str(free_port()), "--data-dir", str(data_dir)]
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "Diploi is running at" in line:
                return time.perf_counter() - t
        raise SystemExit(f"up stopped before it was running (see {data_dir}/platform/logs)")
    finally:
        proc.terminate()
        proc.communicate(timeout=120)


def create_and_answer(project: Project, user: User, name: str, stage: str) -> tuple[float, Deployment]:
    t = time.perf_counter()
    d = do_create_deployment(project, name, stage, "main", actor=user)
    tasks.provision(d.pk)
    d.refresh_from_db()
    wait_for(d.endpoints["web"])
    return time.perf_counter() - t, d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deployments", default="1,10,50,100")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    counts = [int(n) for n in args.deployments.split(",")]

    base = daphne_start()
    print(f"baseline: one daphne serving the dashboard, first answer {base * 1000:8.0f} ms")
    for which in ("first start (fresh data directory)", "second start (prepared)   "):
        took = up_start(DATA / "up")
        print(f"`manage.py up`, {which} until the URL   {took * 1000:8.0f} ms   ({took / base:.1f}× baseline)")

    user, project = sample_project(DATA)
    runtime = get_runtime()
    try:
        base = statistics.median(baseline_start(Path(project.repository)) for _ in range(3))
        print(f"baseline: sample app started by hand, first answer      {base * 1000:8.0f} ms")
        for stage in ("development", "production"):
            took, _ = create_and_answer(project, user, f"first-{stage}", stage)
            print(f"create → endpoint answering, {stage:<12}              {took * 1000:8.0f} ms   ({took / base:.1f}× baseline)")
        # The same with the sandbox switched off: what confinement costs (run as root, it also
        # switches uid and limits TCP).
        for stage in ("development", "production"):
            confined = statistics.median(create_and_answer(project, user, f"on-{stage}-{i}", stage)[0] for i in range(3))
            settings.DIPLOI_CONFINE = "off"
            unconfined = statistics.median(create_and_answer(project, user, f"off-{stage}-{i}", stage)[0] for i in range(3))
            settings.DIPLOI_CONFINE = "auto"
            print(
                f"create → endpoint answering, {stage:<12} confined {confined * 1000:6.0f} ms, "
                f"unconfined {unconfined * 1000:6.0f} ms   ({confined / unconfined:.2f}× unconfined)"
            )

        deployments = list(Deployment.objects.filter(stage="development"))
        t = time.perf_counter()
        while len(deployments) < max(counts):
            deployments.append(create_and_answer(project, user, f"d{len(deployments)}", "development")[1])
        print(f"(started {max(counts)} development deployments in {time.perf_counter() - t:.0f} s)")

        calls = {"n": 0}
        real = runtime.supervisor.process_info

        def counted(names: list[str] | None = None) -> dict:
            calls["n"] += 1
            return real(names)

        runtime.supervisor.process_info = counted
        supervisord = psutil.Process(int((DATA / "data" / "runtime" / "supervisord.pid").read_text()))
        per_one = None
        for n in counts:
            specs = [current_spec(d) for d in deployments[:n]]
            runtime.observe(specs)  # warm: CPU sampling needs a first reading
            samples, cpu = [], []
            calls["n"] = 0
            for _ in range(args.repeat):
                t, c = time.perf_counter(), time.process_time() + sum(supervisord.cpu_times()[:2])
                runtime.observe(specs)
                samples.append(time.perf_counter() - t)
                cpu.append(time.process_time() + sum(supervisord.cpu_times()[:2]) - c)
            ms, cpu_ms = statistics.median(samples) * 1000, statistics.median(cpu) * 1000
            per_one = per_one or ms / n
            print(
                f"observe() with {n:>3} deployments: {ms:8.1f} ms/call, {ms / n:6.2f} ms/deployment "
                f"({ms / n / per_one:.2f}× the 1-deployment cost; CPU of the monitor and supervisord {cpu_ms / n:5.2f} ms/deployment, "
                f"the rest is waiting for the deployments' health answers), {calls['n'] // args.repeat} supervisor call(s) per observe"
            )
    finally:
        for d in Deployment.objects.all():
            tasks.destroy(d.pk)
        runtime.supervisor.shutdown()
        disks.unmount_under(DATA)  # the deployments' own filesystems (as root)
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
