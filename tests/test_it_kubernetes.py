"""The Kubernetes runtime against a real API server (scripts/k8s-testenv: kube-apiserver, controllers,
scheduler, etcd, KWOK nodes) — or any cluster DIPLOI_TEST_KUBECONFIG points at. The manifest checks
need no cluster."""

import asyncio
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace

import asyncssh
import pytest

from deployments.models import Deployment, SSHSession, State
from tests.conftest import wait_until

KUBECONFIG = os.environ.get("DIPLOI_TEST_KUBECONFIG", "")
# What the test control plane's simulated builders report as the digest of the image they pushed.
TEST_DIGEST = "sha256:" + re.search(r"^TEST_DIGEST=([0-9a-f]{64})$", open("scripts/k8s-testenv").read(), re.M).group(1)
needs_cluster = pytest.mark.skipif(not KUBECONFIG, reason="no control plane: run scripts/k8s-testenv start and set DIPLOI_TEST_KUBECONFIG")


def sample_spec(cast, stage: str = "development", slug: str = "dev"):
    from deployments.provisioning.spec import current_spec

    d = Deployment.objects.create(
        project=cast.project,
        name=slug.title(),
        slug=slug,
        stage=stage,
        branch="main",
        state=State.RUNNING,
        commit=cast.project.stack_commit,
        release_id=None,
    )
    spec = current_spec(d)
    return d, (replace(spec, release=spec.commit) if stage != "development" else spec)


@pytest.mark.django_db
@pytest.mark.parametrize("stage", ["development", "production"])
@pytest.mark.parametrize("registry_auth", [False, True])
def test_every_manifest_validates_strictly_for_kubernetes_1_30_to_1_37(cast, data_dir, settings, stage, registry_auth) -> None:
    import kubernetes_validate

    from deployments.runtimes.kubernetes.manifests import manifests

    if registry_auth:
        settings.DIPLOI_K8S_REGISTRY_PULL_AUTH, settings.DIPLOI_K8S_REGISTRY_PUSH_AUTH = "puller:p", "pusher:s"
        settings.DIPLOI_K8S_ALLOWED_CIDRS = ["10.96.0.20/32"]  # an in-cluster registry
    _, spec = sample_spec(cast, stage)
    objects = manifests(replace(spec, hosts=("shop.example.com",)))
    web = ["Secret", "PersistentVolumeClaim", "Service", "StatefulSet"] if stage == "development" else ["Secret", "Service", "Deployment"]
    boundary = ["NetworkPolicy", "NetworkPolicy", "ResourceQuota", "LimitRange"]
    if registry_auth and stage == "production":
        boundary.append("Secret")  # registry-pull
    redis = ["Secret", "PersistentVolumeClaim", "Service", "StatefulSet"]
    assert [o["kind"] for o in objects] == ["Namespace", *boundary, *web, *redis, "Ingress"]
    if stage == "production":
        from deployments.runtimes.kubernetes.manifests import build_manifests

        built = build_manifests(spec, spec.service("web"))
        workloads = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
        job = built[-1]["spec"]["template"]["spec"]
        if registry_auth:  # pulling for the built image only; pushing only in the build Job
            assert [w.get("imagePullSecrets") for w in workloads] == [[{"name": "registry-pull"}], None]
            assert [m["mountPath"] for m in job["containers"][0]["volumeMounts"]] == ["/build", "/kaniko/.docker"]
            assert [o["metadata"]["name"] for o in built if o["kind"] == "Secret"] == ["registry-push"]
        assert not any("registry-push" in json.dumps(w) for w in workloads)
        objects += built
    if registry_auth:
        egress = next(o for o in objects if o["metadata"]["name"] == "allow")["spec"]["egress"]
        assert egress[-1] == {"to": [{"ipBlock": {"cidr": "10.96.0.20/32"}}]}
    else:
        from deployments.runtimes.kubernetes.manifests import copy_pod

        objects.append(copy_pod(spec, ["code.web", "data.redis.data"]))  # a clone's copy helper
    for version in [f"1.{minor}.0" for minor in range(30, 38)]:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)  # raises on any unknown or wrong field


@pytest.fixture
def kube(settings, data_dir):
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.client import Kube

    settings.DIPLOI_RUNTIME = "kubernetes"
    settings.DIPLOI_K8S_KUBECONFIG = KUBECONFIG
    get_runtime.cache_clear()
    client = Kube(KUBECONFIG)

    def clean() -> None:  # the tests' namespaces, also those a crashed run left
        names = [ns["metadata"]["name"] for ns in client.list("Namespace", selector="app.kubernetes.io/managed-by=diploi")]
        for name in names:
            client.delete("Namespace", name)
        for name in names:
            client.wait_gone("Namespace", name)

    clean()
    yield client
    clean()
    get_runtime.cache_clear()


def green(runtime, spec) -> bool:
    from deployments.status.tree import derive

    tree = derive(runtime.observe([spec])[spec.id], "running", spec.enabled)
    return tree.colour.value == "green" and tree


@needs_cluster
@pytest.mark.django_db
def test_the_sample_stack_runs_on_kubernetes(cast, kube) -> None:
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import namespace

    d, spec = sample_spec(cast)
    runtime = get_runtime()
    assert runtime.apply(spec) == {"web": "https://dev--shop.localhost"}
    ns = namespace(spec)
    assert kube.get("Namespace", ns)["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "diploi"
    env = kube.get("Secret", "env.web", ns)["data"]
    import base64

    decoded = {k: base64.b64decode(v).decode() for k, v in env.items()}
    assert decoded["GREETING"] == "Hello from Diploi" and decoded["REDIS_URL"].endswith("@redis:6379/0") and decoded["PORT"] == "8000"
    assert {c["metadata"]["name"] for c in kube.list("PersistentVolumeClaim", ns)} == {"code.web", "data.redis.data"}
    assert {s["metadata"]["name"] for s in kube.list("Service", ns)} == {"web", "redis"}
    web = kube.get("StatefulSet", "web", ns)
    assert web["spec"]["template"]["spec"]["initContainers"][0]["name"] == "clone"
    assert kube.get("Ingress", "web", ns)["spec"]["rules"][0]["host"] == "dev--shop.localhost"

    tree = wait_until(lambda: green(runtime, spec), timeout=90, what="pods Running and ready (simulated by KWOK)")
    assert [c.name for c in tree.containers] == ["web", "redis"] and all(s.colour.value == "green" for s in tree.storage)
    assert all("does not serve metrics.k8s.io" in s.message for s in tree.services)
    from deployments.status.monitor import Monitor

    Monitor().tick()  # the page shows what the monitor stored
    page = cast.client(cast.viewer).get("/projects/shop/d/dev/").content.decode()
    assert "redis/data" in page and "bound" in page and "running" in page
    # Describe: the pod, its image, its env's names (never their values) and its events.
    facts = dict(runtime.describe(spec, "redis"))
    assert facts["Pod"].startswith("redis-0 on ") and facts["Image"] == "valkey/valkey:8" and facts["Phase"] == "Running"
    assert "REDIS_PASSWORD" in facts["Environment"] and spec.service("redis").exports["REDIS_PASSWORD"] not in str(facts)
    assert "Scheduled" in facts["Events"]

    # Applying the same spec again changes nothing.
    versions = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in kube.list("StatefulSet", ns) + kube.list("Secret", ns)}
    runtime.apply(spec)
    assert {
        o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in kube.list("StatefulSet", ns) + kube.list("Secret", ns)
    } == versions


