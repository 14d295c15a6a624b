"""The Helm chart that ships the platform on Kubernetes: rendered with the real `helm` binary (built
by scripts/k8s-testenv) and every manifest validated strictly for Kubernetes 1.30 to 1.37."""

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import BASE_DIR

CHART = BASE_DIR / "deploy" / "helm" / "diploi"


def helm_binary() -> str | None:
    built = subprocess.run([str(BASE_DIR / "scripts" / "k8s-testenv"), "bin"], capture_output=True, text=True).stdout.strip()
    candidate = os.path.join(built, "helm") if built else ""
    return candidate if os.access(candidate, os.X_OK) else shutil.which("helm")


HELM = helm_binary()
pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary: scripts/k8s-testenv build makes one")
REQUIRED = [
    "databaseUrl=postgres://diploi:pw@db:5432/diploi",
    "redisUrl=redis://redis:6379/0",
    "secretKey=s3cret",
    "encryptionKeys=Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=",
]


def render(*values: str) -> subprocess.CompletedProcess:
    argv = [HELM, "template", "diploi", str(CHART), "--namespace", "diploi-system"]
    for v in values:
        argv += ["--set", v]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_chart_renders_valid_manifests_for_every_process() -> None:
    import kubernetes_validate

    result = render(*REQUIRED)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    by_kind: dict[str, list[str]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d["metadata"]["name"])
    assert sorted(by_kind["Deployment"]) == ["diploi-monitor", "diploi-ssh", "diploi-web", "diploi-worker"]
    assert {
        "Secret",
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Ingress",
        "PersistentVolumeClaim",
    } <= set(by_kind)
    commands = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["command"] for d in docs if d["kind"] == "Deployment"}
    assert commands["diploi-web"][0] == "daphne" and commands["diploi-worker"][:3] == ["celery", "-A", "diploi"]
    assert commands["diploi-monitor"] == ["python", "manage.py", "monitor"] and commands["diploi-ssh"][2] == "sshgateway"
    web = next(d for d in docs if d["metadata"]["name"] == "diploi-web" and d["kind"] == "Deployment")
    assert web["spec"]["template"]["spec"]["initContainers"][0]["command"][:3] == ["python", "manage.py", "migrate"]
    for version in [f"1.{minor}.0" for minor in range(30, 38)]:
        for d in docs:
            kubernetes_validate.validate(d, version, strict=True)


def test_missing_connection_settings_are_named() -> None:
    result = render(*REQUIRED[1:])
    assert result.returncode != 0 and "databaseUrl is required" in result.stderr
    with_secret = render("existingSecret=diploi-connections")
    assert with_secret.returncode == 0, with_secret.stderr
    assert "kind: Secret" not in with_secret.stdout and "name: diploi-connections" in with_secret.stdout


@pytest.mark.skipif(
    not os.environ.get("DIPLOI_TEST_KUBECONFIG"), reason="no control plane: set DIPLOI_TEST_KUBECONFIG (scripts/k8s-testenv)"
)
def test_the_chart_runs_on_the_test_control_plane() -> None:
    from deployments.runtimes.kubernetes.client import KINDS, Kube
    from tests.conftest import wait_until

    kube = Kube(os.environ["DIPLOI_TEST_KUBECONFIG"])
    docs = [d for d in yaml.safe_load_all(render(*REQUIRED).stdout) if d]
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "diploi-system"}})
    try:
        for d in docs:
            if KINDS[d["kind"]][2]:
                d["metadata"]["namespace"] = "diploi-system"
            kube.apply(d)

        def running() -> bool:
            pods = kube.list("Pod", "diploi-system")
            components = {
                p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods if p.get("status", {}).get("phase") == "Running"
            }
            return components == {"web", "worker", "monitor", "ssh"}

        wait_until(running, timeout=90, what="the platform's four processes Running (simulated)")
    finally:
        kube.delete("Namespace", "diploi-system")
        for d in docs:
            if not KINDS[d["kind"]][2]:
                kube.delete(d["kind"], d["metadata"]["name"])
        kube.wait_gone("Namespace", "diploi-system")
