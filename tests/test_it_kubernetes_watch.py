"""The Kubernetes runtime at scale, on the real control plane: observation from watches (informer.py),
applies that write nothing when nothing changed, and a server that sheds load (429)."""

import contextlib
import http.server
import os
import subprocess
import threading
from dataclasses import replace

import pytest

from tests.conftest import BASE_DIR, wait_until
from tests.test_it_kubernetes import KUBECONFIG, kube, needs_cluster, sample_spec  # noqa: F401 - kube is a fixture

OURS = "app.kubernetes.io/managed-by=diploi"


def watching(runtime) -> list[set[int]]:
    """The runtime follows the cluster as the monitor's does; what it announces is collected."""
    announced: list[set[int]] = []
    runtime.watch(announced.append)
    assert runtime.informer.wait_synced(60)
    return announced


def listed(client) -> dict[str, dict]:
    """Every Diploi object as a full list shows it now, trimmed as the informer keeps it."""
    from deployments.runtimes.kubernetes.observe import OBSERVED_KINDS, trim

    return {
        kind: {(o["metadata"]["namespace"], o["metadata"]["name"]): trim(kind, o) for o in client.list(kind, selector=OURS)}
        for kind in OBSERVED_KINDS
    }


def held(runtime) -> dict[str, dict]:
    from deployments.runtimes.kubernetes.observe import OBSERVED_KINDS

    return {kind: runtime.informer.held(kind) for kind in OBSERVED_KINDS}


def matches_a_full_list(runtime, client) -> bool:
    return held(runtime) == listed(client)


@pytest.fixture
def runtime(kube):  # noqa: F811 - the fixture of the same name
    from deployments.runtimes.kubernetes.client import Kube
    from deployments.runtimes.kubernetes.runtime import KubernetesRuntime

    found = KubernetesRuntime(Kube(KUBECONFIG))
    yield found
    if found.informer is not None:
        found.informer.stop()


@needs_cluster
@pytest.mark.django_db
def test_a_watch_fed_observation_matches_a_full_list_after_a_burst(cast, kube, runtime) -> None:  # noqa: F811
    from deployments.runtimes.kubernetes.manifests import namespace
    from deployments.runtimes.kubernetes.runtime import KubernetesRuntime

    specs = [sample_spec(cast, slug=f"w{i}")[1] for i in range(4)]
    runtime.apply(specs[0])
    announced = watching(runtime)
    for spec in specs[1:]:  # the burst: three new deployments, a pod deleted, a workload changed, one deleted
        runtime.apply(spec)
    wait_until(lambda: kube.list("Pod", namespace(specs[1]), OURS), timeout=60, what="a pod of the second deployment")
    pod = kube.list("Pod", namespace(specs[1]), OURS)[0]["metadata"]["name"]
    kube.delete("Pod", pod, namespace(specs[1]))
    runtime.set_enabled(specs[2], False)
    kube.delete("Namespace", namespace(specs[3]))

    wait_until(lambda: matches_a_full_list(runtime, kube), timeout=60, what="the informer to hold what a full list shows")
    assert {s.id for s in specs[1:]} <= set().union(*announced)  # each changed deployment was announced
    gone = str(specs[3].id)  # once its namespace's objects are all deleted, nothing is kept for it
    wait_until(lambda: gone not in runtime.informer.index, timeout=120, what="the deleted deployment to be forgotten")
    assert runtime.informer.generation(gone) == 0 and not any(kube.list(kind, namespace(specs[3]), OURS) for kind in ("Pod", "StatefulSet"))
    runtime.kube.calls = 0
    runtime.observe(specs)
    assert runtime.kube.calls <= 1  # the metrics API at most: nothing is listed
    listing = KubernetesRuntime(kube)  # the cluster still moves (a namespace going): equal once it is still
    wait_until(lambda: runtime.observe(specs) == listing.observe(specs), timeout=60, what="the same observation as by listing")
    runtime.kube.calls = 0
    runtime.observe(specs)
    assert runtime.kube.calls == 0  # the metrics too are read at most once per monitor interval

    trimmed = held(runtime)["Pod"]
    assert trimmed and all(set(p) == {"metadata", "status"} for p in trimmed.values())  # kept to what is read