@needs_cluster
@pytest.mark.django_db
def test_env_restart_disable_enable_and_destroy(cast, kube) -> None:
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import namespace

    _, spec = sample_spec(cast, slug="env")
    runtime = get_runtime()
    runtime.apply(spec)
    ns = namespace(spec)
    wait_until(lambda: green(runtime, spec), timeout=90, what="the first start")
    before = kube.get("StatefulSet", "web", ns)

    web = spec.service("web")
    changed = replace(spec, services=tuple(replace(s, env={**s.env, "GREETING": "Changed"}) if s is web else s for s in spec.services))
    runtime.apply(changed)
    assert kube.get("Secret", "env.web", ns)["data"]["GREETING"] == "Q2hhbmdlZA=="
    after = kube.get("StatefulSet", "web", ns)
    checksum = "diploi.io/env-checksum"
    assert after["spec"]["template"]["metadata"]["annotations"][checksum] != before["spec"]["template"]["metadata"]["annotations"][checksum]
    assert kube.get("StatefulSet", "redis", ns)["metadata"]["generation"] == 1  # only the affected workload rolls

    runtime.restart(changed, "redis")
    assert "diploi.io/restarted-at" in kube.get("StatefulSet", "redis", ns)["spec"]["template"]["metadata"]["annotations"]

    runtime.set_enabled(changed, False)
    assert [w["spec"]["replicas"] for w in kube.list("StatefulSet", ns)] == [0, 0]
    wait_until(lambda: not kube.list("Pod", ns), timeout=60, what="the pods to go")
    assert len(kube.list("PersistentVolumeClaim", ns)) == 2  # storage kept
    assert derive_colour(runtime, replace(changed, enabled=False)) == "pending"
    runtime.set_enabled(changed, True)
    wait_until(lambda: green(runtime, changed), timeout=90, what="the second start")

    runtime.destroy(changed)
    assert kube.get("Namespace", ns) is None
    runtime.destroy(changed)  # again: nothing left, no error


@needs_cluster
@pytest.mark.django_db
def test_a_service_made_with_a_virtual_ip_becomes_headless_in_place(cast, kube) -> None:
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import manifests, namespace

    _, spec = sample_spec(cast, slug="headless")
    runtime = get_runtime()
    runtime.apply(spec)
    ns = namespace(spec)
    assert {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in kube.list("Service", ns)} == {"web": "None", "redis": "None"}

    # as an earlier Diploi left it: the redis Service with a virtual IP, recorded as applied so
    old = next(o for o in manifests(spec) if o["kind"] == "Service" and o["metadata"]["name"] == "redis")
    old = {**old, "spec": {k: v for k, v in old["spec"].items() if k != "clusterIP"}}
    kube.delete("Service", "redis", ns)
    kube.wait_gone("Service", "redis", ns)
    kube.apply(old)
    assert kube.get("Service", "redis", ns)["spec"]["clusterIP"] != "None"
    recorded = json.loads(kube.get("Namespace", ns)["metadata"]["annotations"]["diploi.io/applied"])
    runtime._stamp(spec, {**recorded, "Service/redis": "earlier"})

    runtime.apply(spec)
    assert kube.get("Service", "redis", ns)["spec"]["clusterIP"] == "None"
    runtime.kube.writes = 0
    runtime.apply(spec)  # and recorded: nothing left to do
    assert runtime.kube.writes == 0


def derive_colour(runtime, spec) -> str:
    from deployments.status.tree import derive

    return derive(runtime.observe([spec])[spec.id], "running", spec.enabled).colour.value


@needs_cluster
@pytest.mark.django_db
def test_observe_without_watches_lists_a_few_namespaces_or_the_whole_cluster(cast, kube) -> None:
    """A worker looking at its one deployment lists that namespace; more than a few are listed across the
    cluster in a fixed number of calls (the monitor, which watches, lists nothing: test_it_kubernetes_watch)."""
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.runtime import FEW

    runtime = get_runtime()
    specs = [sample_spec(cast, slug=f"d{i}")[1] for i in range(FEW + 1)]
    for spec in specs:
        runtime.apply(spec)
    kube = runtime.kube
    kube.calls = 0
    one = runtime.observe(specs[:1])
    assert kube.calls == 5  # its namespace's four lists and its metrics
    kube.calls = 0
    observed = runtime.observe(specs)
    assert kube.calls == 5 and set(observed) == {s.id for s in specs}  # four lists and the metrics API, whatever the number
    assert observed[specs[0].id] == one[specs[0].id]
    assert kube.pod_metrics("app.kubernetes.io/managed-by=diploi") is None  # no metrics server in the test cluster


def test_metrics_quantities_become_percent_of_a_core_and_bytes() -> None:
    from deployments.runtimes.kubernetes.observe import usage_of

    metrics = {"containers": [{"usage": {"cpu": "250000000n", "memory": "2048Ki"}}, {"usage": {"cpu": "500m", "memory": "1Mi"}}]}
    assert usage_of(metrics) == (75.0, 2048 * 1024 + 1024**2)


@needs_cluster
@pytest.mark.django_db
def test_the_api_server_going_away_mid_apply_is_retried_without_duplicates(cast, kube, monkeypatch) -> None:
    import subprocess

    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks
    from deployments.provisioning.spec import current_spec
    from deployments.runtimes import get_runtime
    from deployments.runtimes.base import TransientFailure
    from deployments.runtimes.kubernetes.manifests import namespace
    from tests.conftest import BASE_DIR

    state = os.environ.get("DIPLOI_K8S_STATE", "/tmp/diploi-k8s")
    if os.path.realpath(KUBECONFIG) != os.path.realpath(f"{state}/kubeconfig"):
        pytest.skip("stops and starts the API server of scripts/k8s-testenv, not another cluster's")
    script = str(BASE_DIR / "scripts" / "k8s-testenv")
    d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    runtime = get_runtime()
    real_apply, applied = runtime.kube.apply, []

    def apply_then_lose_the_server(obj: dict, **how) -> dict:
        if len(applied) == 4:  # half-way through the deployment's objects
            subprocess.run([script, "apiserver-stop"], check=True, timeout=60)
        applied.append(obj["kind"])
        return real_apply(obj, **how)

    monkeypatch.setattr(runtime.kube, "apply", apply_then_lose_the_server)
    try:
        with pytest.raises(TransientFailure):  # Celery retries these (called directly, the task raises)
            tasks.provision(d.pk)
    finally:
        subprocess.run([script, "apiserver-start"], check=True, timeout=180)
    d.refresh_from_db()
    assert d.state == State.PROVISIONING  # not failed: waiting for its retry

    tasks.provision(d.pk)  # the retry
    d.refresh_from_db()
    assert d.state == State.RUNNING and d.endpoints == {"web": "https://dev--shop.localhost"}
    ns = namespace(current_spec(d))
    for kind, names in (
        ("Secret", ["env.redis", "env.web"]),
        ("PersistentVolumeClaim", ["code.web", "data.redis.data"]),
        ("Service", ["redis", "web"]),
        ("StatefulSet", ["redis", "web"]),
        ("Ingress", ["web"]),
    ):
        assert sorted(o["metadata"]["name"] for o in kube.list(kind, ns)) == names, kind


