"""Diploi's charts rendered: a package's Helm templates (`.diploi/helm/`) with the values Diploi's charts
read, by `helm template` (DIPLOI_HELM: the binary; scripts/k8s-testenv builds one, the platform's image
carries one). The Kubernetes runtime applies what they render, wrapped in the deployment's tenancy
(kubernetes/charts.py); the local runtime runs the container of a package that is only an image and a
chart (local/charted.py).

The values (every one the published charts read; ../docs/kubernetes.md lists them): `stage`,
`enabled`, `identifier`, `folder`, `images.<id>`, `env[]`, `envMap.<NAME>.value`,
`parameterGroups[]`, `parameterGroupsMap.<NAME>`, `parameterGroupsEnabled`, `storage.<id>.hostPath`,
`containerCommands`, `hosts.<host>`, `endpoints[]`, `ports[]`.
"""

import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import yaml
from django.conf import settings

from deployments.runtimes import hostnames
from deployments.runtimes.base import DeploymentSpec, RuntimeFailure, ServiceSpec
from safeyaml import BoundedLoader

MAX_RENDERED = 2 * 1024 * 1024
HOST_PATH = "/diploi/storage/"  # what the chart is given as storage.<id>.hostPath; replaced by the claim


class ChartRefused(RuntimeFailure):
    """The package's chart renders objects a deployment may not have, or does not render."""


def values(spec: DeploymentSpec, service: ServiceSpec, env: dict[str, str], with_code: bool = False) -> dict:
    """What Diploi's charts read, for this deployment's `service` (env: its whole environment;
    `with_code`: a development component's code, as `storage.code`, where Diploi's charts mount it at /app)."""
    found = [e for e in hostnames.endpoints(spec) if e.service == service.identifier]
    ports = {p.name: p.port for p in service.ports}
    by_host: dict[str, str] = {}
    for e in found:
        by_host.setdefault(e.port, e.host)  # the component's own name first (endpoints() lists it first)
    items = [{"identifier": k, "value": v, "contexts": f"label={service.identifier},label=app"} for k, v in sorted(env.items())]
    storage = [v.name for v in service.volumes] + (["code"] if with_code else [])
    return {
        "stage": spec.stage,
        "enabled": spec.enabled,
        "identifier": service.identifier,
        "folder": "" if service.folder in ("", ".") else "/" + service.folder.strip("/"),
        "images": dict(service.images) | ({"app": app} if (app := spec.image(service.identifier) or service.image) else {}),
        "env": items,
        "envMap": {k: {"value": v} for k, v in env.items()},
        "parameterGroups": [{"identifier": k, "value": v} for k, v in sorted(env.items())],
        "parameterGroupsMap": dict(env),
        "parameterGroupsEnabled": dict(service.toggles),
        "storage": {name: {"hostPath": HOST_PATH + name} for name in storage},
        "containerCommands": dict(service.start_commands),
        "hosts": by_host,
        "endpoints": [{"url": e.host, "serviceName": service.identifier, "port": ports.get(e.port)} for e in found],
        "ports": [{"identifier": p.name, "port": p.port, "serviceName": service.identifier} for p in service.ports],
    }


def render(spec: DeploymentSpec, service: ServiceSpec, env: dict[str, str], namespace: str, with_code: bool = False) -> list[dict]:
    """`helm template` of the package's templates with `values()`; ChartRefused when it fails."""
    values_text = yaml.safe_dump(values(spec, service, env, with_code))
    rendered = _template(settings.DIPLOI_HELM, service.identifier, service.chart, values_text, namespace)
    try:
        return [obj for obj in yaml.load_all(rendered, Loader=RenderedLoader) if obj]  # noqa: S506 — a SafeLoader
    except yaml.YAMLError as e:
        raise ChartRefused(f"{service.identifier}: its chart renders something that is not Kubernetes objects: {e}") from None


@lru_cache(maxsize=256)
def _template(helm: str, identifier: str, chart: tuple[tuple[str, str], ...], values_text: str, namespace: str) -> str:
    """What Helm renders, once per input: every apply, route and clone asks for the deployment's
    objects, and an unchanged deployment's chart renders the same (a run of Helm is ~0.1 s)."""
    with tempfile.TemporaryDirectory(prefix="diploi-chart-") as folder:
        root = Path(folder)
        (root / "templates").mkdir()
        (root / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": identifier, "version": "0.0.0"}))
        for name, text in chart:
            # only what Helm renders: its own files beside them (.html, .conf) are read by none of the values above
            (root / "templates" / Path(name).name).write_text(text)
        (root / "values.yaml").write_text(values_text)
        argv = [helm, "template", identifier, str(root), "--namespace", namespace]
        # the package's text runs in Helm's template language: without the platform's environment (no
        # kubeconfig, no credentials), its own folders in the temporary one, a time limit
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "HELM_CACHE_HOME": folder, "HELM_CONFIG_HOME": folder}
        env["HELM_DATA_HOME"], env["KUBECONFIG"] = folder, os.devnull
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=folder)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ChartRefused(f"{identifier}: its chart could not be rendered ({helm}: {e})") from None
    if done.returncode != 0:
        raise ChartRefused(f"{identifier}: its chart does not render: {done.stderr.strip()[-500:]}")
    if len(done.stdout) > MAX_RENDERED:  # (before it is kept)
        raise ChartRefused(f"{identifier}: its chart renders {len(done.stdout)} characters; at most {MAX_RENDERED} are applied")
    return done.stdout


class RenderedLoader(BoundedLoader):
    """What a chart rendered: no aliases (which would multiply when applied), a bounded number of values."""

    max_nodes = 100_000
