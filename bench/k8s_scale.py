"""The Kubernetes runtime at scale, against a real control plane with KWOK nodes.

    DIPLOI_K8S_STATE=/tmp/diploi-k8s-bench DIPLOI_K8S_NODES=50 DIPLOI_K8S_NODE_PODS=500 DIPLOI_K8S_CONTROLLER_QPS=200 \\
        scripts/k8s-testenv start
    DIPLOI_BENCH_KUBECONFIG=/tmp/diploi-k8s-bench/kubeconfig DIPLOI_K8S_STATE=/tmp/diploi-k8s-bench REDIS_URL=redis://127.0.0.1:6379/5 \\
        uv run python bench/k8s_scale.py [--counts 100,1000,10000] [--threads 8]
    DIPLOI_K8S_STATE=/tmp/diploi-k8s-bench scripts/k8s-testenv stop
    uv run python bench/k8s_scale.py --derive 10000   # observe()'s derivation alone, no cluster
    uv run python bench/k8s_scale.py --attach=<a run's data dir> --more 300   # apply 300 beside what it left

Deployments are the sample project's development deployment (web + Redis: two StatefulSets, two pods,
ten objects) under different names, each also a row in a SQLite database, as the monitor reads them.
For each count, with a baseline measured in the same run:
- apply throughput: new deployments applied by `--threads` threads through one runtime (as a worker's
  threads would), next to the same number of plain GETs per object, sent one after another (the API's
  round trip, the issue's baseline; timed on up to 2,000 of them and scaled) and sent by as many threads
  (up to 20,000); then deployments applied again unchanged, and with one env var changed (writes
  sent, time);
- observe() of every deployment from an informer (latency, API calls), next to observe() by listing
  the cluster (what every tick did before), and the memory the informer's objects take;
- resident memory of the monitor (the real `manage.py monitor`, started after the first count) and of
  the API server;
- the time from a pod being deleted to that monitor storing the change and its live event reaching the
  deployment's channel-layer group (what the web processes forward to the browsers), while it also runs
  its full ticks over every deployment.
"""

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
# --attach=<data dir> [--more=N] [--monitor=<pid>]: what a run left (its rows, its namespaces): N new
# deployments applied beside them; with its monitor still running, observation, memory and a pod's
# deletion at the size it reached.
ATTACH = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--attach=")), "")
DATA = Path(ATTACH).parent if ATTACH else Path(tempfile.mkdtemp(prefix="diploi-k8s-bench-"))
KUBECONFIG = os.environ.get("DIPLOI_BENCH_KUBECONFIG", "")
if not KUBECONFIG and not any(a.startswith("--derive") for a in sys.argv):
    raise SystemExit(__doc__)
STATE = Path(os.environ.get("DIPLOI_K8S_STATE", str(Path(KUBECONFIG).parent)))
os.environ.update(
    DIPLOI_DATA_DIR=str(DATA / "data"),
    DJANGO_SETTINGS_MODULE="diploi.settings",
    DIPLOI_RUNTIME="kubernetes",
    DIPLOI_K8S_KUBECONFIG=KUBECONFIG,
)
os.environ.pop("DATABASE_URL", None)

import django  # noqa: E402

django.setup()


from bench.sample import sample_project  # noqa: E402
from deployments.models import Deployment, State  # noqa: E402
from deployments.provisioning.spec import current_spec  # noqa: E402
from deployments.runtimes import get_runtime  # noqa: E402
from deployments.runtimes.kubernetes.client import Kube  # noqa: E402
from deployments.runtimes.kubernetes.manifests import MANAGED, manifests, namespace  # noqa: E402
from deployments.runtimes.kubernetes.runtime import KubernetesRuntime  # noqa: E402

MIB = 1024 * 1024


def rss(pid: int | None = None) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


PARTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok")


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by the control plane's processes, and by this one (the client)."""
    used = {"bench": sum(psutil.Process().cpu_times()[:2])}
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in PARTS:
            try:
                used[p.info["name"]] = used.get(p.info["name"], 0.0) + sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
    return used


def apiserver_rss() -> str:
    try:
        return f"{rss(int((STATE / 'apiserver.pid').read_text())):.0f} MiB"
    except (OSError, ValueError, psutil.Error):
        return "unknown (no apiserver.pid under DIPLOI_K8S_STATE)"


def at_once(threads: int, calls: list) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(c) for c in calls]:
            f.result()
    return time.perf_counter() - started


def rows(project, template, first: int, last: int) -> list:
    """Deployment rows for specs first..last-1 (what the monitor reads), and their specs."""
    made = Deployment.objects.bulk_create(
        Deployment(
            project=project,
            name=f"b{i:05}",
            slug=f"b{i:05}",
            branch=template.branch,
            commit=template.commit,
            state=State.RUNNING,
            status={},
        )
        for i in range(first, last)
    )
    return [replace(template, id=d.pk, slug=d.slug) for d in made]