@needs_cluster
@pytest.mark.django_db
def test_a_production_deployment_builds_in_jobs_then_runs_its_image(cast, kube, settings) -> None:
    from deployments.actions import do_create_deployment
    from deployments.models import Build
    from deployments.provisioning import tasks
    from deployments.provisioning.spec import current_spec
    from deployments.runtimes.kubernetes.manifests import namespace

    settings.DIPLOI_K8S_REGISTRY = "registry.test:5000/diploi"
    d = do_create_deployment(cast.project, "Prod", "production", "main", actor=cast.developer)
    tasks.provision(d.pk)  # the Job's pod "runs" under KWOK and completes
    d.refresh_from_db()
    build = Build.objects.get(deployment=d)
    assert (build.status, build.progress, d.state) == ("succeeded", 100, State.RUNNING), (build.error, d.state_reason)
    pinned = f"registry.test:5000/diploi/shop/web@{TEST_DIGEST}"
    assert f"web: pushed {pinned}" in build.log and build.images == {"web": pinned}
    ns = namespace(current_spec(d))
    job = kube.get("Job", f"build-{d.commit[:12]}-web", ns)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--destination=registry.test:5000/diploi/shop/web:{d.commit}" in args and any(a.startswith("--context=git://") for a in args)
    assert "--digest-file=/dev/termination-log" in args
    dockerfile = kube.get("ConfigMap", f"build-{d.commit[:12]}-web", ns)["data"]["Dockerfile"]
    assert dockerfile.startswith("FROM ghcr.io/astral-sh/uv:python3.12-bookworm-slim") and "uv sync --frozen" in dockerfile
    web = kube.get("Deployment", "web", ns)
    assert web["spec"]["template"]["spec"]["containers"][0]["image"] == pinned  # the digest, not the tag
    assert kube.get("Service", "web", ns)["spec"]["clusterIP"] != "None"  # a release's pods change behind one address
    assert kube.get("Service", "redis", ns)["spec"]["clusterIP"] == "None"  # a StatefulSet's name resolves to its pod


@needs_cluster
@pytest.mark.django_db
def test_external_builds_run_the_image_ci_reports(
    cast, kube, settings, sample_repo, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    """DIPLOI_K8S_BUILD_MODE=external: no Job; the deployment waits for CI's report, then runs that image."""
    from deployments.actions import do_create_deployment, do_deploy
    from deployments.models import Build
    from deployments.provisioning import tasks
    from deployments.provisioning.spec import current_spec
    from deployments.runtimes.kubernetes.manifests import namespace
    from diploi.celery import app
    from projects.sample import commit_all

    settings.DIPLOI_K8S_BUILD_MODE = "external"
    monkeypatch.setitem(app.conf, "task_always_eager", True)  # the provisioning a report queues runs here, at once
    token = cast.project.rotate_ci_token()
    d = do_create_deployment(cast.project, "Prod", "production", "main", actor=cast.developer)
    tasks.provision(d.pk)
    d.refresh_from_db()
    commit, ns = d.commit or cast.project.stack_commit, namespace(current_spec(d))
    assert d.state == State.BUILDING and d.state_reason == f"waiting for CI to report the images of {commit[:10]}"
    assert kube.get("Namespace", ns) is None and not kube.list("Job", selector=f"diploi.io/deployment-id={d.pk}")  # nothing built here

    def report(**fields):
        body = {"commit": commit, "component": "web", **fields}
        with django_capture_on_commit_callbacks(execute=True):
            return cast.client(cast.outsider).post(
                "/api/ci/builds/", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
            )

    assert report(status="running", url="https://ci.example.com/runs/1").json()["deployments"] == ["prod"]
    build = Build.objects.get(deployment=d)
    assert (build.status, build.external_url, Deployment.objects.get(pk=d.pk).state) == (
        "running",
        "https://ci.example.com/runs/1",
        State.BUILDING,
    )
    image = f"ghcr.io/acme/shop-web:{commit}@{TEST_DIGEST}"
    assert report(status="succeeded", image=image, url="https://ci.example.com/runs/1").status_code == 202
    d.refresh_from_db()
    build.refresh_from_db()
    assert (d.state, d.release_id, build.status, build.progress, build.images) == (
        State.RUNNING,
        build.pk,
        "succeeded",
        100,
        {"web": image},
    )
    assert kube.get("Deployment", "web", ns)["spec"]["template"]["spec"]["containers"][0]["image"] == image
    page = cast.client(cast.viewer).get("/projects/shop/d/prod/").content.decode()
    assert '<a href="https://ci.example.com/runs/1">CI run</a>' in page and f"Built by CI: web <code>{image}</code>" in page

    # A report that came first is taken at once: a second deployment of the same commit needs no wait.
    staging = do_create_deployment(cast.project, "Staging", "staging", "main", actor=cast.developer)
    tasks.provision(staging.pk)
    staging.refresh_from_db()
    assert staging.state == State.RUNNING and staging.release.images == {"web": image}

    # CI fails on the next commit: the deployment keeps running the image it had, and says why.
    (sample_repo / "web" / "app.py").write_text((sample_repo / "web" / "app.py").read_text() + "\n# next\n")
    commit = commit_all(sample_repo, "Next")
    do_deploy(d, actor=cast.developer)
    tasks.provision(d.pk)
    assert Deployment.objects.get(pk=d.pk).state == State.BUILDING
    report(status="failed", message="tests failed", url="https://ci.example.com/runs/2")
    d.refresh_from_db()
    assert d.state == State.RUNNING and d.state_reason.startswith(f"build of {commit[:10]}: CI: web failed: tests failed; still running")
    assert kube.get("Deployment", "web", ns)["spec"]["template"]["spec"]["containers"][0]["image"] == image

    # CI's re-run passes: the deployment picks the new image up by itself.
    assert report(status="succeeded", image=f"ghcr.io/acme/shop-web:{commit}@{TEST_DIGEST}").json()["deployments"] == ["prod"]
    d.refresh_from_db()
    assert (d.state, d.commit, d.release.images) == (State.RUNNING, commit, {"web": f"ghcr.io/acme/shop-web:{commit}@{TEST_DIGEST}"})
    assert (
        kube.get("Deployment", "web", ns)["spec"]["template"]["spec"]["containers"][0]["image"]
        == f"ghcr.io/acme/shop-web:{commit}@{TEST_DIGEST}"
    )


@needs_cluster
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH's ssh is not installed (.ci/run installs openssh-client)")
def test_ssh_sessions_run_in_the_pod_through_the_exec_api(cast, kube, tmp_path) -> None:
    """The SSH gateway on the Kubernetes runtime. On the test control plane KWOK answers the pod
    exec API by running the command on this machine (its ClusterExec, env DIPLOI_TEST_EXEC=kwok);
    on a real cluster it runs in the container, with the deployment's env."""
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import namespace
    from tests.test_it_ssh import GatewayThread, client, new_key, read_until, ssh

    d, spec = sample_spec(cast)
    runtime = get_runtime()
    runtime.apply(spec)
    wait_until(lambda: green(runtime, spec), timeout=90, what="pods Running")
    g = GatewayThread()
    try:
        key = new_key(tmp_path, "dev-key", cast.developer)
        result = ssh(g.port, key, "dev", "echo env=$DIPLOI_TEST_EXEC$GREETING; echo oops >&2; exit 3", quiet=True)
        assert (result.returncode, result.stderr) == (3, "oops\n")
        assert result.stdout in ("env=kwok\n", "env=Hello from Diploi\n")
        simulated = result.stdout == "env=kwok\n"

        async def size_becomes(process, size: str) -> None:
            """Sizes reach the terminal on their own stream (kubelet and KWOK alike): ask until it shows."""
            for attempt in range(50):
                process.stdin.write(f"echo size{attempt}=$(stty size).\n")
                seen = ""
                while not (m := re.search(rf"size{attempt}=(\d+ \d+)\.", seen)):
                    seen += await read_until(process, "\n")
                if m[1] == size:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"the terminal's size stayed {m[1]}, not {size}")

        async def sessions() -> dict:
            found = {}
            async with client(g.port, key) as conn:
                found["stdin"] = (await conn.run("head -n 1; echo after", input="a line\nnot this\n")).stdout
                process = await conn.create_process(term_type="xterm", term_size=(100, 30), encoding="utf-8")
                await size_becomes(process, "30 100")
                process.change_terminal_size(120, 40)
                await size_becomes(process, "40 120")
                process.stdin.write("exit 4\n")  # alone: KWOK drops what a command prints as the shell exits
                await process.wait_closed()
                found["terminal"] = process.exit_status
            async with client(g.port, key) as conn:  # SFTP: the service's own sftp-server, as a session's command
                try:
                    async with conn.start_sftp_client() as sftp:
                        async with sftp.open("diploi-sftp-test.txt", "w") as f:
                            await f.write("put over sftp\n")
                        async with sftp.open("diploi-sftp-test.txt") as f:
                            found["sftp"] = await f.read()
                        found["listed"] = "diploi-sftp-test.txt" in await sftp.listdir(".")
                except (asyncssh.Error, OSError) as e:  # a real cluster's python image ships no sftp-server
                    found["sftp"] = f"refused: {e}"
            async with client(g.port, key) as conn:  # a client that goes away in the middle of a command
                await conn.create_process("sleep 301 & sleep 302")
                if simulated:
                    await asyncio.to_thread(
                        wait_until, lambda: running("sleep 301") and running("sleep 302"), what="the session's commands"
                    )
                conn.abort()
            return found

        found = asyncio.run(asyncio.wait_for(sessions(), 90))
        sftp = found.pop("sftp")
        if simulated:  # KWOK ran this machine's sftp-server in its exec folder
            exec_dir = os.path.join(os.path.dirname(KUBECONFIG), "exec")
            assert sftp == "put over sftp\n" and found.pop("listed") is True
            with open(os.path.join(exec_dir, "diploi-sftp-test.txt")) as f:
                assert f.read() == "put over sftp\n"
            os.remove(os.path.join(exec_dir, "diploi-sftp-test.txt"))
        else:
            assert sftp.startswith("refused"), sftp
        assert found == {"stdin": "a line\nafter\n", "terminal": 4}
        if simulated:  # what the session started ends with it
            wait_until(lambda: not running("sleep 301") and not running("sleep 302"), what="the session's processes to end")
        recorded = list(SSHSession.objects.filter(deployment=d).order_by("started").values_list("kind", "exit_status"))
        assert recorded[:3] == [("exec", 3), ("exec", 0), ("shell", 4)] and [r[0] for r in recorded[3:]] == ["sftp", "exec"]
        wait_until(lambda: SSHSession.objects.filter(deployment=d, ended__isnull=True).count() == 0, what="the last session to end")

        runtime.set_enabled(spec, False)  # no pod to run in: said plainly
        wait_until(lambda: not kube.list("Pod", namespace(spec)), timeout=60, what="the pods to go")
        refused = ssh(g.port, key, "dev", "true")
        assert refused.returncode == 1 and "web has no running pod" in refused.stderr
    finally:
        g.stop()


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def test_exit_status_from_the_exec_streams_final_status() -> None:
    from deployments.runtimes.kubernetes.client import exit_status

    kubelet = {
        "status": "Failure",
        "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: error executing command [sh -c exit 7], exit code 7",
        "details": {"causes": [{"reason": "ExitCode", "message": "7"}]},
    }
    kwok = {"status": "Failure", "reason": "InternalError", "message": "error executing command in container: cmd wait: sh: exit status 5"}
    assert exit_status({"status": "Success"}) == 0 and exit_status(kubelet) == 7 and exit_status(kwok) == 5
    assert exit_status(None) == 255 and exit_status({"status": "Failure", "message": "container not found"}) == 255