@needs_cluster
@pytest.mark.django_db
def test_a_watch_broken_by_the_api_server_going_away_recovers_with_nothing_missed(cast, kube, runtime, monkeypatch) -> None:  # noqa: F811
    from deployments.runtimes.base import TransientFailure
    from deployments.runtimes.kubernetes import runtime as module
    from deployments.runtimes.kubernetes.manifests import namespace

    state = os.environ.get("DIPLOI_K8S_STATE", "/tmp/diploi-k8s")
    if os.path.realpath(KUBECONFIG) != os.path.realpath(f"{state}/kubeconfig"):
        pytest.skip("stops and starts the API server of scripts/k8s-testenv, not another cluster's")
    script = str(BASE_DIR / "scripts" / "k8s-testenv")
    monkeypatch.setattr(module, "BROKEN_GRACE", 1)
    first, second = (sample_spec(cast, slug=f"r{i}")[1] for i in range(2))
    runtime.apply(first)
    watching(runtime)
    wait_until(lambda: kube.list("Pod", namespace(first), OURS), timeout=60, what="a pod")

    subprocess.run([script, "apiserver-stop"], check=True, timeout=60)
    try:
        wait_until(lambda: runtime.informer.broken_for() > 1, timeout=30, what="the watches to notice")
        with pytest.raises(TransientFailure):  # not a stale picture: the monitor skips its tick
            runtime.observe([first])
    finally:
        subprocess.run([script, "apiserver-start"], check=True, timeout=180)
    runtime.apply(second)  # changes as soon as it is back, before the watches are
    pod = kube.list("Pod", namespace(first), OURS)[0]["metadata"]["name"]
    kube.delete("Pod", pod, namespace(first))
    wait_until(lambda: matches_a_full_list(runtime, kube), timeout=90, what="the informer to catch up")
    assert runtime.informer.broken_for() == 0
    # the watches' versions predate the restarted server's watch cache: 410, and those kinds were listed again
    assert sum(runtime.informer.lists.values()) > len(runtime.informer.lists)
    assert namespace(second) in {ns for ns, _ in held(runtime)["StatefulSet"]}
    assert set(runtime.observe([first, second])) == {first.id, second.id}


@needs_cluster
@pytest.mark.django_db
def test_a_version_the_server_no_longer_has_410_is_listed_again(cast, kube, runtime) -> None:  # noqa: F811
    from deployments.runtimes.kubernetes.manifests import namespace

    spec = sample_spec(cast, slug="gone")[1]
    runtime.apply(spec)
    watching(runtime)
    informer = runtime.informer
    wait_until(lambda: informer.watches.get("Pod"), timeout=30, what="the pods' watch")
    before = informer.lists["Pod"]
    for _ in range(3):  # (an event arriving between the two lines below moves the version on again: once more)
        informer.versions["Pod"] = "1"  # long compacted or before the watch cache: the server answers 410
        informer.watches["Pod"].close()  # the watch ends; the next starts from version 1
        with contextlib.suppress(AssertionError):
            wait_until(lambda: informer.lists["Pod"] > before, timeout=10, what="a new list after 410 Gone")
            break
    assert informer.lists["Pod"] > before, "no new list after 410 Gone"
    kube.delete("Pod", kube.list("Pod", namespace(spec), OURS)[0]["metadata"]["name"], namespace(spec))
    wait_until(lambda: matches_a_full_list(runtime, kube), timeout=60, what="the informer to follow again")
    assert informer.broken_for() == 0


