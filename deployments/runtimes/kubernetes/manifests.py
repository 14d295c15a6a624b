"""What a deployment is on Kubernetes, as plain manifests (pure: tests validate them offline).

Mapping: env and parameters in one Secret per service (its checksum in the pod template, so a change
rolls the workload); storage as PersistentVolumeClaims; add-ons and development components as
StatefulSets (development: the branch cloned onto a claim by an init container, then the package's
development command); staging/production components as Deployments of the built image; a Service
per service; one Ingress per deployment (`<deployment>-<project>.<base domain>` plus custom domains,
TLS by cert-manager's cluster issuer). Every object carries the managed-by, project, deployment and
component labels, so observation lists them across all namespaces in a fixed number of calls.
"""

import hashlib
import json
from dataclasses import replace

from django.conf import settings

from deployments.runtimes.base import DeploymentSpec, ServiceSpec, imported_env
from deployments.runtimes.placeholders import render

MANAGED = "app.kubernetes.io/managed-by"
PROJECT, DEPLOYMENT, DEPLOYMENT_ID, COMPONENT = (
    "diploi.io/project",
    "diploi.io/deployment",
    "diploi.io/deployment-id",
    "diploi.io/component",
)
SIZES = {  # requests, limits per component
    "S": ({"cpu": "100m", "memory": "128Mi"}, {"cpu": "500m", "memory": "512Mi"}),
    "M": ({"cpu": "250m", "memory": "512Mi"}, {"cpu": "1", "memory": "1Gi"}),
    "L": ({"cpu": "500m", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"}),
    "XL": ({"cpu": "1", "memory": "2Gi"}, {"cpu": "4", "memory": "4Gi"}),
}
IMAGES = {"python": "python:3.12-slim", "node": "node:22-slim", "redis": "valkey/valkey:8", "postgres": "postgres:16"}
COPY_POD, COPY_ROOT = "diploi-copy", "/copy"


def namespace(spec: DeploymentSpec) -> str:
    return f"diploi-{spec.project_slug}-{spec.slug}"[:63].rstrip("-")


def labels(spec: DeploymentSpec, service: ServiceSpec | None = None) -> dict[str, str]:
    found = {MANAGED: "diploi", PROJECT: spec.project_slug, DEPLOYMENT: spec.slug, DEPLOYMENT_ID: str(spec.id)}
    if service is not None:
        found[COMPONENT] = service.identifier
    return found


def default_host(spec: DeploymentSpec) -> str:
    return f"{spec.slug}-{spec.project_slug}.{settings.DIPLOI_BASE_DOMAIN}"


def _meta(spec: DeploymentSpec, name: str, service: ServiceSpec | None = None, namespaced: bool = True) -> dict:
    meta = {"name": name, "labels": labels(spec, service)}
    if namespaced:
        meta["namespace"] = namespace(spec)
    return meta


def _context(spec: DeploymentSpec, service: ServiceSpec) -> dict[str, str]:
    """Placeholder values inside the cluster: services reach each other by their Service's name."""
    ctx = {
        "host": service.identifier,
        "port": str(service.ports[0].port) if service.ports else "",
        "password": service.password,
        "code": f"/code/{service.folder}".rstrip("/") if service.kind == "component" else "",
        "identifier": service.identifier,
        "deployment": spec.slug,
        "stage": spec.stage,
    }
    ctx.update({f"port.{p.name}": str(p.port) for p in service.ports})
    ctx.update({f"storage.{v.name}": v.path for v in service.volumes})
    return ctx


def environment(spec: DeploymentSpec, service: ServiceSpec) -> dict[str, str]:
    env = {"HOST": "0.0.0.0", "PYTHONUNBUFFERED": "1", "DIPLOI_STAGE": spec.stage, "DIPLOI_COMMIT": spec.commit}
    if service.ports:
        env["PORT"] = str(service.ports[0].port)
    env.update(service.env)  # literal values, as the local runtime sets them
    env.update(imported_env(spec, service, lambda source: _context(spec, source)))
    return env


def _image(spec: DeploymentSpec, service: ServiceSpec) -> str:
    if service.kind == "component" and spec.stage != "development":
        return (
            spec.image(service.identifier)
            or f"{settings.DIPLOI_K8S_REGISTRY}/{spec.project_slug}-{service.identifier}:{spec.release or spec.commit}"
        )
    return IMAGES.get(service.package, settings.DIPLOI_K8S_DEFAULT_IMAGE)


def workload_kind(spec: DeploymentSpec, service: ServiceSpec) -> str:
    """Add-ons and development components keep their state (StatefulSet); built components are Deployments."""
    return "StatefulSet" if service.kind == "addon" or spec.stage == "development" else "Deployment"


def _workload(spec: DeploymentSpec, service: ServiceSpec, env: dict[str, str]) -> dict:
    development = service.kind == "component" and spec.stage == "development"
    command_name = "development" if development and "development" in service.commands else "start"
    command = render(service.commands.get(command_name, ""), _context(spec, service), quote=True)
    requests, limits = SIZES[settings.DIPLOI_K8S_SIZE]
    mounts = [{"name": v.name, "mountPath": v.path} for v in service.volumes]
    volumes = [{"name": v.name, "persistentVolumeClaim": {"claimName": f"{service.identifier}-{v.name}"}} for v in service.volumes]
    container = {
        "name": service.identifier,
        "image": _image(spec, service),
        "command": ["/bin/sh", "-c", command],
        "envFrom": [{"secretRef": {"name": f"env-{service.identifier}"}}],
        "ports": [{"name": p.name[:15], "containerPort": p.port} for p in service.ports],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
    }
    pod: dict = {"containers": [container], "volumes": volumes, "enableServiceLinks": False}
    if development:
        container["workingDir"] = _context(spec, service)["code"]
        mounts.append({"name": "code", "mountPath": "/code"})
        volumes.append({"name": "code", "persistentVolumeClaim": {"claimName": f"{service.identifier}-code"}})
        clone = f"[ -d /code/.git ] || git clone --branch {spec.branch} -- {spec.repository} /code"
        pod["initContainers"] = [
            {
                "name": "clone",
                "image": settings.DIPLOI_K8S_GIT_IMAGE,
                "command": ["/bin/sh", "-c", clone],
                "volumeMounts": [{"name": "code", "mountPath": "/code"}],
            }
        ]
    checksum = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]
    template = {"metadata": {"labels": labels(spec, service), "annotations": {"diploi.io/env-checksum": checksum}}, "spec": pod}
    workload = {
        "replicas": 1 if spec.enabled else 0,
        "selector": {"matchLabels": {DEPLOYMENT_ID: str(spec.id), COMPONENT: service.identifier}},
        "template": template,
    }
    kind = workload_kind(spec, service)
    if kind == "StatefulSet":
        workload["serviceName"] = service.identifier
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": _meta(spec, service.identifier, service), "spec": workload}


def _claim(spec: DeploymentSpec, service: ServiceSpec, name: str, size: str) -> dict:
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if settings.DIPLOI_K8S_STORAGE_CLASS:
        claim["storageClassName"] = settings.DIPLOI_K8S_STORAGE_CLASS
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(spec, f"{service.identifier}-{name}", service),
        "spec": claim,
    }