@needs_cluster
@pytest.mark.django_db(transaction=True)
def test_port_forwards_go_through_the_pod_port_forward_api(cast, kube, tmp_path) -> None:
    """`ssh -L` on Kubernetes. On the test control plane KWOK ends every pod port-forward at the
    port in $DIPLOI_K8S_STATE/forward-port, where this test serves a page; on a real cluster the
    sample's web answers."""
    import http.server
    import threading

    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import namespace
    from tests.conftest import http_get
    from tests.test_it_ssh import GatewayThread, answer_then_end, client, forward_answers, new_key

    d, spec = sample_spec(cast)
    runtime = get_runtime()
    runtime.apply(spec)
    wait_until(lambda: green(runtime, spec), timeout=90, what="pods Running")
    shell = runtime.open_shell(spec, "web", "echo $DIPLOI_TEST_EXEC", False)
    simulated = shell.read() == b"kwok\n"
    shell.close()

    # A stream ended from another thread (the gateway's, when a client goes away) keeps its socket
    # until its reader is done: a descriptor number freed under a reader or writer gets reused by the
    # next file opened, and TLS then writes into that file (it once was the SQLite database).
    for _ in range(5):
        shell = runtime.open_shell(spec, "web", "sleep 30", False)
        stream = shell.stream
        raw = stream.raw
        stream.kill()
        while not stream.ended:
            closed = raw.fileno() == -1
            assert not closed or stream.ended, "the socket was closed under its reader"
        stream.reader.join(5)
        assert stream.read() == b"" and raw.fileno() == -1, "the reader closes the socket once it is done"
        shell.kill()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            body = f"Visits: through the pod port-forward API to {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = None
    if simulated:
        port = int(open(os.path.join(os.path.dirname(KUBECONFIG), "forward-port")).read())
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    g = GatewayThread()
    try:
        key = new_key(tmp_path, "dev-key", cast.developer)

        async def session(forward_to: tuple[str, int]) -> tuple[str, list[str]]:
            async with client(g.port, key) as conn:
                listener = await conn.forward_local_port("127.0.0.1", 0, *forward_to)
                page = await asyncio.to_thread(http_get, f"http://127.0.0.1:{listener.get_port()}/hello")
                listener.close()
                answers = await forward_answers(conn, [("localhost", 22), ("example.com", 80), ("redis", 6379)])
                await answer_then_end(conn, *forward_to, b"GET / HTTP/1.0\r\n\r\n", b"to /" if simulated else b"</span></p>")
                return page, answers

        page, answers = asyncio.run(asyncio.wait_for(session(("localhost", 8000)), 60))
        assert "Visits:" in page and (not simulated or page.endswith("to /hello"))
        assert answers == [
            "localhost:22 is not a port of this deployment",
            "example.com:80 is not a port of this deployment",
            "redis:6379 open",
        ]
        forwards = list(SSHSession.objects.filter(deployment=d, kind="forward").values_list("command", flat=True))
        assert sorted(forwards) == ["localhost:8000", "localhost:8000", "redis:6379"]  # refusals are not sessions

        runtime.set_enabled(spec, False)
        wait_until(lambda: not kube.list("Pod", namespace(spec)), timeout=60, what="the pods to go")

        async def refused() -> str:
            async with client(g.port, key) as conn:
                try:
                    await conn.open_connection("localhost", 8000)
                except asyncssh.ChannelOpenError as e:
                    return e.reason
                return "open"

        assert asyncio.run(asyncio.wait_for(refused(), 60)) == "localhost:8000: web has no running pod"
    finally:
        g.stop()
        if server is not None:
            server.shutdown()


