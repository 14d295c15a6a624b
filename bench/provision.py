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

    uv run python bench/provision.py --starters
    uv run python bench/provision.py --containers

- only this: two projects written for Diploi (tests/starters: Next.js + PostgreSQL + Redis, and a uv
  FastAPI app), create → answering in development and production with the deployment's package cache
  empty (cold), then warm (a production rebuild, a development restart), next to the recipe's own commands
  run by hand in a copy of the code (install, build, start; no sandbox, no add-ons), with an empty and
  with a filled package cache. npm's registry and PyPI are reached over the network.

- only this (as root, with podman): a component built from its Dockerfile (tests/starters/dockerfile-postgres,
  on a static busybox base image, without its add-on) in production: create → answering (account, base image, build, start)
  next to `podman build` + `podman run` of the same Dockerfile by hand (rootful, no Diploi), and a restart
  → answering next to `podman stop` + `podman run` of the built image by hand; then the memory of the running
  container's process tree next to the same files served by a recipe (the static package) in the same
  deployment.
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
import urllib.error
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
from deployments.actions import do_create_deployment, do_rebuild, do_restart  # noqa: E402
from deployments.models import Deployment  # noqa: E402
from deployments.provisioning import tasks  # noqa: E402
from deployments.provisioning.spec import current_spec  # noqa: E402
from deployments.runtimes import get_runtime  # noqa: E402
from deployments.runtimes.local import disks  # noqa: E402
from deployments.runtimes.local.programs import cache_env  # noqa: E402
from projects.models import Membership, Project, Role  # noqa: E402
from projects.package import load_builtin  # noqa: E402
from projects.sample import commit_all  # noqa: E402
from projects.stack import refresh_stack  # noqa: E402

STARTERS = {"next-postgres-redis": ("next", "node"), "fastapi": ("fastapi", "fastapi")}  # component, recipe