def pod_delete_seen(kube: Kube, spec, monitor: psutil.Process) -> tuple[float, float]:
    """Seconds from deleting the deployment's web pod to its status being stored, and to the live event
    reaching the deployment's group."""
    import asyncio

    from channels.layers import get_channel_layer

    from deployments.live import events

    layer = get_channel_layer()
    joined, times = threading.Event(), {}

    async def listen() -> None:  # as a web process's hub: a member of the group, in its own loop
        channel = await layer.new_channel()
        await layer.group_add(events.group(spec.id), channel)
        joined.set()
        try:
            await asyncio.wait_for(layer.receive(channel), 60)
            times["published"] = time.perf_counter()
        finally:
            await layer.group_discard(events.group(spec.id), channel)

    listener = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
    listener.start()
    joined.wait(10)
    before = Deployment.objects.get(pk=spec.id).status
    pods = kube.list("Pod", namespace(spec), f"{MANAGED}=diploi,diploi.io/component=web")
    t0 = time.perf_counter()
    kube.delete("Pod", pods[0]["metadata"]["name"], namespace(spec))
    stored = None
    while stored is None and time.perf_counter() < t0 + 60 and monitor.is_running():
        if Deployment.objects.filter(pk=spec.id).values_list("status", flat=True).first() != before:
            stored = time.perf_counter() - t0
        time.sleep(0.005)
    listener.join(60)
    return stored or float("nan"), times.get("published", float("nan")) - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--attach", help="the data directory of an interrupted run (see ATTACH)")
    parser.add_argument("--monitor", type=int, help="with --attach: the pid of that run's monitor")
    parser.add_argument("--more", type=int, default=0, help="with --attach: first apply this many new deployments beside those")
    parser.add_argument("--derive", type=int, help="only time observe()'s derivation over this many deployments (no cluster)")
    args = parser.parse_args()
    if args.derive:
        derive(args.derive)
        return
    if args.attach:
        attach(args.monitor, args.more, args.threads)
        return
    counts = sorted(int(n) for n in args.counts.split(","))
    get_runtime.cache_clear()
    runtime = get_runtime()  # the monitor's: it will watch
    assert isinstance(runtime, KubernetesRuntime)
    kube = runtime.kube
    plain = Kube(KUBECONFIG)  # the baselines' own client (its calls are not counted with the runtime's)
    user, project = sample_project(DATA)
    template = current_spec(Deployment.objects.create(project=project, name="t", slug="t", branch="main", commit=project.stack_commit))
    Deployment.objects.filter(slug="t").delete()
    per_deployment = len(manifests(template))
    nodes = len(plain.list("Node"))
    print(
        f"control plane: {nodes} KWOK nodes, {psutil.cpu_count()} CPUs; {per_deployment} objects per deployment; "
        f"{args.threads} threads apply; client limits {kube.limit.qps:g} req/s, bursts of {kube.limit.burst}, "
        f"{kube.pool._max_workers} writes at once; everything on loopback"
    )
    print(f"resident memory before anything: this process {rss():.0f} MiB, the API server {apiserver_rss()}\n")

    specs: list = []
    monitor: subprocess.Popen | None = None
    log = open(DATA / "monitor.log", "w")  # noqa: SIM115 - the monitor's output, for as long as it runs
    try:
        for n in counts:
            batch = rows(project, template, len(specs), n)
            print(f"— {n} deployments —")
            apply_new(runtime, plain, batch, args.threads)
            specs += batch
            again = specs[-min(len(specs), 200) :]
            for label, applied in (("unchanged", again), ("one env var changed", [with_env(s) for s in again])):
                kube.calls = kube.writes = 0
                took = at_once(args.threads, [lambda s=s: runtime.apply(s) for s in applied])
                print(
                    f"  apply {len(again)} again, {label}: {len(again) / took * 60:6.0f} deployments/min, "
                    f"{kube.writes / len(again):.1f} writes and {kube.calls / len(again):.1f} calls each"
                )
            at_once(args.threads, [lambda s=s: runtime.apply(s) for s in again])  # as they were (not measured)

            if monitor is None:
                monitor = subprocess.Popen(
                    [sys.executable, "manage.py", "monitor", "--no-polling"], cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT
                )
            measure(runtime, plain, specs, psutil.Process(monitor.pid))
    finally:
        if monitor is not None:
            monitor.terminate()
            monitor.wait(30)
    print("deleting the bench's namespaces")
    at_once(args.threads, [lambda s=s: plain.delete("Namespace", namespace(s)) for s in specs])