@needs_cluster
@pytest.mark.django_db
def test_the_charts_service_account_may_do_all_the_runtime_does(cast, kube, tmp_path) -> None:
    """The Helm chart's ClusterRole, bound to its service account, with a token of that account:
    apply, observe (metrics included), build Jobs, exec and destroy are all allowed."""
    import yaml

    from deployments.runtimes.kubernetes.client import Kube
    from deployments.runtimes.kubernetes.manifests import namespace
    from deployments.runtimes.kubernetes.runtime import KubernetesRuntime
    from tests.test_it_helm import REQUIRED, render

    system = "diploi-rbac-test"
    docs = [
        d
        for d in yaml.safe_load_all(render(*REQUIRED).stdout)
        if d and d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    kube.wait_gone("Namespace", system)  # an earlier run's may still be terminating
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system}})
    try:
        for d in docs:
            d["metadata"]["name"] = "rbac-test"
            if d["kind"] == "ServiceAccount":
                d["metadata"]["namespace"] = system
            if d["kind"] == "ClusterRoleBinding":
                d["roleRef"]["name"], d["subjects"][0]["name"], d["subjects"][0]["namespace"] = "rbac-test", "rbac-test", system
            kube.apply(d)
        token = kube.request(
            "POST",
            f"/api/v1/namespaces/{system}/serviceaccounts/rbac-test/token",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
        )
        admin = yaml.safe_load(open(KUBECONFIG))
        config = {**admin, "users": [{"name": "admin", "user": {"token": token["status"]["token"]}}]}
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        runtime = KubernetesRuntime(Kube(str(tmp_path / "kubeconfig")))

        with pytest.raises(Exception, match="403"):  # it is not the admin: what the role lacks is refused
            runtime.kube.list("Node")
        _, dev = sample_spec(cast)
        runtime.apply(dev)
        wait_until(lambda: green(runtime, dev), timeout=90, what="pods Running")
        shell = runtime.open_shell(dev, "web", "echo through-exec", False)
        assert shell.read() == b"through-exec\n" and shell.close() == 0
        runtime.open_forward(dev, "web", "localhost", 8000).close()  # the port-forward API let it in
        review = {"resourceAttributes": {"namespace": namespace(dev), "verb": "get", "resource": "services", "subresource": "proxy"}}
        answer = runtime.kube.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body={"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": review},
        )
        assert answer["status"]["allowed"] is True  # status items, through the service proxy
        _, prod = sample_spec(cast, "production", "prod")
        assert runtime.build(prod, lambda *args: None) == {
            "web": f"registry.localhost:5000/shop/web@{TEST_DIGEST}"
        }  # a ConfigMap and a Job
        runtime.destroy(dev)
        runtime.destroy(prod)
    finally:
        kube.delete("Namespace", system)
        for d in docs:
            if d["kind"] != "ServiceAccount":
                kube.delete(d["kind"], d["metadata"]["name"])


@needs_cluster
@pytest.mark.django_db
def test_a_clone_starts_from_a_copy_of_the_sources_storage(cast, kube) -> None:
    """Clone with storage: tar streamed from the source's containers into the clone's claims through
    two exec streams. Under KWOK the commands run on this machine, below DIPLOI_TEST_ROOT."""
    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks
    from deployments.provisioning.spec import current_spec
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import COPY_POD, namespace

    source, spec = sample_spec(cast)
    runtime = get_runtime()
    runtime.apply(spec)
    wait_until(lambda: green(runtime, spec), timeout=90, what="the source running")

    def run(service: str, command: str, target=spec) -> str:
        shell = runtime.open_shell(target, service, command, False)
        output = b"".join(iter(shell.read, b"")).decode()
        assert shell.close() == 0, output
        return output

    simulated = run("redis", "echo $DIPLOI_TEST_EXEC") == "kwok\n"
    run("redis", 'root="${DIPLOI_TEST_ROOT:-}"; mkdir -p "$root/data" "$root/code/web" && echo saved-key > "$root/data/dump.txt"')
    run("web", 'echo "print(1)" > "${DIPLOI_TEST_ROOT:-}/code/web/edited.py"')
    copies = os.path.join(os.path.dirname(KUBECONFIG), "exec", "root", "copy")
    if simulated:  # what the kubelet would mount in the helper pod: folders below the test root here
        for claim in ("data.redis.data", "code.web"):
            shutil.rmtree(os.path.join(copies, claim), ignore_errors=True)
            os.makedirs(os.path.join(copies, claim))

    clone = do_create_deployment(cast.project, "Copy", "development", "main", actor=cast.developer, clone_of=source, copy_storage=True)
    tasks.provision(clone.pk)
    clone.refresh_from_db()
    assert clone.state == State.RUNNING and not clone.copy_storage_pending, clone.state_reason
    target = current_spec(clone)
    assert kube.get("Pod", COPY_POD, namespace(target)) is None  # the helper is gone; the claims are the workloads'
    if simulated:
        assert open(os.path.join(copies, "data.redis.data", "dump.txt")).read() == "saved-key\n"
        assert open(os.path.join(copies, "code.web", "web", "edited.py")).read() == "print(1)\n"
    else:
        wait_until(lambda: green(runtime, target), timeout=180, what="the clone running")
        assert run("redis", "cat /data/dump.txt", target) == "saved-key\n"
        assert run("web", "cat /code/web/edited.py", target) == "print(1)\n"
    assert run("redis", 'cat "${DIPLOI_TEST_ROOT:-}/data/dump.txt"') == "saved-key\n"  # the source keeps its data

    # A source that is not running cannot be copied: the clone says so and nothing is half-made.
    runtime.set_enabled(spec, False)
    wait_until(lambda: not kube.list("Pod", namespace(spec)), timeout=60, what="the source's pods to go")
    second = do_create_deployment(cast.project, "Copy 2", "development", "main", actor=cast.developer, clone_of=source, copy_storage=True)
    tasks.provision(second.pk)
    second.refresh_from_db()
    assert second.state == State.FAILED and second.copy_storage_pending
    assert "of the source is not running; start it to copy its storage" in second.state_reason
    assert kube.get("Pod", COPY_POD, namespace(current_spec(second))) is None


# --- many teams on one cluster ------------------------------------------------------------------


def other_project(cast, name: str, slug: str):
    from projects.models import Project
    from projects.stack import refresh_stack

    project = Project.objects.create(name=name, slug=slug, repository=cast.project.repository, default_branch="main")
    refresh_stack(project)
    return project


def spec_of(project, slug: str):
    from deployments.provisioning.spec import current_spec

    d = Deployment.objects.create(
        project=project, name=slug, slug=slug, stage="development", branch="main", state=State.RUNNING, commit=project.stack_commit
    )
    return current_spec(d)


@needs_cluster
@pytest.mark.django_db
def test_names_that_used_to_collide_belong_to_one_deployment_each(cast, kube) -> None:
    """`shop-prod` + `web` and `shop` + `prod-web` once shared a namespace; the ids keep them apart."""
    from deployments.runtimes import get_runtime
    from deployments.runtimes.base import RuntimeFailure
    from deployments.runtimes.hostnames import deployment_host
    from deployments.runtimes.kubernetes.manifests import DEPLOYMENT_ID, namespace

    runtime = get_runtime()
    first, second = spec_of(other_project(cast, "Shop prod", "shop-prod"), "web"), spec_of(cast.project, "prod-web")
    assert namespace(first) != namespace(second)
    assert deployment_host(first.slug, first.project_slug) != deployment_host(second.slug, second.project_slug)
    for spec in (first, second):
        runtime.apply(spec)
    claims = {c["metadata"]["uid"] for c in kube.list("PersistentVolumeClaim", namespace(second))}
    runtime.destroy(first)
    assert kube.get("Namespace", namespace(first)) is None
    assert {c["metadata"]["uid"] for c in kube.list("PersistentVolumeClaim", namespace(second))} == claims
    assert kube.get("StatefulSet", "web", namespace(second)) is not None

    # A namespace with this deployment's name that another deployment (or anyone) labelled is not
    # touched: neither applied into nor deleted.
    third = spec_of(cast.project, "third")
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace(third), "labels": {DEPLOYMENT_ID: "999999"}}})
    with pytest.raises(RuntimeFailure, match=f"the namespace {namespace(third)} exists and is not this deployment's"):
        runtime.apply(third)
    assert kube.list("StatefulSet", namespace(third)) == []
    runtime.destroy(third)
    assert kube.get("Namespace", namespace(third)) is not None
    kube.delete("Namespace", namespace(third))