def wait_for(url: str, timeout: float = 60, any_status: bool = False) -> None:
    """Until `url` answers 200 (any HTTP status with `any_status`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except urllib.error.HTTPError:
            if any_status:
                return
            time.sleep(0.02)
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


def clean_up(runtime) -> None:
    """Every deployment the run made, destroyed, and its temporary folder gone."""
    for d in Deployment.objects.all():
        tasks.destroy(d.pk)
    runtime.supervisor.shutdown()
    disks.unmount_under(DATA)  # the deployments' own filesystems (as root)
    shutil.rmtree(DATA, ignore_errors=True)


def by_hand(name: str, stage: str, cache: Path) -> float:
    """The recipe's commands run by hand in a fresh copy of the starter's component (install, then
    build and start, or the development server), with `cache` as the package cache: seconds until the
    app answers HTTP (any status: no add-ons run beside it)."""
    component, recipe = STARTERS[name]
    source = BASE_DIR / "tests" / "starters" / name
    work = Path(tempfile.mkdtemp(dir=DATA, prefix="by-hand-"))
    shutil.copytree(source / component if (source / component).is_dir() else source, work, dirs_exist_ok=True)
    commands = load_builtin(recipe)[0].commands
    port = free_port()
    env = {
        **os.environ,
        **cache_env(cache),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DIPLOI_STAGE": stage,
        "NODE_ENV": stage,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # uv
    }
    t = time.perf_counter()
    steps = [commands["install"]] + ([commands["build"]] if stage != "development" and "build" in commands else [])
    step_env = {k: v for k, v in env.items() if k != "NODE_ENV"}  # (as the platform's build steps)
    for step in steps:
        subprocess.run(["/bin/sh", "-c", step], cwd=work, env=step_env, check=True, capture_output=True)
    server = commands["development" if stage == "development" else "start"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(["/bin/sh", "-c", server], cwd=work, env=env, start_new_session=True, **quiet)
    try:
        wait_for(f"http://127.0.0.1:{port}/", timeout=300, any_status=True)
        return time.perf_counter() - t
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def starter_project(user: User, name: str, stack: str = "") -> Project:
    """The starter as a repository on this machine (its diploi.yaml `stack` when given), and a project made of it."""
    repo = DATA / "repos" / name
    shutil.copytree(BASE_DIR / "tests" / "starters" / name, repo)
    if stack:
        (repo / "diploi.yaml").write_text(stack)
    subprocess.run(["git", "init", "--quiet", "--initial-branch", "main"], cwd=repo, check=True)
    commit_all(repo, "A starter written for Diploi")
    project = Project.objects.create(name=name, slug=name, repository=str(repo), default_branch="main")
    Membership.objects.create(project=project, user=user, role=Role.OWNER)
    refresh_stack(project)
    assert not project.stack_errors, project.stack_errors
    return project


def starters() -> None:
    settings.DIPLOI_LOCAL_REPOSITORIES = [str(DATA / "repos")]
    settings.DIPLOI_ROUTER = "off"  # reached by port, as the by-hand runs are
    user, _ = sample_project(DATA)
    runtime = get_runtime()
    try:
        for name, (component, _) in STARTERS.items():
            project = starter_project(user, name)
            for stage in ("development", "production"):
                cache = Path(tempfile.mkdtemp(dir=DATA, prefix="cache-"))
                cold, warm = by_hand(name, stage, cache), by_hand(name, stage, cache)
                t = time.perf_counter()
                d = do_create_deployment(project, stage.title(), stage, "main", actor=user)
                tasks.provision(d.pk)
                d.refresh_from_db()
                wait_for(d.endpoints[component], timeout=300)
                created = time.perf_counter() - t
                t = time.perf_counter()
                if stage == "development":  # the install again (its node_modules / .venv in place), then the server
                    do_restart(d, component, actor=user, now=True)
                    time.sleep(0.5)
                else:  # a new release of the same commit: a fresh copy, installed from the warm cache, built, switched to
                    do_rebuild(d, actor=user, now=True)
                wait_for(d.endpoints[component], timeout=300)
                again = time.perf_counter() - t
                print(
                    f"{name:<20} {stage:<12} by hand: cold {cold:6.1f} s, warm {warm:6.1f} s | "
                    f"Diploi: create → answering (cold) {created:6.1f} s ({created / cold:.2f}× by hand), "
                    f"{'restart' if stage == 'development' else 'rebuild'} → answering (warm) {again:6.1f} s ({again / warm:.2f}× by hand)"
                )
    finally:
        clean_up(runtime)


def tree_rss(pid: int) -> dict[str, int]:
    """Resident memory of a process and everything below it, by process name (bytes)."""
    found: dict[str, int] = {}
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            name = p.name()
            found[name] = found.get(name, 0) + p.memory_info().rss
        except psutil.Error:
            continue
    return found


def podman_by_hand(context: Path, run: int = 0) -> dict[str, tuple[float, float]]:
    """`podman build` then `podman run` of the Dockerfile in `context`, by hand, with the base image
    loaded beforehand: rootful (root's podman in a store of its own), and rootless as an unprivileged
    user set up as the platform sets up a deployment's (its own uid and subordinate ids, slirp4netns) —
    what the platform itself does, without the platform. Per way: (build + run → answering, a
    restart: stop + run → answering) seconds."""
    from deployments.runtimes.local import containers
    from tests.images import scratch_podman

    found = {}
    work = Path(tempfile.mkdtemp(dir=DATA, prefix="podman-by-hand-"))
    with scratch_podman(work, driver="overlay") as (rootful, env):  # (overlay: what a deployment's podman uses)
        subprocess.run(
            [*rootful, "load", "-q", "-i", f"{settings.DIPLOI_CONTAINER_IMAGES}/busybox.tar"], env=env, check=True, capture_output=True
        )
        found["rootful"] = _build_and_run(rootful, env, context, [])

    uid = 57_999_999
    data_dir = Path(settings.DATA_DIR)  # (podman's configuration is the platform's, as for a deployment)
    home = data_dir / "deployments" / f"by-hand-{run}.rootless"
    home.mkdir(parents=True)
    copy = home / "context"
    shutil.copytree(context, copy)
    for path in [copy, *copy.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)
    podman = containers.Podman(data_dir, home, uid)
    podman.prepare(set())  # its account, storage and the base image
    try:
        argv = podman.argv()
        options = ["--network", "slirp4netns", "--log-driver", "none"]  # (as the platform runs them)
        found["rootless"] = _build_and_run(argv, {"PATH": containers.OUTER_PATH}, copy, options)
    finally:
        containers.remove(podman)
    return found


def _build_and_run(podman: list[str], env: dict[str, str], context: Path, run_options: list[str]) -> tuple[float, float]:
    port = free_port()

    def run() -> float:
        t = time.perf_counter()
        argv = [*podman, "run", "-d", "--rm", "--init", "--name", "by-hand", *run_options, "-e", "PORT=8080"]
        started = subprocess.run([*argv, "-p", f"127.0.0.1:{port}:8080", "by-hand"], env=env, capture_output=True, text=True, cwd="/")
        if started.returncode != 0:
            raise SystemExit(f"podman run by hand failed: {started.stderr.strip()}")
        wait_for(f"http://127.0.0.1:{port}/index.html")
        return time.perf_counter() - t

    t = time.perf_counter()
    subprocess.run([*podman, "build", "-q", "-t", "by-hand", str(context)], env=env, check=True, capture_output=True, cwd="/")
    cold = time.perf_counter() - t + run()
    t = time.perf_counter()  # a restart: stop it, run it again
    subprocess.run([*podman, "stop", "by-hand"], env=env, check=True, capture_output=True, cwd="/")
    warm = time.perf_counter() - t + run()
    subprocess.run([*podman, "rm", "-f", "-t", "0", "by-hand"], env=env, capture_output=True, cwd="/")
    return cold, warm


# The starter's Dockerfile component without its add-on (what is timed is the component), and the same
# files served by a recipe beside it (what its memory is compared with).
DOCKERFILE_BESIDE_RECIPE = """\
diploiVersion: v1.0
type: starter
name: Dockerfile beside a recipe
components:
  - {name: Web, identifier: web, folder: /web, package: dockerfile}
  - {name: Site, identifier: site, folder: /web, package: static}
addons: []
"""


def containers_bench(repeat: int) -> None:
    from deployments.runtimes.local import containers
    from diploi.celery import app as celery_app
    from tests.images import busybox_archive

    if why := containers.available():
        raise SystemExit(f"containers cannot run here: {why}")
    DATA.chmod(0o711)  # (a deployment's podman passes through it)
    settings.DIPLOI_LOCAL_REPOSITORIES = [str(DATA / "repos")]
    settings.DIPLOI_ROUTER = "off"  # reached by port, as the by-hand runs are
    settings.DIPLOI_CONTAINER_IMAGES = str(busybox_archive(Path(tempfile.mkdtemp(dir=DATA, prefix="images-"))))
    user, _ = sample_project(DATA)
    runtime = get_runtime()
    try:
        project = starter_project(user, "dockerfile-postgres", DOCKERFILE_BESIDE_RECIPE)
        runtime.supervisor.ensure_running()  # (running before any deployment, as `up` has it)
        celery_app.finalize(auto=True)  # (as the web process has it long before a user creates a deployment)
        created, again, by_hand = [], [], {}
        for run in range(repeat):  # (by hand and the platform in turns: a busy moment of the machine hits both)
            for way, times in podman_by_hand(BASE_DIR / "tests" / "starters" / "dockerfile-postgres" / "web", run).items():
                by_hand.setdefault(way, []).append(times)
            t = time.perf_counter()
            d = do_create_deployment(project, f"Production {run}", "production", "main", actor=user)
            tasks.provision(d.pk)
            d.refresh_from_db()
            wait_for(d.endpoints["web"] + "/index.html", timeout=300)
            created.append(time.perf_counter() - t)
            t = time.perf_counter()
            do_restart(d, "web", actor=user, now=True)  # (the old container is gone when it returns)
            wait_for(d.endpoints["web"] + "/index.html", timeout=300)
            again.append(time.perf_counter() - t)
        create, restart = statistics.median(created), statistics.median(again)
        print(
            f"Dockerfile component, production, median of {repeat}: create → answering {create:5.2f} s "
            f"(runs {' '.join(f'{x:.2f}' for x in created)}), restart → answering {restart:5.2f} s"
        )
        for way, times in by_hand.items():
            cold, warm = statistics.median(c for c, _ in times), statistics.median(w for _, w in times)
            print(
                f"  by hand, {way:<8}: podman build + run → answering {cold:5.2f} s (Diploi {create / cold:.2f}×), "
                f"podman stop + run {warm:5.2f} s (Diploi {restart / warm:.2f}×)"
            )
        spec = current_spec(d)
        info = runtime.supervisor.process_info([runtime.layout.program(spec, s) for s in ("web", "site")])
        trees = {s: tree_rss(info[runtime.layout.program(spec, s)]["pid"]) for s in ("web", "site")}
        mib = {s: sum(tree.values()) / 2**20 for s, tree in trees.items()}
        parts = ", ".join(f"{name} {rss / 2**20:.1f}" for name, rss in sorted(trees["web"].items(), key=lambda kv: -kv[1]))
        print(
            f"memory of a running service's process tree: container {mib['web']:.1f} MiB ({parts}) | "
            f"recipe (static, the same files) {mib['site']:.1f} MiB: {mib['web'] / mib['site']:.2f}×"
        )
    finally:
        clean_up(runtime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deployments", default="1,10,50,100")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--starters", action="store_true", help="only the two starters written for Diploi")
    parser.add_argument("--containers", action="store_true", help="only a component built from its Dockerfile (root, podman)")
    args = parser.parse_args()
    if args.starters:
        starters()
        return
    if args.containers:
        containers_bench(args.repeat)
        return
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
        clean_up(runtime)


if __name__ == "__main__":
    main()
