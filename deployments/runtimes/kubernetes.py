"""The Kubernetes runtime: the same stack files, as objects in one namespace per deployment.

`manifests(spec)` is pure (tests validate it offline); `apply` sends it with server-side apply.
Every object carries the managed-by, project, deployment and component labels, so `observe` lists
pods, claims and workloads across all namespaces in a fixed number of calls.

Mapping: env and parameters in one Secret per service (its checksum in the pod template, so a change
rolls the workload); storage as PersistentVolumeClaims; add-ons and development components as
StatefulSets (development: the branch cloned onto a claim by an init container, then the package's
development command); staging/production components as Deployments of the built image; a Service
per service; one Ingress per deployment (`<deployment>-<project>.<base domain>` plus custom domains,
TLS by cert-manager's cluster issuer).
"""

import hashlib
import json
import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from django.conf import settings

from deployments.runtimes.base import (
    BuildFailed,
    Colour,
    DeploymentSpec,
    ItemState,
    Observation,
    Progress,
    Runtime,
    RuntimeFailure,
    ServiceSpec,
    Shell,
    Tunnel,
    Unreachable,
    forward_candidates,
    imported_env,
    render,
)
from deployments.runtimes.k8s_client import Kube, KubeError

MANAGED = "app.kubernetes.io/managed-by"
PROJECT, DEPLOYMENT, DEPLOYMENT_ID, COMPONENT = "diploi.io/project", "diploi.io/deployment", "diploi.io/deployment-id", "diploi.io/component"
SIZES = {  # requests, limits per component
    "S": ({"cpu": "100m", "memory": "128Mi"}, {"cpu": "500m", "memory": "512Mi"}),
    "M": ({"cpu": "250m", "memory": "512Mi"}, {"cpu": "1", "memory": "1Gi"}),
    "L": ({"cpu": "500m", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"}),
    "XL": ({"cpu": "1", "memory": "2Gi"}, {"cpu": "4", "memory": "4Gi"}),
}
IMAGES = {"python": "python:3.12-slim", "node": "node:22-slim", "redis": "valkey/valkey:8", "postgres": "postgres:16"}
COPY_POD, COPY_ROOT = "diploi-copy", "/copy"
log = logging.getLogger(__name__)


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
        return spec.image(service.identifier) or f"{settings.DIPLOI_K8S_REGISTRY}/{spec.project_slug}-{service.identifier}:{spec.release or spec.commit}"
    return IMAGES.get(service.package, settings.DIPLOI_K8S_DEFAULT_IMAGE)


def _workload_kind(spec: DeploymentSpec, service: ServiceSpec) -> str:
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
        pod["initContainers"] = [{"name": "clone", "image": settings.DIPLOI_K8S_GIT_IMAGE, "command": ["/bin/sh", "-c", clone],
                                  "volumeMounts": [{"name": "code", "mountPath": "/code"}]}]  # fmt: skip
    checksum = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]
    template = {"metadata": {"labels": labels(spec, service), "annotations": {"diploi.io/env-checksum": checksum}}, "spec": pod}
    workload = {
        "replicas": 1 if spec.enabled else 0,
        "selector": {"matchLabels": {DEPLOYMENT_ID: str(spec.id), COMPONENT: service.identifier}},
        "template": template,
    }
    kind = _workload_kind(spec, service)
    if kind == "StatefulSet":
        workload["serviceName"] = service.identifier
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": _meta(spec, service.identifier, service), "spec": workload}


def _claim(spec: DeploymentSpec, service: ServiceSpec, name: str, size: str) -> dict:
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if settings.DIPLOI_K8S_STORAGE_CLASS:
        claim["storageClassName"] = settings.DIPLOI_K8S_STORAGE_CLASS
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(spec, f"{service.identifier}-{name}", service), "spec": claim}


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
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": _meta(spec, f"env-{service.identifier}", service), "type": "Opaque",
                        "stringData": env})  # fmt: skip
        objects += [_claim(spec, service, v.name, v.size) for v in service.volumes]
        if service.kind == "component" and spec.stage == "development":
            objects.append(_claim(spec, service, "code", settings.DIPLOI_K8S_CODE_SIZE))
        if service.ports:
            ports = [{"name": p.name[:15], "port": p.port, "targetPort": p.port, "protocol": "TCP"} for p in service.ports]
            objects.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(spec, service.identifier, service),
                            "spec": {"selector": {DEPLOYMENT_ID: str(spec.id), COMPONENT: service.identifier}, "ports": ports}})  # fmt: skip
        objects.append(_workload(spec, service, env))
    public = next((s for s in spec.services if s.kind == "component" and any(p.public for p in s.ports)), None)
    if public is not None:
        objects.append(_ingress(spec, public))
    return objects