@needs_cluster
@pytest.mark.django_db
def test_every_namespace_is_fenced_and_no_pod_runs_as_root_or_holds_a_token(cast, kube, settings) -> None:
    """What the API server accepted: the policies, quota and limits, and pods (made by the controllers
    from the workloads, admitted under the quota) with the security context."""
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import namespace

    runtime = get_runtime()
    _, spec = sample_spec(cast)
    runtime.apply(spec)
    _, prod = sample_spec(cast, "production", slug="prod")
    assert set(runtime.build(prod, lambda *args: None)) == {"web"}  # a build Job's pod too
    for s in (spec, prod):
        ns = namespace(s)
        policies = {p["metadata"]["name"]: p["spec"] for p in kube.list("NetworkPolicy", ns)}
        assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        assert kube.get("LimitRange", "limits", ns)["spec"]["limits"][0]["max"] == {"cpu": "500m", "memory": "512Mi"}
        if s is spec:
            egress = policies["allow"]["egress"]
            world = next(r["to"][0]["ipBlock"] for r in egress if r.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0")
            assert {"10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8"} <= set(world["except"])
            ingress_from = [r for r in policies["allow"]["ingress"] if "ports" in r]
            assert ingress_from[0]["ports"] == [{"protocol": "TCP", "port": 8000}]
            assert kube.get("ResourceQuota", "quota", ns)["spec"]["hard"]["pods"] == "5"

    def pods() -> list[dict]:
        found = [p for s in (spec, prod) for p in kube.list("Pod", namespace(s))]
        return found if len(found) >= 3 else []

    for pod in wait_until(pods, timeout=90, what="the pods of both namespaces"):
        name, podspec = pod["metadata"]["name"], pod["spec"]
        assert podspec["automountServiceAccountToken"] is False, name
        assert not any(v["name"].startswith("kube-api-access") for v in podspec.get("volumes", [])), name
        assert podspec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        builder = pod["metadata"]["labels"].get("job-name") is not None
        assert podspec["securityContext"].get("runAsNonRoot") is (None if builder else True), name
        for c in podspec["containers"] + podspec.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert c["resources"]["limits"], (name, c["name"])  # the limit range filled in what was not set


def test_a_hostile_branch_name_or_repository_path_runs_nothing(cast, data_dir, tmp_path) -> None:
    """The clone init container's exact command, run here with the real sh and git."""
    from deployments.runtimes.kubernetes.manifests import clone_command
    from projects.git import run_git
    from projects.sample import commit_all

    branch = "a;touch${IFS}" + str(tmp_path / "pwned")
    repo = tmp_path / 'it\'s "a" repo $(touch pwned-too)'
    repo.mkdir()
    (repo / "README").write_text("hello\n")
    run_git("init", "--quiet", "--initial-branch", branch, cwd=repo)
    commit_all(repo, "first")
    _, spec = sample_spec(cast)
    spec = replace(spec, branch=branch, repository=str(repo))
    command = clone_command(spec, str(tmp_path / "code"))
    assert branch not in command[2] and str(repo) not in command[2]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "code" / "README").read_text() == "hello\n"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned-too").exists()


def test_a_hostile_storage_path_runs_nothing(tmp_path) -> None:
    """A clone's copy commands, run here with the real sh and tar, on a path with spaces, quotes and $()."""
    from deployments.runtimes.kubernetes.manifests import copy_command

    source = tmp_path / 'it\'s "data" $(touch pwned) `touch pwned-too`'
    source.mkdir()
    (source / "dump.txt").write_text("saved\n")
    target = tmp_path / "target; touch pwned-three"
    target.mkdir()
    env = {"PATH": os.environ["PATH"]}
    archive = subprocess.run(copy_command("read", str(source)), capture_output=True, cwd=tmp_path, env=env, check=True).stdout
    subprocess.run(copy_command("write", str(target)), input=archive, capture_output=True, cwd=tmp_path, env=env, check=True)
    assert (target / "dump.txt").read_text() == "saved\n"
    assert not [p for p in tmp_path.rglob("pwned*")] and {source.name, target.name} <= {p.name for p in tmp_path.iterdir()}


@needs_cluster
@pytest.mark.django_db
def test_only_domains_dns_shows_are_theirs_reach_the_ingress(cast, kube, dns_server) -> None:
    from deployments.actions import do_add_domain, do_verify_domain
    from deployments.domains import challenge_value
    from deployments.provisioning import tasks
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import namespace

    d, spec = sample_spec(cast)
    get_runtime().apply(spec)
    domain = do_add_domain(d, "shop.example.com", actor=cast.developer)
    tasks.route(d.pk)

    def hosts() -> tuple[list[str], list[str]]:
        ingress = kube.get("Ingress", "web", namespace(spec))["spec"]
        return [r["host"] for r in ingress["rules"]], ingress["tls"][0]["hosts"]

    own = ["dev--shop.localhost", "web--dev--shop.localhost"]  # the deployment's, and its component's
    assert hosts() == (own, own)  # added, not verified: not routed
    dns_server[("shop.example.com", "A")] = ["192.0.2.1"]  # pointing at the cluster proves nothing
    assert not do_verify_domain(domain, actor=cast.developer).verified
    dns_server[("_diploi-challenge.shop.example.com", "TXT")] = [f'"{challenge_value(d)}"']
    assert do_verify_domain(domain, actor=cast.developer).verified
    tasks.route(d.pk)  # what the verification queued
    assert hosts() == ([*own, "shop.example.com"], [*own, "shop.example.com"])

    # A host another Ingress of the cluster serves (anyone's) is refused, and the deployment says so.
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "someone-else"}})
    rule = {
        "host": "taken.example.com",
        "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "x", "port": {"number": 80}}}}]},
    }
    kube.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "theirs", "namespace": "someone-else"},
            "spec": {"rules": [rule]},
        }
    )
    try:
        taken = do_add_domain(d, "taken.example.com", actor=cast.developer)
        dns_server[("taken.example.com", "CNAME")] = ["dev--shop.localhost."]
        assert do_verify_domain(taken, actor=cast.developer).verified
        tasks.route(d.pk)
        d.refresh_from_db()
        assert d.state == State.RUNNING and "taken.example.com is already served by another Ingress in the cluster" in d.state_reason
        assert "taken.example.com" not in hosts()[0]  # nothing was changed
    finally:
        kube.delete("Namespace", "someone-else")


# --- a package's own chart (.diploi/helm/), written as Diploi's are ------------------------------

CHARTED = """
diploiVersion: v1.0
type: component
name: Charted
hosts:
  - {name: App, identifier: app, port: 8000, urlFormat: '[label].[default-domain]'}
images:
  - {identifier: app, prebuildImage: 'ghcr.io/example/charted:[tag]'}
parameterGroups:
  - name: App
    identifier: app
    parameters:
      - {name: Greeting, identifier: GREETING, defaultValue: hello, type: string}
  - name: Cache
    identifier: cache
    toggleable: true
    defaultValue: true
    parameters:
      - {name: Size, identifier: CACHE_SIZE, defaultValue: 64, type: integer}
  - name: Mail
    identifier: mail
    toggleable: true
    parameters:
      - {name: Sender, identifier: MAIL_FROM, defaultValue: app@example.com, type: string}
storage:
  - {identifier: data, sizeMiB: 1024}
"""