def _ingress(spec: DeploymentSpec, public: ServiceSpec) -> dict:
    port = next(p for p in public.ports if p.public)
    hosts = [default_host(spec), *spec.hosts]
    backend = {"service": {"name": public.identifier, "port": {"number": port.port}}}
    meta = _meta(spec, "web")
    if settings.DIPLOI_K8S_CLUSTER_ISSUER:
        meta["annotations"] = {"cert-manager.io/cluster-issuer": settings.DIPLOI_K8S_CLUSTER_ISSUER}
    ingress: dict = {
        "rules": [{"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}} for h in hosts],
        "tls": [{"hosts": hosts, "secretName": "web-tls"}],
    }
    if settings.DIPLOI_K8S_INGRESS_CLASS:
        ingress["ingressClassName"] = settings.DIPLOI_K8S_INGRESS_CLASS
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": ingress}


def manifests(spec: DeploymentSpec) -> list[dict]:
    """Everything the deployment consists of, in the order it is applied."""
    objects: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(spec, namespace(spec), namespaced=False)}]
    for service in spec.services:
        env = environment(spec, service)
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _meta(spec, f"env-{service.identifier}", service),
                "type": "Opaque",
                "stringData": env,
            }
        )
        objects += [_claim(spec, service, v.name, v.size) for v in service.volumes]
        if service.kind == "component" and spec.stage == "development":
            objects.append(_claim(spec, service, "code", settings.DIPLOI_K8S_CODE_SIZE))
        if service.ports:
            ports = [{"name": p.name[:15], "port": p.port, "targetPort": p.port, "protocol": "TCP"} for p in service.ports]
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": _meta(spec, service.identifier, service),
                    "spec": {"selector": {DEPLOYMENT_ID: str(spec.id), COMPONENT: service.identifier}, "ports": ports},
                }
            )
        objects.append(_workload(spec, service, env))
    public = next((s for s in spec.services if s.kind == "component" and any(p.public for p in s.ports)), None)
    if public is not None:
        objects.append(_ingress(spec, public))
    return objects