def _build_name(spec: DeploymentSpec, service: ServiceSpec) -> str:
    return f"build-{spec.commit[:12]}-{service.identifier}"[:63].rstrip("-")


def build_manifests(spec: DeploymentSpec, service: ServiceSpec) -> list[dict]:
    """A ConfigMap with the generated Dockerfile and the Job that builds and pushes the image."""
    name = _build_name(spec, service)
    ctx = _context(spec, service)
    steps = [render(service.commands[step], ctx) for step in ("install", "build") if service.commands.get(step)]
    folder = f"/code/{service.folder}".rstrip("/")
    dockerfile = "\n".join([f"FROM {IMAGES.get(service.package, settings.DIPLOI_K8S_DEFAULT_IMAGE)}", "COPY . /code/", f"WORKDIR {folder}",
                             *(f"RUN {step}" for step in steps), ""])  # fmt: skip
    repository = spec.repository.split("://", 1)[-1]
    image = _image(replace(spec, release=spec.commit), service)
    container = {
        "name": "build",
        "image": settings.DIPLOI_K8S_BUILDER_IMAGE,
        "args": [f"--context=git://{repository}#refs/heads/{spec.branch}#{spec.commit}", "--dockerfile=/build/Dockerfile", f"--destination={image}"],
        "volumeMounts": [{"name": "dockerfile", "mountPath": "/build"}],
    }
    job = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 3600,
        "template": {"metadata": {"labels": labels(spec, service)},
                     "spec": {"restartPolicy": "Never", "containers": [container], "volumes": [{"name": "dockerfile", "configMap": {"name": name}}]}},
    }  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(spec, name, service), "data": {"Dockerfile": dockerfile}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(spec, name, service), "spec": job},
    ]


