"""A package that is only an image and a Helm chart (as Diploi's MariaDB, MongoDB, MinIO and Elasticsearch
add-ons are) on the local runtime: its chart rendered by Helm, its one container run with podman as the
deployment, its storage mounted where the chart says, its Kubernetes address made this machine's for
the components that include it. Root, podman and a helm binary (scripts/k8s-testenv build makes one)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from deployments.actions import do_create_deployment, do_delete, do_restart
from deployments.models import Deployment, State
from deployments.provisioning import tasks
from deployments.provisioning.spec import current_spec
from projects.models import Membership, Project, Role
from projects.stack import refresh_stack
from tests.conftest import publish, wait_until
from tests.images import scratch_podman
from tests.test_it_containers import base_images, container_runtime, data_dir, shell, started  # noqa: F401 — fixtures
from tests.test_it_containers import pytestmark as containers_mark
from tests.test_it_helm import HELM
from tests.test_it_starters import told

needs_helm = pytest.mark.skipif(HELM is None, reason="no helm binary: scripts/k8s-testenv build makes one")

KV_PACKAGE = """\
diploiVersion: v1.0
type: addon
name: KV
description: A store that is an image and a chart, in the shape of Diploi's add-ons
parameterGroups:
  - name: Connection
    identifier: CONNECTION
    parameters:
      - {name: Host, identifier: KV_HOST, defaultValue: "kv.${DIPLOI_NAMESPACE}", type: string, readOnly: true}
      - {name: Port, identifier: KV_PORT, defaultValue: 6000, type: integer, readOnly: true}
      - {name: Secret, identifier: KV_SECRET, defaultValue: "${generate-random-password:16}", type: secret}
connectionStrings:
  - name: URL
    value: http://${KV_HOST}:${KV_PORT}/
images:
  - identifier: kv
    image: example/kv:1
storage:
  - identifier: kv
    sizeMiB: 64
"""

KV_WORKLOAD = """\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: kv
spec:
  selector:
    matchLabels:
      app: kv
  serviceName: kv
  replicas: 1
  template:
    metadata:
      labels:
        app: kv
    spec:
      containers:
        - name: kv
          image: {{ .Values.images.kv }}
          imagePullPolicy: Always
          ports:
            - containerPort: 6000
              name: kv
          args: ["--from-chart", {{ .Values.stage | quote }}]
          env:
            {{- range .Values.env }}
            - name: {{ .identifier }}
              value: {{ .value | quote }}
            {{- end }}
          volumeMounts:
            - name: kv-mount
              mountPath: /data
      volumes:
        - name: kv-mount
          hostPath:
            path: {{ $.Values.storage.kv.hostPath }}
"""

KV_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: kv
spec:
  type: NodePort
  ports:
    - name: kv
      port: {{ .Values.parameterGroupsMap.KV_PORT }}
  selector:
    app: kv
"""

# The image: its entrypoint writes what it was given into its storage, once a mark of its first start, and
# serves the folder.
KV_ENTRYPOINT = """\
#!/bin/sh
[ -f /data/first.txt ] || cat /proc/sys/kernel/random/uuid > /data/first.txt
echo "args=$* secret=$KV_SECRET stage=$DIPLOI_STAGE" > /data/hello.txt
exec httpd -f -p 6000 -h /data
"""

STACK = """\
diploiVersion: v1.0
components:
  - name: Web
    identifier: web
    folder: /web
    package: dockerfile
    env:
      include:
        - kv.KV_HOST
        - kv.KV_PORT
addons:
  - name: KV
    identifier: kv
    package: {server}/kv.git#main
"""

WEB_DOCKERFILE = """\
FROM localhost/busybox
COPY . /app
CMD ["sh", "-c", "exec httpd -f -p \\"$PORT\\" -h /app"]
"""


@pytest.fixture(scope="session")
def kv_images(base_images, tmp_path_factory) -> Path:  # noqa: F811
    """The base image and `docker.io/example/kv:1` (what `example/kv:1` names), as archives."""
    work = tmp_path_factory.mktemp("kv-image")
    images = work / "images"
    images.mkdir(mode=0o755)
    shutil.copy(base_images / "busybox.tar", images / "busybox.tar")
    context = work / "context"
    context.mkdir()
    (context / "kv.sh").write_text(KV_ENTRYPOINT)
    (context / "Dockerfile").write_text('FROM localhost/busybox\nCOPY kv.sh /kv.sh\nRUN chmod +x /kv.sh\nENTRYPOINT ["/kv.sh"]\n')
    with scratch_podman(work) as (podman, env):
        for args in (
            ["load", "-q", "-i", str(base_images / "busybox.tar")],
            ["build", "-q", "-t", "docker.io/example/kv:1", str(context)],
            ["save", "-q", "-o", str(images / "kv.tar"), "docker.io/example/kv:1"],
        ):
            subprocess.run([*podman, *args], check=True, env=env, capture_output=True, cwd="/")
    for archive in images.iterdir():
        archive.chmod(0o644)
    return images