def build_name(spec: DeploymentSpec, service: ServiceSpec) -> str:
    return f"build-{spec.commit[:12]}-{service.identifier}"[:63].rstrip("-")


def build_manifests(spec: DeploymentSpec, service: ServiceSpec) -> list[dict]:
    """A ConfigMap with the generated Dockerfile and the Job that builds and pushes the image."""
    name = build_name(spec, service)
    ctx = _context(spec, service)
    steps = [render(service.commands[step], ctx) for step in ("install", "build") if service.commands.get(step)]
    folder = f"/code/{service.folder}".rstrip("/")
    dockerfile = "\n".join(
        [
            f"FROM {IMAGES.get(service.package, settings.DIPLOI_K8S_DEFAULT_IMAGE)}",
            "COPY . /code/",
            f"WORKDIR {folder}",
            *(f"RUN {step}" for step in steps),
            "",
        ]
    )
    repository = spec.repository.split("://", 1)[-1]
    image = _image(replace(spec, release=spec.commit), service)
    container = {
        "name": "build",
        "image": settings.DIPLOI_K8S_BUILDER_IMAGE,
        "args": [
            f"--context=git://{repository}#refs/heads/{spec.branch}#{spec.commit}",
            "--dockerfile=/build/Dockerfile",
            f"--destination={image}",
        ],
        "volumeMounts": [{"name": "dockerfile", "mountPath": "/build"}],
    }
    job = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 3600,
        "template": {
            "metadata": {"labels": labels(spec, service)},
            "spec": {"restartPolicy": "Never", "containers": [container], "volumes": [{"name": "dockerfile", "configMap": {"name": name}}]},
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(spec, name, service), "data": {"Dockerfile": dockerfile}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(spec, name, service), "spec": job},
    ]


def storage_paths(source: DeploymentSpec, target: DeploymentSpec, service: ServiceSpec) -> list[tuple[str, str]]:
    """(claim, path in the container) of what a clone copies for `service`: its volumes, and the code
    when both are development deployments."""
    found = [(f"{service.identifier}-{v.name}", v.path) for v in service.volumes]
    if service.kind == "component" and source.stage == target.stage == "development":
        found.append((f"{service.identifier}-code", "/code"))
    return found


def copy_pod(spec: DeploymentSpec, claims: list[str]) -> dict:
    """A pod that only holds the target's claims open for the copy."""
    mounts = [{"name": f"c{i}", "mountPath": f"{COPY_ROOT}/{claim}"} for i, claim in enumerate(claims)]
    volumes = [{"name": f"c{i}", "persistentVolumeClaim": {"claimName": claim}} for i, claim in enumerate(claims)]
    container = {"name": "copy", "image": settings.DIPLOI_K8S_DEFAULT_IMAGE, "command": ["sleep", "3600"], "volumeMounts": mounts}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(spec, COPY_POD),
        "spec": {"containers": [container], "volumes": volumes, "restartPolicy": "Never"},
    }