@needs_cluster
@pytest.mark.django_db
def test_an_apply_that_changes_nothing_writes_nothing(cast, kube, runtime) -> None:  # noqa: F811
    from deployments.runtimes.kubernetes.client import KubeUnavailable
    from deployments.runtimes.kubernetes.manifests import namespace

    d, spec = sample_spec(cast, slug="same")
    runtime.apply(spec)
    client = runtime.kube
    client.calls = client.writes = 0
    assert runtime.apply(spec) == {"web": "https://same--shop.localhost"}
    assert (client.writes, client.calls) == (0, 1)  # one read of the namespace, no write

    changed = replace(spec, services=tuple(replace(s, env={**s.env, "NEW": "1"}) if s.identifier == "web" else s for s in spec.services))
    runtime.apply(changed)
    assert 1 < client.writes < 6  # the Secret and the workload whose template holds its checksum, and the record
    secret = kube.get("Secret", "env.web", namespace(spec))
    assert "NEW" in secret["data"]  # the change did reach the cluster
    client.writes = 0
    runtime.apply(changed)
    assert client.writes == 0

    kube.patch("StatefulSet", "web", namespace(spec), {"metadata": {"annotations": {"diploi.io/applied": "x"}}})
    runtime.apply(changed)  # an annotation on another object says nothing: still nothing to write
    assert client.writes == 0

    # Back to the first spec, failing half-way (the API server refuses the workload): the Secret is the
    # first spec's again, the StatefulSet still the changed one's. Applying the changed spec again must
    # write what the failed apply left half-done, not trust that it is still there.
    real = client.apply

    def refuse_workloads(obj: dict, **how) -> dict:
        if obj["kind"] == "StatefulSet" and not how.get("dry_run"):  # (it passed the API server's check first)
            raise KubeUnavailable(503, "refused by the test")
        return real(obj, **how)

    client.apply = refuse_workloads
    with pytest.raises(KubeUnavailable):
        runtime.apply(spec)
    client.apply = real
    assert "NEW" not in kube.get("Secret", "env.web", namespace(spec))["data"]
    client.writes = 0
    runtime.apply(changed)
    assert client.writes >= 2 and "NEW" in kube.get("Secret", "env.web", namespace(spec))["data"]


class Shedding(http.server.BaseHTTPRequestHandler):
    """An API server under load, as priority and fairness answers: 429 with Retry-After, then the answer."""

    refusals = 2
    seen: list[float] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        import time

        type(self).seen.append(time.monotonic())
        if len(self.seen) <= self.refusals:
            body = b'{"kind":"Status","code":429,"message":"Too many requests, please try again later."}'
            self.send_response(429)
            self.send_header("Retry-After", "1")
        else:
            body = b'{"kind":"NamespaceList","items":[],"metadata":{}}'
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("refusals", [2, 99])
def test_429_is_asked_again_after_retry_after_then_reported(tmp_path, refusals) -> None:
    from deployments.runtimes.kubernetes import client as module

    Shedding.refusals, Shedding.seen = refusals, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Shedding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{server.server_port}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    try:
        client = module.Kube(str(config))
        if refusals == 2:
            assert client.list("Namespace") == []
            gaps = [b - a for a, b in zip(Shedding.seen, Shedding.seen[1:], strict=False)]
            assert len(Shedding.seen) == 3 and all(g >= 0.9 for g in gaps)  # waited as told, each time
        else:
            with pytest.raises(module.KubeUnavailable) as raised:
                client.list("Namespace")
            assert raised.value.status == 429 and len(Shedding.seen) == module.RETRY_AFTER_TIMES + 1
    finally:
        server.shutdown()


@needs_cluster
@pytest.mark.django_db
def test_a_deleted_pod_is_looked_at_alone_and_stored_without_listing(cast, kube) -> None:  # noqa: F811
    """The monitor's path for what its watches see: the deployment is announced, looked at alone (no list,
    no other deployment), and its new status stored and published."""
    from deployments.management.commands.monitor import Changed
    from deployments.models import Deployment
    from deployments.runtimes.kubernetes.manifests import namespace
    from deployments.status.monitor import Monitor

    d, spec = sample_spec(cast, slug="seen")
    monitor = Monitor()
    monitor.runtime.apply(spec)
    changed = Changed()
    try:
        assert monitor.runtime.watch(changed.add)

        def green() -> bool:
            monitor.tick()
            return Deployment.objects.get(pk=d.pk).status.get("colour") == "green"

        wait_until(green, timeout=90, what="the deployment to run")
        changed.take(0)
        kube.patch("StatefulSet", "web", namespace(spec), {"spec": {"replicas": 0}})  # its pod goes, and stays away
        client, looks = monitor.runtime.kube, []

        def looked_at_alone() -> bool:
            announced = changed.take(1)
            if not announced:
                return False
            assert announced == {d.pk}
            calls = client.calls
            assert monitor.tick(only=announced) == 1
            looks.append(client.calls - calls)
            return Deployment.objects.get(pk=d.pk).status.get("colour") != "green"

        wait_until(looked_at_alone, timeout=60, what="the pod's going to be stored")
        assert max(looks) <= 1  # no list: the metrics API at most
    finally:
        monitor.runtime.informer.stop()