class KubernetesRuntime(Runtime):
    sftp_command = (  # the image's own SFTP server, where distributions put it
        "for p in /usr/lib/openssh/sftp-server /usr/lib/sftp-server /usr/libexec/sftp-server /usr/libexec/openssh/sftp-server "
        '/usr/lib/ssh/sftp-server; do [ -x "$p" ] && exec "$p"; done; '
        'echo "diploi: this image has no sftp-server (add openssh-sftp-server to it)" >&2; exit 127'
    )

    def __init__(self, kube: Kube | None = None) -> None:
        self.kube = kube or Kube(settings.DIPLOI_K8S_KUBECONFIG, settings.DIPLOI_K8S_CONTEXT)

    def apply(self, spec: DeploymentSpec) -> dict[str, str]:
        for obj in manifests(spec):
            self.kube.apply(obj)
        public = next((s for s in spec.services if s.kind == "component" and any(p.public for p in s.ports)), None)
        return {public.identifier: f"https://{default_host(spec)}"} if public else {}

    def set_enabled(self, spec: DeploymentSpec, enabled: bool) -> None:
        """Replicas to zero (or back); claims stay."""
        self.apply(replace(spec, enabled=enabled))

    def restart(self, spec: DeploymentSpec, service: str) -> None:
        stamp = {"spec": {"template": {"metadata": {"annotations": {"diploi.io/restarted-at": str(time.time())}}}}}
        self.kube.patch(_workload_kind(spec, spec.service(service)), service, namespace(spec), stamp)

    def observe(self, specs: list[DeploymentSpec]) -> dict[int, Observation]:
        wanted = {s.id: s for s in specs}
        found: dict[str, dict[str, list[dict]]] = {}
        for kind in ("Pod", "PersistentVolumeClaim", "StatefulSet", "Deployment"):
            found[kind] = defaultdict(list)
            for obj in self.kube.list(kind, selector=f"{MANAGED}=diploi"):
                found[kind][obj["metadata"]["labels"].get(DEPLOYMENT_ID, "")].append(obj)
        metrics = self.kube.pod_metrics(f"{MANAGED}=diploi")
        usage = None if metrics is None else {(m["metadata"]["namespace"], m["metadata"]["name"]): _usage(m) for m in metrics}
        return {pk: self._observation(spec, {k: v.get(str(pk), []) for k, v in found.items()}, usage) for pk, spec in wanted.items()}

    def _observation(self, spec: DeploymentSpec, objects: dict[str, list[dict]], usage: dict | None) -> Observation:
        storage = tuple(_claim_state(c) for c in objects["PersistentVolumeClaim"])
        containers, services = [], []
        workloads = {w["metadata"]["name"]: w for w in objects["StatefulSet"] + objects["Deployment"]}
        for service in spec.services:
            pods = [p for p in objects["Pod"] if p["metadata"]["labels"].get(COMPONENT) == service.identifier]
            state = _container_state(service.identifier, pods, spec.enabled)
            if usage is not None and pods:
                cpu, memory = usage.get((pods[0]["metadata"]["namespace"], pods[0]["metadata"]["name"]), (None, None))
                state = replace(state, cpu_percent=cpu, memory_bytes=memory)
            containers.append(state)
            workload = workloads.get(service.identifier)
            ready = (workload or {}).get("status", {}).get("readyReplicas", 0)
            if workload is None:
                services.append(ItemState(service.identifier, Colour.RED, "not created"))
            elif ready:
                note = "" if usage is not None else " (no CPU figures: the cluster does not serve metrics.k8s.io)"
                services.append(ItemState(service.identifier, Colour.GREEN, f"{ready} ready{note}"))
            else:
                services.append(ItemState(service.identifier, Colour.PENDING if not spec.enabled else Colour.YELLOW, "no ready replica"))
        return Observation(storage=storage, containers=tuple(containers), services=tuple(services))

    def _pod(self, spec: DeploymentSpec, service: str, running: bool = False) -> str | None:
        """The name of one pod of the service (a running one when asked), or None."""
        pods = self.kube.list("Pod", namespace(spec), f"{DEPLOYMENT_ID}={spec.id},{COMPONENT}={service}")
        if running:
            pods = [p for p in pods if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        return pods[0]["metadata"]["name"] if pods else None

    def logs(self, spec: DeploymentSpec, service: str, follow: bool = False, since: int | None = None, tail: int = 200,
             stop: threading.Event | None = None) -> Iterator[str]:  # fmt: skip
        spec.service(service)
        pod = self._pod(spec, service)
        if pod is None:
            return
        for line in self.kube.logs(namespace(spec), pod, service, follow=follow, tail=None if since == 0 else tail):
            if stop is not None and stop.is_set():
                return
            yield line

    def destroy(self, spec: DeploymentSpec) -> None:
        """Delete the namespace (everything in it, claims included) and wait until it is gone."""
        self.kube.delete("Namespace", namespace(spec))
        self.kube.wait_gone("Namespace", namespace(spec), timeout=settings.DIPLOI_K8S_DELETE_TIMEOUT)

    def build(self, spec: DeploymentSpec, progress: Progress) -> str:
        """One Job per component: the builder image builds the commit with a generated Dockerfile
        (the package's image, the code, its install and build commands) and pushes the image the
        workloads run. Progress follows the Jobs; a failed Job fails the build with its reason."""
        components = [s for s in spec.services if s.kind == "component"]
        self.kube.apply(manifests(spec)[0])  # the namespace
        progress("clone", 0, f"Building {spec.commit[:10]} of {spec.branch} in the cluster")
        for service in components:
            for obj in build_manifests(spec, service):
                self.kube.apply(obj)
        progress("install", 25, f"{len(components)} build job(s) started")
        deadline = time.monotonic() + settings.DIPLOI_K8S_BUILD_TIMEOUT
        done: set[str] = set()
        while len(done) < len(components):
            for service in components:
                if service.identifier in done:
                    continue
                job = self.kube.get("Job", _build_name(spec, service), namespace(spec)) or {}
                conditions = {c["type"]: c for c in job.get("status", {}).get("conditions", []) if c.get("status") == "True"}
                if "Failed" in conditions:
                    raise BuildFailed("build", f"{service.identifier}: {conditions['Failed'].get('message') or conditions['Failed'].get('reason')}")
                if "Complete" in conditions:
                    done.add(service.identifier)
                    progress("build", 25 + 65 * len(done) // len(components), f"{service.identifier}: image pushed")
            if len(done) < len(components):
                if time.monotonic() > deadline:
                    raise BuildFailed("build", f"not finished after {settings.DIPLOI_K8S_BUILD_TIMEOUT} s")
                time.sleep(1)
        progress("release", 100, f"Release {spec.commit[:10]} ready")
        return spec.commit

    def open_shell(self, spec: DeploymentSpec, service: str, command: str | None, pty: bool) -> Shell:
        """Through the pod exec API: the container's environment and working directory, a terminal
        when asked (resized through the stream), the exit status from the stream's final status."""
        spec.service(service)
        pod = self._pod(spec, service, running=True)
        if pod is None:
            raise RuntimeFailure(f"{service} has no running pod; is the deployment running?")
        return PodShell(self.kube, namespace(spec), pod, service, command, pty)

    def files_root(self, spec: DeploymentSpec, service: str) -> Path:
        raise RuntimeFailure("The files are in the cluster: SFTP runs in the container (sftp_command).")

    def open_forward(self, spec: DeploymentSpec, service: str, host: str, port: int) -> Tunnel:
        """Through the pod port-forward API to a running pod of the service that declares the port
        (works wherever the gateway runs, with the API's access rules)."""
        candidates = forward_candidates(spec, service, host, port)
        if not candidates:
            raise RuntimeFailure(f"{host}:{port} is not a port of this deployment")
        svc = candidates[0][0]
        pod = self._pod(spec, svc.identifier, running=True)
        if pod is None:
            raise Unreachable(f"{host}:{port}: {svc.identifier} has no running pod")
        try:
            return self.kube.portforward(namespace(spec), pod, port)
        except KubeError as e:
            raise Unreachable(f"{host}:{port} is not answering: {e}") from None

    def copy_storage(self, source: DeploymentSpec, target: DeploymentSpec) -> None:
        """The target's claims and a helper pod that mounts them; then, for each claim, `tar` streamed
        from the source's running container into the helper (two exec streams, nothing stored in
        between). Safe to call again (the copy is made again); the source is only read."""
        copies = [(service, claim, path) for service in target.services for claim, path in _storage_paths(source, target, service)]
        if not copies:
            return
        ns = namespace(target)
        for obj in manifests(target):
            if obj["kind"] in ("Namespace", "PersistentVolumeClaim"):
                self.kube.apply(obj)
        self.kube.apply(_copy_pod(target, [claim for _, claim, _ in copies]))
        try:
            self._wait_running(ns, COPY_POD)
            for service, claim, path in copies:
                pod = self._pod(source, service.identifier, running=True)
                if pod is None:
                    raise RuntimeFailure(f"{service.identifier} of the source is not running; start it to copy its storage")
                self._copy(namespace(source), pod, service.identifier, path, ns, claim)
        finally:
            self.kube.delete("Pod", COPY_POD, ns)
            self.kube.wait_gone("Pod", COPY_POD, ns)  # the claims are free for the workloads

    def _wait_running(self, ns: str, pod: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (self.kube.get("Pod", pod, ns) or {}).get("status", {}).get("phase") != "Running":
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"the pod {pod} did not start within {timeout:.0f} s")
            time.sleep(0.5)

    def _copy(self, source_ns: str, pod: str, container: str, path: str, ns: str, claim: str) -> None:
        # DIPLOI_TEST_ROOT is unset in containers; the test control plane's KWOK, which runs exec
        # commands on its own machine, sets it so that the paths stay inside the tests' folder.
        reading = self.kube.exec(source_ns, pod, container, ["/bin/sh", "-c", f'tar -c -C "${{DIPLOI_TEST_ROOT:-}}{path}" .'], False)
        writing = self.kube.exec(ns, COPY_POD, "copy", ["/bin/sh", "-c", f'tar -x -C "${{DIPLOI_TEST_ROOT:-}}{COPY_ROOT}/{claim}"'], False)
        while data := reading.read():
            writing.write(data)
        problem = b"".join(iter(reading.read_stderr, b"")).decode(errors="replace").strip()
        if reading.close() != 0:
            writing.kill()
            raise RuntimeFailure(f"copying {claim}: reading {path} in {container} failed: {problem or 'no message'}")
        writing.close_stdin()
        problem = b"".join(iter(writing.read_stderr, b"")).decode(errors="replace").strip()
        if writing.close() != 0:
            raise RuntimeFailure(f"copying {claim}: writing it failed: {problem or 'no message'}")


class PodShell:
    """A session in a container through the exec API. Closing an exec stream is not guaranteed to
    end its process (a command without a terminal may keep running), so the session starts by
    writing its PID to a file, and `kill` ends that process and its children with a second exec."""

    def __init__(self, kube: Kube, ns: str, pod: str, container: str, command: str | None, pty: bool) -> None:
        self.kube, self.target = kube, (ns, pod, container)
        self.pidfile = f"/tmp/.diploi-session-{secrets.token_hex(8)}"
        argv = ["/bin/sh", "-c", command] if command else ["/bin/sh", "-i" if pty else "-s"]
        wrapper = f'echo $$ > {self.pidfile} 2> /dev/null; exec "$@"'
        self.stream = kube.exec(ns, pod, container, ["/bin/sh", "-c", wrapper, "diploi-session", *argv], pty)
        self.write, self.close_stdin, self.resize = self.stream.write, self.stream.close_stdin, self.stream.resize
        self.read, self.read_stderr = self.stream.read, self.stream.read_stderr

    def _finish(self, kill: bool) -> None:
        """Forget the PID file; with `kill`, first end the session's process and its children."""
        script = f"rm -f {self.pidfile}"
        if kill:
            script = (f'p=$(cat {self.pidfile}) && for s in /proc/[0-9]*/stat; do read -r c _ _ pp _ < "$s" && [ "$pp" = "$p" ] '
                      f'&& kill -TERM "$c"; done 2> /dev/null; kill -TERM "$p" 2> /dev/null; {script}')  # fmt: skip
        try:
            self.kube.exec(*self.target, ["/bin/sh", "-c", script], False).close()
        except RuntimeFailure:
            log.warning("could not end the session %s in %s", self.pidfile, "/".join(self.target))

    def kill(self) -> None:
        self.stream.kill()
        self._finish(kill=True)

    def close(self) -> int:
        status = self.stream.close()
        self._finish(kill=False)
        return status


def _storage_paths(source: DeploymentSpec, target: DeploymentSpec, service: ServiceSpec) -> list[tuple[str, str]]:
    """(claim, path in the container) of what a clone copies for `service`: its volumes, and the code
    when both are development deployments."""
    found = [(f"{service.identifier}-{v.name}", v.path) for v in service.volumes]
    if service.kind == "component" and source.stage == target.stage == "development":
        found.append((f"{service.identifier}-code", "/code"))
    return found


def _copy_pod(spec: DeploymentSpec, claims: list[str]) -> dict:
    """A pod that only holds the target's claims open for the copy."""
    mounts = [{"name": f"c{i}", "mountPath": f"{COPY_ROOT}/{claim}"} for i, claim in enumerate(claims)]
    volumes = [{"name": f"c{i}", "persistentVolumeClaim": {"claimName": claim}} for i, claim in enumerate(claims)]
    container = {"name": "copy", "image": settings.DIPLOI_K8S_DEFAULT_IMAGE, "command": ["sleep", "3600"], "volumeMounts": mounts}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(spec, COPY_POD),
            "spec": {"containers": [container], "volumes": volumes, "restartPolicy": "Never"}}  # fmt: skip


def _usage(metrics: dict) -> tuple[float, int]:
    """metrics.k8s.io quantities ("12345678n" CPU, "2048Ki" memory) as CPU percent of one core and bytes."""
    cpu = memory = 0.0
    for c in metrics.get("containers", []):
        cpu += _quantity(c["usage"].get("cpu", "0"))
        memory += _quantity(c["usage"].get("memory", "0"))
    return round(cpu * 100, 1), int(memory)


def _quantity(text: str) -> float:
    units = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def _claim_state(claim: dict) -> ItemState:
    name = claim["metadata"]["name"]
    phase = claim.get("status", {}).get("phase", "Pending")
    size = claim["spec"]["resources"]["requests"]["storage"]
    colour = {"Bound": Colour.GREEN, "Lost": Colour.RED}.get(phase, Colour.YELLOW)
    return ItemState(name, colour, f"{phase.lower()}, {size}")


def _container_state(name: str, pods: list[dict], enabled: bool) -> ItemState:
    if not pods:
        return ItemState(name, Colour.PENDING, "stopped") if not enabled else ItemState(name, Colour.YELLOW, "no pod yet")
    pod = pods[0]
    status = pod.get("status", {})
    statuses = status.get("containerStatuses", [])
    restarts = sum(c.get("restartCount", 0) for c in statuses)
    waiting = [c["state"]["waiting"] for c in statuses if "waiting" in c.get("state", {})]
    if pod["metadata"].get("deletionTimestamp"):
        return ItemState(name, Colour.YELLOW, "terminating", restarts)
    if waiting and waiting[0].get("reason") in ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError"):
        return ItemState(name, Colour.RED, f"{waiting[0]['reason']}: {waiting[0].get('message', '')}".rstrip(": "), restarts)
    phase = status.get("phase", "Pending")
    if phase == "Running" and statuses and all(c.get("ready") for c in statuses):
        return ItemState(name, Colour.GREEN, "running", restarts)
    if phase == "Failed":
        return ItemState(name, Colour.RED, status.get("reason", "failed"), restarts)
    return ItemState(name, Colour.YELLOW, phase.lower(), restarts)