CHART_APP = """
apiVersion: apps/v1
{{- if eq .Values.stage "development" }}
kind: StatefulSet
{{- else }}
kind: Deployment
{{- end }}
metadata:
  name: app
  labels:
    app: app
spec:
  selector:
    matchLabels:
      app: app
  {{- if eq .Values.stage "development" }}
  serviceName: app
  {{- end }}
  replicas: {{ ternary 1 0 .Values.enabled }}
  template:
    metadata:
      labels:
        app: app
    spec:
      imagePullSecrets:
        - name: diploi-pull-secret
      containers:
        - name: app
          image: {{ .Values.images.app }}
          {{- if and (eq .Values.stage "development") .Values.containerCommands.developmentStart }}
          command: ["/bin/sh", "-c", {{ .Values.containerCommands.developmentStart | quote }}]
          {{- end }}
          ports:
            - containerPort: 8000
          env:
            - name: CACHE_ON
              value: {{ .Values.parameterGroupsEnabled.cache | quote }}
            - name: MAIL_ON
              value: {{ .Values.parameterGroupsEnabled.mail | quote }}
            {{- range .Values.env }}
            - name: {{ .identifier }}
              value: {{ .value | quote }}
            {{- end }}
            - name: APP_PUBLIC_URL
              value: {{ .Values.hosts.app }}
          workingDir: /app{{ .Values.folder }}
          volumeMounts:
            {{- if hasKey .Values.storage "data" }}
            - name: data
              mountPath: /data
            {{- end }}
            {{- if hasKey .Values.storage "code" }}
            - name: app-mount
              mountPath: /app
            {{- end }}
      {{- if eq .Values.stage "development" }}
      securityContext:
        runAsUser: 1000
        runAsGroup: 1000
      {{- end }}
      volumes:
        {{- if hasKey .Values.storage "data" }}
        - name: data
          hostPath:
            path: {{ .Values.storage.data.hostPath }}
        {{- end }}
        {{- if hasKey .Values.storage "code" }}
        - name: app-mount
          hostPath:
            path: {{ .Values.storage.code.hostPath }}
        {{- end }}
"""

CHART_SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  type: NodePort
  ports:
    - port: 8000
      targetPort: 8000
      nodePort: 30080
  selector:
    app: app
"""

CHART_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ingress
  annotations:
    kubernetes.io/ingress.class: traefik
spec:
  tls:
    - hosts:
        - {{ .Values.hosts.app }}
      secretName: tls-secret
  rules:
    - host: {{ .Values.hosts.app }}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: app
                port:
                  number: 8000
"""

CLUSTER_ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: log-reader
rules:
  - apiGroups: [""]
    resources: [pods/log]
    verbs: [get]
"""

ELSEWHERE = CHART_SERVICE.replace("  name: app\n", "  name: app\n  namespace: kube-system\n")
OUTSIDE = CHART_SERVICE.replace("  type: NodePort\n", "  externalIPs: [203.0.113.7]\n")  # (CVE-2020-8554)


def charted_spec(cast, git_daemon, tmp_path, settings, extra: dict[str, str] | None = None):
    """A project whose one component is a package by URL with a chart, and its development spec."""
    from projects.stack import refresh_stack
    from tests.conftest import publish
    from tests.test_it_helm import HELM
    from tests.test_it_packages import project_with

    if HELM is None:
        pytest.skip("no helm binary: scripts/k8s-testenv build makes one")
    settings.DIPLOI_HELM = HELM
    base, server = git_daemon
    files = {"diploi.yaml": CHARTED, ".diploi/helm/app.yaml": CHART_APP, ".diploi/helm/service.yaml": CHART_SERVICE}
    publish(base, "charted", {**files, ".diploi/helm/ingress.yaml": CHART_INGRESS, **(extra or {})})
    start = "{developmentStart: 'python -m http.server 8000'}"
    entry = f"{{name: App, identifier: site, package: '{server}/charted.git#main', containerCommands: {start}}}"
    stack = f"diploiVersion: v1.0\ncomponents:\n  - {entry}\n"
    project = project_with(tmp_path, stack, cast.owner)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors
    cast.project = project
    return sample_spec(cast)


@needs_cluster
def test_a_package_chart_is_rendered_with_diploi_values_wrapped_and_applied(
    cast, kube, git_daemon, tmp_path, settings, local_repositories
) -> None:
    import kubernetes_validate

    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.manifests import manifests, namespace

    _, spec = charted_spec(cast, git_daemon, tmp_path, settings)
    for obj in manifests(spec):
        kubernetes_validate.validate(obj, "1.36.0", strict=True)
    get_runtime().apply(spec)
    ns = namespace(spec)
    app = kube.get("StatefulSet", "app", ns)  # the chart's own kind and name, for the development stage
    assert app["metadata"]["labels"]["diploi.io/component"] == "site" and app["spec"]["replicas"] == 1
    pod = app["spec"]["template"]["spec"]
    assert app["spec"]["template"]["metadata"]["labels"]["diploi.io/deployment-id"] == str(spec.id)
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == "ghcr.io/example/charted:main" and env["GREETING"] == "hello"
    # the project's containerCommands and the package's toggleable groups (at their defaults)
    assert container["command"] == ["/bin/sh", "-c", "python -m http.server 8000"]
    assert (env["CACHE_ON"], env["MAIL_ON"]) == ("true", "false")
    assert env["APP_PUBLIC_URL"] == "dev--echo.localhost" and env["DIPLOI_STAGE"] == "development"
    assert pod["volumes"] == [  # its hostPaths, now its claims
        {"name": "data", "persistentVolumeClaim": {"claimName": "data.site.data"}},
        {"name": "app-mount", "persistentVolumeClaim": {"claimName": "code.site"}},  # the development code, at /app
    ]
    clone = pod["initContainers"][0]  # the branch cloned onto it first, as the pod's user, the claim the pod's group's
    assert clone["name"] == "clone" and clone["volumeMounts"] == [{"name": "app-mount", "mountPath": "/app"}]
    assert clone["command"][-1] == "/app" and pod["securityContext"]["fsGroup"] == 1000
    assert kube.get("PersistentVolumeClaim", "code.site", ns) is not None
    assert kube.get("PersistentVolumeClaim", "data.site.data", ns)["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"} and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False and pod.get("imagePullSecrets", []) == []
    ingress = kube.get("Ingress", "ingress", ns)
    assert ingress["spec"]["ingressClassName"] == settings.DIPLOI_K8S_INGRESS_CLASS
    assert "kubernetes.io/ingress.class" not in ingress["metadata"].get("annotations", {})
    assert ingress["spec"]["tls"] == [{"hosts": ["dev--echo.localhost"], "secretName": "ingress-tls"}]
    assert {s["metadata"]["name"] for s in kube.list("Service", ns)} == {"app"}  # the chart's, not one of ours besides
    service = kube.get("Service", "app", ns)  # asked for as NodePort, as Diploi's add-ons do: inside the cluster only
    assert service["spec"]["type"] == "ClusterIP" and "nodePort" not in service["spec"]["ports"][0]
    assert kube.get("Ingress", "web", ns) is None  # the chart routes its component itself


@needs_cluster
@pytest.mark.parametrize(
    "extra, refused",
    [
        ({".diploi/helm/role.yaml": CLUSTER_ROLE}, "its chart's ClusterRole “log-reader” is refused"),
        ({".diploi/helm/service.yaml": ELSEWHERE}, "it names the namespace kube-system, not the deployment's"),
        ({".diploi/helm/service.yaml": OUTSIDE}, "may not name an address outside the cluster"),
        ({".diploi/helm/app.yaml": CHART_APP.replace("    spec:\n", "    spec:\n      hostNetwork: true\n", 1)}, "pods set hostNetwork"),
    ],
)
def test_a_chart_that_reaches_beyond_its_namespace_is_refused_and_nothing_applied(
    cast, kube, git_daemon, tmp_path, settings, local_repositories, extra, refused
) -> None:
    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes.charts import ChartRefused
    from deployments.runtimes.kubernetes.manifests import namespace

    _, spec = charted_spec(cast, git_daemon, tmp_path, settings, extra)
    with pytest.raises(ChartRefused) as e:
        get_runtime().apply(spec)
    assert refused in str(e.value)
    assert kube.get("Namespace", namespace(spec)) is None


@needs_cluster
def test_a_chart_object_the_cluster_would_not_accept_stops_the_apply_before_any_of_it(
    cast, kube, git_daemon, tmp_path, settings, local_repositories
) -> None:
    """An object with a field this cluster does not know (a typo in a chart) is refused by the API
    server's dry run, named, and none of the deployment's objects beyond its namespace's fence is applied."""
    from deployments.runtimes import get_runtime
    from deployments.runtimes.base import RuntimeFailure
    from deployments.runtimes.kubernetes.manifests import namespace

    typo = {".diploi/helm/app.yaml": CHART_APP.replace("  replicas:", "  replicaz: 1\n  replicas:", 1)}
    _, spec = charted_spec(cast, git_daemon, tmp_path, settings, typo)
    with pytest.raises(RuntimeFailure) as e:
        get_runtime().apply(spec)
    assert "the StatefulSet “app” is not valid for this cluster" in str(e.value) and "replicaz" in str(e.value), str(e.value)
    ns = namespace(spec)
    assert kube.get("Service", "app", ns) is None and kube.get("StatefulSet", "app", ns) is None