def kv_project(git_daemon, owner) -> Project:
    base, server = git_daemon
    publish(base, "kv", {"diploi.yaml": KV_PACKAGE, ".diploi/helm/kv.yaml": KV_WORKLOAD, ".diploi/helm/kv-service.yaml": KV_SERVICE})
    publish(base, "kv-app", {"diploi.yaml": STACK.format(server=server), "web/Dockerfile": WEB_DOCKERFILE, "web/index.html": "web\n"})
    project = Project.objects.create(name="KV app", slug="kv-app", repository=f"{server}/kv-app.git", default_branch="main")
    Membership.objects.create(project=project, user=owner, role=Role.OWNER)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors
    return project


@containers_mark
@needs_helm
def test_an_image_and_chart_add_on_runs_as_its_container_and_components_reach_it(
    db,
    cast,
    git_daemon,
    container_runtime,  # noqa: F811
    kv_images,
    settings,
) -> None:
    settings.DIPLOI_HELM = HELM
    settings.DIPLOI_CONTAINER_IMAGES = str(kv_images)
    project = kv_project(git_daemon, cast.owner)
    page = cast.client(cast.owner).get(f"/projects/{project.slug}/").content.decode()
    assert "its image, as its Helm chart runs it (podman)" in page and "this machine cannot run it" not in page
    d = started(project, "production", cast.owner, container_runtime)
    spec = current_spec(d)
    kv = next(s for s in spec.services if s.identifier == "kv")
    # What the chart says: its image, its arguments, the deployment's values as its environment, its storage at /data
    assert kv.image_run and kv.image_run.image == "example/kv:1" and kv.image_run.args == ("--from-chart", "production")
    assert [(v.name, v.path) for v in kv.volumes] == [("kv", "/data")]

    # The component reaches it at the address it is told (this machine's, not Kubernetes' kv.<namespace>).
    def hello() -> str | None:
        try:
            return shell(container_runtime, d, 'echo "$KV_HOST:$KV_PORT"; wget -qO- "http://$KV_HOST:$KV_PORT/hello.txt"')
        except AssertionError:
            return None

    try:
        told_web = wait_until(hello, timeout=60, what="the add-on from the component")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{told(d, container_runtime)}") from None
    address, answer = told_web.split("\n", 1)
    port = container_runtime.layout.read_json(spec, "ports.json")["kv"]["kv"]
    assert address == f"10.0.2.2:{port}", address
    secret = dict(kv.image_run.env)["KV_SECRET"]
    assert len(secret) == 16 and answer.strip() == f"args=--from-chart production secret={secret} stage=production", answer
    # `ssh kv@…` is a shell in its container: its storage where the chart mounts it.
    assert shell(container_runtime, d, "cat /data/hello.txt", service="kv") == answer
    # Its data is the deployment's volume, and outlives a restart of the container.
    volume = container_runtime.layout.volume_dir(spec, kv, "kv")
    first = (volume / "first.txt").read_text()
    do_restart(d, "kv", actor=cast.owner, now=True)
    wait_until(lambda: hello() and (volume / "first.txt").read_text() == first, timeout=60, what="the restarted add-on")
    # Deleted: its storage goes with the deployment (and its containers and images with the deployment's
    # podman storage, as test_it_containers checks).
    do_delete(d, actor=cast.owner)
    tasks.destroy(d.pk)
    assert not Deployment.objects.filter(pk=d.pk).exists() and not volume.exists()


@containers_mark
def test_an_image_and_chart_add_on_without_helm_says_why_it_cannot_run(
    db,
    cast,
    git_daemon,
    container_runtime,  # noqa: F811
    settings,
) -> None:
    settings.DIPLOI_HELM = "/nonexistent/helm"
    project = kv_project(git_daemon, cast.owner)
    d = do_create_deployment(project, "Production", "production", "main", actor=cast.owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    # It runs without the add-on, which says why (as an add-on this machine lacks a program for does).
    assert d.state == State.RUNNING, d.state_reason
    states = {s.name: s for s in container_runtime.observe([current_spec(d)])[d.pk].containers}
    assert "Helm, which reads the chart, is not installed" in states["kv"].message, states["kv"]
