"""Soak: create → running → delete cycles on a real platform while its processes are killed.

    uv run python bench/soak.py --cycles 100

Starts `manage.py up` on the embedded defaults in a temporary data directory, then runs the cycles
(every tenth deployment is kept, the others deleted). In a random third of the cycles the worker's
main process is killed (SIGKILL) right after the create, in another third the new deployment's web
process once it runs; at a quarter, half and three quarters of the run the deployments' supervisord,
the monitor and the embedded Redis are each killed once. At the end it prints what must be zero —
rows stuck in a state other than running, folders of deleted deployments, service processes outside
the supervisor, supervisord programs of deleted deployments, kept deployments not answering,
processes of the data directory left once `up` has stopped — and
the time a cycle took with and without a fault, next to a cycle with no fault as the baseline.
Exits 1 when one of the zeros is not.
"""

import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DATA = Path(tempfile.mkdtemp(prefix="diploi-soak-"))
CYCLE_TIMEOUT = 300.0  # seconds one cycle may take before it counts as stuck


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """`manage.py up` as a user runs it, its output kept."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "DIPLOI_DATA_DIR")}
        env.update(DIPLOI_SSH_PORT=str(free_port()), DIPLOI_RECONCILE_AFTER="30", DIPLOI_MONITOR_INTERVAL="2")
        # Deployments by port: the soak is about provisioning under faults (the router's own are in
        # tests/test_it_router.py and the browser test), and leaves the machine's 443 and 80 alone.
        env.update(DIPLOI_ROUTER="off")
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(free_port()), "--data-dir", str(DATA), "--verbose"],  # it follows the worker
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=lambda: self.lines.extend(line.rstrip() for line in self.proc.stdout), daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if found := re.search(pattern, "\n".join(self.lines)):
                return found
            time.sleep(0.2)
        raise SystemExit(f"soak: no {pattern!r} from up:\n" + "\n".join(self.lines[-40:]))

    def programs(self) -> dict[str, int]:
        """The platform's programs by name → main pid (from its supervisord)."""
        from deployments.runtimes.local.supervisor import rpc_at, socket_path

        return {p["name"]: p["pid"] for p in rpc_at(socket_path(DATA, "-platform")).getAllProcessInfo() if p["pid"]}

    def kill(self, program: str) -> None:
        os.kill(self.programs()[program], signal.SIGKILL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def wait(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def service_processes(home: Path) -> list:
    import psutil

    inside = f"{home}/"  # soak1's folder is not soak10's
    return [p for p in psutil.process_iter(["cmdline"]) if inside in " ".join(p.info["cmdline"] or [])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    up = Up()
    try:
        up.wait_for(r"Diploi is running at")
        up.wait_for(r"celery@\S+ ready")
    except SystemExit:  # what it started stops with it
        up.stop()
        raise
    os.environ.pop("DATABASE_URL", None)  # the platform's own: SQLite in its data directory
    os.environ.update(DIPLOI_DATA_DIR=str(DATA), REDIS_URL=(DATA / "redis" / "url").read_text().strip())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diploi.settings")
    import django

    django.setup()
    from deployments.actions import do_create_deployment, do_delete
    from deployments.models import Deployment, State
    from deployments.runtimes.local import disks
    from deployments.runtimes.local.layout import Layout
    from deployments.runtimes.local.supervisor import Supervisor
    from projects.models import Project

    project = Project.objects.get(slug="diploi-sample")
    user = project.memberships.get().user
    layout = Layout(DATA)
    platform_faults = {args.cycles // 4: "agent", args.cycles // 2: "monitor", 3 * args.cycles // 4: "redis"}
    took: dict[str, list[float]] = {"none": [], "worker": [], "process": []}
    kept, stuck, deleted_homes = [], [], []
    try:
        for i in range(args.cycles):
            fault = rng.choice(["none", "worker", "process"])
            started = time.monotonic()
            d = do_create_deployment(project, f"soak{i}", "development", "main", actor=user)
            if fault == "worker":
                up.kill("worker")
            if program := platform_faults.get(i):
                up.kill(program)
                print(f"soak: cycle {i}: killed the platform's {program}", flush=True)

            def running(d: Deployment = d) -> bool:
                d.refresh_from_db()
                return d.state == State.RUNNING and bool(d.endpoints.get("web")) and answers(d.endpoints["web"])

            if fault == "process" and wait(running, CYCLE_TIMEOUT):
                home = layout.deployments / f"{project.slug}.{d.slug}"
                web = [p for p in service_processes(home) if "app.py" in " ".join(p.info["cmdline"] or [])]
                for p in web:
                    p.kill()
                time.sleep(1)
            if not wait(running, CYCLE_TIMEOUT):
                stuck.append(f"soak{i}: {d.state} {d.state_reason}")
                continue
            if i % 10 == 0:
                kept.append(d)
            else:
                do_delete(d, actor=user)
                if not wait(lambda d=d: not Deployment.objects.filter(pk=d.pk).exists(), CYCLE_TIMEOUT):
                    stuck.append(f"soak{i}: still {Deployment.objects.get(pk=d.pk).state}")
                    continue
                deleted_homes.append(layout.deployments / f"{project.slug}.{d.slug}")
            took[fault].append(time.monotonic() - started)
            print(f"soak: cycle {i} ({fault}): {took[fault][-1]:.1f} s", flush=True)

        leftover_folders = [h for h in deleted_homes if h.exists()]
        # Processes of deleted deployments still running ten seconds later (the sandboxes of the
        # last one deleted may still be on their way out when the loop ends).
        wait(lambda: not [p for h in deleted_homes for p in service_processes(h)], 10)
        orphans = [" ".join(p.info["cmdline"])[-120:] for h in deleted_homes for p in service_processes(h)]
        groups = {name.split(":")[0] for name in Supervisor(DATA).process_info()}
        leftover_programs = [g for g in groups if any(g.startswith(f"{project.slug}.{h.name.split('.', 1)[1]}") for h in deleted_homes)]
        silent = [d.slug for d in kept if not answers(d.endpoints.get("web", ""))]
        not_running = [d.slug for d in Deployment.objects.exclude(state=State.RUNNING)]
    finally:
        up.stop()
        disks.unmount_under(DATA)  # the kept deployments' own filesystems (as root)
    wait(lambda: not service_processes(DATA), 10)
    left = [" ".join(p.info["cmdline"])[-120:] for p in service_processes(DATA)]

    print(f"\nsoak: {args.cycles} cycles, seed {args.seed}")
    for name, times in took.items():
        if times:
            print(f"  cycle with fault {name:<8} n={len(times):>3}  median {statistics.median(times):6.1f} s  max {max(times):6.1f} s")
    baseline = statistics.median(took["none"]) if took["none"] else float("nan")
    for name in ("worker", "process"):
        if took[name] and took["none"]:
            print(f"  {name} fault / no fault (median): {statistics.median(took[name]) / baseline:.1f}x")
    zeros = {
        "cycles stuck": stuck,
        "rows not running": not_running,
        "folders of deleted deployments": leftover_folders,
        "orphan service processes": orphans,
        "supervisord programs of deleted deployments": leftover_programs,
        "kept deployments not answering": silent,
        "processes left after up stopped": left,
    }
    for what, found in zeros.items():
        print(f"  {what}: {len(found)}" + (f"  {found[:5]}" if found else ""))
    return 1 if any(zeros.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
