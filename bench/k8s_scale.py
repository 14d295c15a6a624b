"""The Kubernetes runtime at scale, against a real control plane with KWOK nodes.

    DIPLOI_K8S_STATE=/tmp/diploi-k8s-bench DIPLOI_K8S_NODES=50 scripts/k8s-testenv start
    DIPLOI_BENCH_KUBECONFIG=/tmp/diploi-k8s-bench/kubeconfig uv run python bench/k8s_scale.py [--counts 100,1000]
    DIPLOI_K8S_STATE=/tmp/diploi-k8s-bench scripts/k8s-testenv stop

Prints, with a baseline measured in the same run:
- apply throughput (deployments per minute) for each count, next to the same number of plain GET
  requests to the API server (its raw round trip);
- observe() latency and API calls per call for 10 / 100 / 1,000 deployments (all of them applied).
Deployments are the sample project's development deployment under different names.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DATA = Path(tempfile.mkdtemp(prefix="diploi-k8s-bench-"))
KUBECONFIG = os.environ.get("DIPLOI_BENCH_KUBECONFIG", "")
if not KUBECONFIG:
    raise SystemExit(__doc__)
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
from deployments.runtimes.kubernetes.client import Kube  # noqa: E402
from deployments.runtimes.kubernetes.manifests import MANAGED, manifests, namespace  # noqa: E402
from deployments.runtimes.kubernetes.runtime import KubernetesRuntime  # noqa: E402


def sample_spec():
    user, project = sample_project(DATA)
    d = Deployment.objects.create(project=project, name="d", slug="d", branch="main", commit=project.stack_commit, state=State.RUNNING)
    return current_spec(d)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="100,1000")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.counts.split(","))
    kube = Kube(KUBECONFIG)
    runtime = KubernetesRuntime(kube)
    template = sample_spec()
    per_deployment = len(manifests(template))
    nodes = len(kube.list("Node"))
    print(f"control plane: {nodes} KWOK nodes; {per_deployment} objects per deployment; everything on loopback\n")

    specs = []
    print("apply throughput (server-side apply, one deployment after another):")
    for n in counts:
        batch = [replace(template, id=100_000 + i, slug=f"b{i:04}") for i in range(len(specs), n)]
        t = time.perf_counter()
        for spec in batch:
            runtime.apply(spec)
        took = time.perf_counter() - t
        specs += batch
        base_t = time.perf_counter()
        for _ in range(len(batch) * per_deployment):
            kube.request("GET", "/version")
        base = time.perf_counter() - base_t
        print(
            f"  {len(batch):>5} more deployments (total {n:>5}): {len(batch) / took * 60:8.0f} deployments/min   "
            f"({took / len(batch) * 1000:6.1f} ms each; baseline: the same number of plain GETs takes "
            f"{base / len(batch) * 1000:5.1f} ms per deployment, {took / base:.1f}×)"
        )

    print("\nobserve() (pods, claims, StatefulSets and Deployments listed across namespaces):")
    for n in [c for c in (10, 100, 1000) if c <= len(specs)]:
        samples, calls = [], []
        for _ in range(5):
            kube.calls = 0
            t = time.perf_counter()
            runtime.observe(specs[:n])
            samples.append(time.perf_counter() - t)
            calls.append(kube.calls)
        print(f"  {n:>5} deployments: {statistics.median(samples) * 1000:8.1f} ms/call, {max(calls)} API calls per call")
    pods = len(kube.list("Pod", selector=f"{MANAGED}=diploi"))
    print(f"\n({pods} pods exist; deleting the bench's namespaces)")
    for spec in specs:
        kube.delete("Namespace", namespace(spec))


if __name__ == "__main__":
    main()