def apply_new(runtime: KubernetesRuntime, plain: Kube, batch: list, threads: int) -> None:
    """New deployments applied by `threads` threads: the rate, next to as many plain GETs (one after
    another, and by as many threads), and the control plane's CPU per deployment."""
    kube = runtime.kube
    per_deployment = len(manifests(batch[0]))
    kube.calls = kube.writes = 0
    cpu = cpu_seconds()
    took = at_once(threads, [lambda s=s: runtime.apply(s) for s in batch])
    calls, writes = kube.calls, kube.writes
    cpu = {k: (v - cpu.get(k, 0.0)) / len(batch) * 1000 for k, v in cpu_seconds().items()}
    gets = len(batch) * per_deployment
    one_by_one = at_once(1, [lambda: plain.request("GET", "/version") for _ in range(min(gets, 2000))]) * gets / min(gets, 2000)
    sample = min(gets, 20_000)  # GETs take the same time at any count: a sample, scaled
    threaded = at_once(threads, [lambda: plain.request("GET", "/version") for _ in range(sample)]) * gets / sample
    print(
        f"  apply {len(batch)} new: {len(batch) / took * 60:6.0f} deployments/min ({took / len(batch) * 1000:5.1f} ms each; "
        f"{calls / len(batch):.1f} calls, {writes / len(batch):.1f} writes each)\n"
        f"    baseline, {per_deployment} GETs per deployment: one after another {len(batch) / one_by_one * 60:6.0f}/min "
        f"(apply takes {took / one_by_one:.2f}× that), {threads} threads {len(batch) / threaded * 60:6.0f}/min "
        f"(apply takes {took / threaded:.2f}× that)\n"
        f"    CPU per deployment applied: {', '.join(f'{k} {v:.0f} ms' for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))} "
        f"(of {psutil.cpu_count()} CPUs: at most {psutil.cpu_count() * 60_000 / sum(cpu.values()):.0f} deployments/min here)"
    )