@needs_cluster
@pytest.mark.django_db
def test_a_dockerfile_component_is_built_in_the_cluster_from_its_own_dockerfile(cast, kube, settings, git_daemon) -> None:
    """A package's local.container on Kubernetes: production builds the folder's Dockerfile, development
    its Dockerfile.dev (once per commit) and runs it on the code at /app; neither runs as root."""
    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks
    from deployments.provisioning.spec import current_spec
    from deployments.runtimes import get_runtime
    from deployments.runtimes.base import BuildFailed
    from deployments.runtimes.kubernetes.manifests import namespace
    from tests.test_it_starters import import_starter

    settings.DIPLOI_K8S_REGISTRY = "registry.test:5000/diploi"
    base, server = git_daemon
    project = import_starter(base, server, "dockerfile-postgres", cast.owner)
    commit = project.stack_commit
    image = f"registry.test:5000/diploi/dockerfile-postgres/web@{TEST_DIGEST}"

    def provisioned(stage: str) -> tuple[Deployment, str, dict]:
        d = do_create_deployment(project, stage.title(), stage, "main", actor=cast.owner)
        tasks.provision(d.pk)
        d.refresh_from_db()
        assert d.state == State.RUNNING, d.state_reason
        ns = namespace(current_spec(d))
        job = kube.get("Job", f"build-{commit[:12]}-web", ns)
        return d, ns, job["spec"]["template"]["spec"]["containers"][0]

    prod, ns, builder = provisioned("production")
    assert builder["args"][1:] == [
        "--context-sub-path=web",
        "--dockerfile=Dockerfile",
        f"--destination=registry.test:5000/diploi/dockerfile-postgres/web:{commit}",
        "--digest-file=/dev/termination-log",
    ]
    assert kube.get("ConfigMap", f"build-{commit[:12]}-web", ns) is None  # nothing generated: the project's own Dockerfile
    web = kube.get("Deployment", "web", ns)["spec"]["template"]["spec"]
    assert web["containers"][0]["image"] == image and "command" not in web["containers"][0]  # the image's own command
    assert [p["containerPort"] for p in web["containers"][0]["ports"]] == [8080]
    assert web["securityContext"]["runAsNonRoot"] is True and web["securityContext"]["runAsUser"] != 0

    dev, ns, builder = provisioned("development")
    assert builder["args"][1:3] == ["--context-sub-path=web", "--dockerfile=Dockerfile.dev"]
    assert builder["args"][3] == f"--destination=registry.test:5000/diploi/dockerfile-postgres/web:dev-{commit}"
    web = kube.get("StatefulSet", "web", ns)["spec"]["template"]["spec"]
    assert web["containers"][0]["image"] == image and web["containers"][0]["workingDir"] == "/app/web"
    assert {"name": "code", "mountPath": "/app"} in web["containers"][0]["volumeMounts"]
    assert web["initContainers"][0]["command"][-1] == "/app"  # the branch cloned where the image expects its code
    # The image is built once per commit: the namespace records it, a later apply builds nothing.
    kube.delete("Job", f"build-{commit[:12]}-web", ns)
    wait_until(lambda: kube.get("Job", f"build-{commit[:12]}-web", ns) is None, timeout=30)
    get_runtime().apply(current_spec(dev))
    assert kube.get("Job", f"build-{commit[:12]}-web", ns) is None
    assert kube.get("StatefulSet", "web", ns)["spec"]["template"]["spec"]["containers"][0]["image"] == image

    # A Dockerfile the commit does not have fails the build with its name, before any Job.
    spec = current_spec(prod)
    other = ("Containerfile", "Containerfile")
    missing = replace(spec, services=tuple(replace(s, container=other) if s.container else s for s in spec.services))
    with pytest.raises(BuildFailed, match=r"web: web/Containerfile is missing"):
        get_runtime().build(missing, lambda *args: None)


@needs_cluster
@pytest.mark.django_db
def test_a_components_status_items_are_read_through_the_api_servers_proxy(cast, kube, monkeypatch) -> None:
    """`local.status` on Kubernetes: the monitor reads the document through the API server's service
    proxy (the simulated pod's address is given to this machine, and a server of the test's answers
    there); a component that stops answering is one yellow item saying so."""
    import http.server
    import threading

    from deployments.runtimes import get_runtime
    from deployments.runtimes.kubernetes import runtime as kubernetes_runtime
    from deployments.runtimes.kubernetes.manifests import namespace

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip(8) to give the simulated pod's address to this machine")
    monkeypatch.setattr(kubernetes_runtime, "STATUS_EVERY", 0)  # read at each look, not once per 10 s
    _, spec = sample_spec(cast)
    web = replace(spec.service("web"), status_path="/status")
    spec = replace(spec, services=tuple(web if s.identifier == "web" else s for s in spec.services))
    runtime = get_runtime()
    runtime.apply(spec)

    def pod_ip() -> str:
        pods = kube.list("Pod", namespace(spec), "diploi.io/component=web")
        return pods[0]["status"].get("podIP", "") if pods else ""

    def items() -> dict[str, tuple[str, str]]:
        observed = runtime.observe([spec])[spec.id]
        return {s.name: (s.colour.value, s.message) for s in observed.services if s.name.startswith("web/")}

    wait_until(pod_ip, timeout=60)
    address = pod_ip()
    item = {"identifier": "db", "name": "Database", "status": "red", "message": "migrations pending"}
    document = {"diploiStatusVersion": 1, "items": [item]}

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(document).encode() if self.path == "/status" else b"no"
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        server = http.server.ThreadingHTTPServer((address, 8000), Status)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            wait_until(items, timeout=60)  # once the simulated pod is ready
            assert items() == {"web/db": ("red", "Database — migrations pending")}
        finally:
            server.shutdown()
            server.server_close()
        colour, message = items()["web/status"]
        assert colour == "yellow" and message.startswith("its status at /status did not answer") and "refused" in message
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


@pytest.mark.django_db
def test_a_diploi_components_dockerfile_is_built_with_the_repository_as_its_context(cast, data_dir) -> None:
    """Diploi's components: their Dockerfile copies the repository and works in FOLDER (their CI passes
    the component's folder); the builder gets the same."""
    from deployments.runtimes.kubernetes.manifests import build_manifests

    _, spec = sample_spec(cast, "production", "prod")
    web = replace(spec.service("web"), container=("Dockerfile", "Dockerfile.dev"), context_root=True, commands={})
    args = build_manifests(spec, web, "Dockerfile")[-1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[1:3] == ["--dockerfile=web/Dockerfile", "--build-arg=FOLDER=/app/web"]
    assert not any(a.startswith("--context-sub-path") for a in args)
    root = replace(web, folder=".")
    args = build_manifests(spec, root, "Dockerfile")[-1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[1:3] == ["--dockerfile=Dockerfile", "--build-arg=FOLDER=/app"]