def measure(runtime: KubernetesRuntime, plain: Kube, specs: list, monitor: psutil.Process, patience: float = 1800) -> None:
    """Observation from the informer and by listing, memory, and a pod's deletion seen by the monitor."""
    kube = runtime.kube
    if runtime.informer is None:
        t = time.perf_counter()
        runtime.watch(lambda ids: None)
        runtime.informer.wait_synced(600)
        print(f"  the informer's first lists: {time.perf_counter() - t:.1f} s")
    wait_until_held(runtime, specs, patience)
    settle(monitor, specs, patience)
    gc.collect()
    held = runtime.informer.count()
    size = held_bytes(runtime.informer)
    print(
        f"  memory: the informer's {held} objects take {size / MIB:.1f} MiB ({size / held:.0f} bytes each); resident: "
        f"the monitor {rss(monitor.pid):.0f} MiB, the API server {apiserver_rss()}"
    )
    samples, calls = [], []
    for _ in range(5):
        kube.calls = 0
        t = time.perf_counter()
        runtime.observe(specs)
        samples.append(time.perf_counter() - t)
        calls.append(kube.calls)
    listing = KubernetesRuntime(plain)
    plain.calls = 0
    t = time.perf_counter()
    listing.observe(specs)
    listed = time.perf_counter() - t
    print(
        f"  observe({len(specs)}): {statistics.median(samples) * 1000:7.1f} ms from the informer, {max(calls)} API calls "
        f"(the metrics API, at most once per interval; this cluster does not serve it)   baseline: by listing the cluster "
        f"{listed * 1000:7.1f} ms, {plain.calls} calls ({listed / statistics.median(samples):.0f}×)"
    )
    seen = [pod_delete_seen(plain, specs[i * len(specs) // 5], monitor) for i in range(5)]
    stored = sorted(s for s, _ in seen)
    published = sorted(p for _, p in seen)
    print(
        f"  pod deleted → status stored: median {statistics.median(stored) * 1000:5.0f} ms, max {stored[-1] * 1000:5.0f} ms; "
        f"→ live event in the group: median {statistics.median(published) * 1000:5.0f} ms, max {published[-1] * 1000:5.0f} ms "
        f"(the monitor's full ticks cover all {len(specs)} meanwhile)\n"
    )


def attach(monitor_pid: int | None, more: int, threads: int) -> None:
    """What an interrupted (or finished, stopped before it deleted) run left: every row whose namespace
    exists. With `more`, that many new deployments are applied beside them first (the apply rate at
    that size, with this checkout's manifests); with the run's monitor, everything is measured."""
    plain = Kube(KUBECONFIG)
    present = {ns["metadata"]["name"] for items, _ in plain.list_pages("Namespace", f"{MANAGED}=diploi") for ns in items}
    rows_found = [d for d in Deployment.objects.select_related("project").order_by("pk") if f"diploi-d{d.pk}" in present]
    template = current_spec(rows_found[0])
    specs = [replace(template, id=d.pk, slug=d.slug) for d in rows_found]
    print(f"— attached: {len(specs)} deployments applied of {Deployment.objects.count()} rows —")
    runtime = KubernetesRuntime()  # the client as configured, as in a full run
    if more:
        first = Deployment.objects.count()
        batch = rows(rows_found[0].project, template, first, first + more)
        apply_new(runtime, plain, batch, threads)
        specs += batch
    if monitor_pid:
        measure(runtime, plain, specs, psutil.Process(monitor_pid), patience=300)


def derive(n: int) -> None:
    """observe() over an informer holding n running deployments (web + Redis pods), no cluster: the
    derivation alone, first (every deployment derived: the baseline), then again with nothing changed,
    then with one deployment's objects changed."""
    from deployments.runtimes.kubernetes.informer import Informer

    informer = Informer(Kube.__new__(Kube), f"{MANAGED}=diploi")
    project = sample_project(DATA)[1]
    template = current_spec(Deployment.objects.create(project=project, name="t", slug="t", branch="main", commit=project.stack_commit))
    assert [s.identifier for s in template.services] == ["web", "redis"]
    specs = [replace(template, id=i) for i in range(n)]

    def pod(spec, component: str, restarts: int = 0) -> dict:  # as a watch event brings it
        labels = {"diploi.io/component": component, "diploi.io/deployment-id": str(spec.id)}
        status = {"phase": "Running", "containerStatuses": [{"name": component, "ready": True, "restartCount": restarts, "state": {}}]}
        meta = {"name": f"{component}-0", "namespace": namespace(spec), "labels": labels}
        return {"type": "MODIFIED", "object": {"metadata": meta, "status": status}}

    for spec in specs:
        for component in ("web", "redis"):
            informer._apply("Pod", pod(spec, component))
    runtime = KubernetesRuntime.__new__(KubernetesRuntime)
    runtime.informer, runtime._observed = informer, {}
    figures = []
    for change in (False, False, True):
        if change:
            informer._apply("Pod", pod(specs[0], "web", restarts=1))
        t = time.perf_counter()
        runtime._from_informer(specs, None)
        figures.append(time.perf_counter() - t)
    print(
        f"observe({n}) from an informer, derivation only: every deployment derived {figures[0] * 1000:.0f} ms (baseline); "
        f"nothing changed {figures[1] * 1000:.1f} ms ({figures[0] / figures[1]:.0f}× less); one changed {figures[2] * 1000:.1f} ms"
    )


def with_env(spec):
    """The spec with one more env var for its web component."""
    return replace(spec, services=tuple(replace(s, env={**s.env, "BENCH": "1"}) if s.identifier == "web" else s for s in spec.services))


def held_bytes(informer) -> int:
    """The memory of the informer's objects, every Python object counted once (interned strings too)."""
    seen: set[int] = set()
    total = 0
    with informer.lock:
        stack: list = [informer.index]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            total += sys.getsizeof(obj)
            if isinstance(obj, dict):
                stack.extend(obj.keys())
                stack.extend(obj.values())
            elif isinstance(obj, list | tuple | set):
                stack.extend(obj)
    return total


def settle(monitor: psutil.Process, specs: list, timeout: float = 1800) -> None:
    """Until the monitor has stored a green status for every deployment (its first full ticks done)."""
    deadline = time.monotonic() + timeout
    t = time.perf_counter()
    ids = [s.id for s in specs]
    while time.monotonic() < deadline and monitor.is_running():
        statuses = Deployment.objects.filter(pk__in=ids).values_list("status", flat=True)
        green = sum(1 for status in statuses if status.get("colour") == "green")
        if green == len(ids):
            print(f"  the monitor shows all {len(ids)} green ({time.perf_counter() - t:.0f} s after their pods ran)")
            return
        time.sleep(2)
    print(f"  the monitor did not show every deployment green (its log: {DATA / 'monitor.log'})")


def wait_until_held(runtime: KubernetesRuntime, specs: list, timeout: float = 1800) -> None:
    """Until every deployment's web pod runs (as the cluster reports it, through the informer)."""
    deadline = time.monotonic() + timeout
    t = time.perf_counter()
    while time.monotonic() < deadline:
        missing = [s for s in specs if not any(p["status"]["phase"] == "Running" for p in runtime.informer.of(str(s.id))[1]["Pod"])]
        if not missing:
            print(f"  every deployment's pods run ({time.perf_counter() - t:.0f} s after the applies)")
            return
        time.sleep(2)
    print(f"  {len(missing)} deployments still have no running pod after {timeout:.0f} s")


if __name__ == "__main__":
    main()
