"""A package that is only an image and a chart (Diploi's MariaDB, MongoDB, MinIO and Elasticsearch
add-ons) on this machine: its Helm templates rendered with the values Diploi's charts read (helm.py),
and the one container of its one workload run with podman, as the deployment, like a component built
from its Dockerfile (containers.py) — its image (pulled with the project's registry logins when this
machine does not have it), command, arguments, environment and working directory as the chart says;
each storage the chart mounts (`storage.<id>.hostPath`) is the deployment's volume at the same path in
the container; each port of the chart's Services is published on a port of this machine.

The names other services are told are Kubernetes' (`mariadb.${DIPLOI_NAMESPACE}`, the Service's port):
in the package's exports, `<service>.{namespace}` becomes this machine's address and the Service's port
its published one, so a component's MARIADB_HOST and MARIADB_PORT (and connection strings built of
them) reach the container here as they reach the pod there.

What a chart asks that one container cannot be — several workloads or containers, init containers,
values from Secrets or other kinds of volumes — is said as the service's problem (it runs on the
Kubernetes runtime); a chart the platform would refuse there is refused here too.
"""

import re
import shutil
from dataclasses import replace

from django.conf import settings

from deployments.runtimes.base import DeploymentSpec, ImageRun, PortSpec, ServiceSpec, VolumeSpec
from deployments.runtimes.helm import HOST_PATH, ChartRefused, render
from deployments.runtimes.local import containers, programs
from deployments.runtimes.placeholders import render as fill

WORKLOADS = ("Deployment", "StatefulSet")
KUBERNETES_SUFFIX = ".svc.cluster.local"


class Unsupported(Exception):
    """What of a chart one container on this machine cannot be."""


def charted(service: ServiceSpec) -> bool:
    """Whether the package is only an image and a chart here: a chart, no recipe, no Dockerfile."""
    return bool(service.chart) and not service.commands and not service.container


def specialise(spec: DeploymentSpec) -> DeploymentSpec:
    """The spec with each such package as its container (ImageRun), or with why it cannot be one."""
    if not any(charted(s) for s in spec.services):
        return spec
    return replace(spec, services=tuple(_as_container(spec, s) if charted(s) else s for s in spec.services))


def helm_installed() -> bool:
    return shutil.which(settings.DIPLOI_HELM) is not None


def _as_container(spec: DeploymentSpec, service: ServiceSpec) -> ServiceSpec:
    if not helm_installed():
        why = f"{service.identifier}: its package is an image and a Helm chart, and Helm, which reads the chart, is not installed"
        return replace(service, image_run=ImageRun(problem=f"{why} (DIPLOI_HELM={settings.DIPLOI_HELM})"))
    ns = programs.namespace(spec)
    own = {"namespace": ns, "identifier": service.identifier, "deployment": spec.slug, "stage": spec.stage, "password": service.password}
    env = {name: fill(value, own) for name, value in service.exports.items()} | service.env
    try:
        objects = render(spec, service, env, ns)
        return _read(service, objects)
    except (ChartRefused, Unsupported) as e:
        return replace(service, image_run=ImageRun(problem=str(e)))


def _read(service: ServiceSpec, objects: list[dict]) -> ServiceSpec:
    what = f"{service.identifier}: its chart"
    workloads = [o for o in objects if o.get("kind") in WORKLOADS]
    if len(workloads) != 1:
        raise Unsupported(f"{what} runs {len(workloads)} workloads; one container per package runs on this machine")
    pod = ((workloads[0].get("spec") or {}).get("template") or {}).get("spec") or {}
    in_pod = pod.get("containers") or []
    if len(in_pod) != 1 or pod.get("initContainers"):
        inits = len(pod.get("initContainers") or [])
        raise Unsupported(f"{what}'s pod has {len(in_pod)} containers and {inits} init containers; one container runs here")
    container = in_pod[0]
    volumes = _mounts(container, pod, service, what)
    ports = _ports(objects, container, what)
    exports = {name: _addressed(value, ports) for name, value in service.exports.items()}
    image_run = ImageRun(
        image=_text(container.get("image"), "image", what),
        entrypoint=tuple(_text(a, "command", what) for a in container.get("command") or []),
        args=tuple(_text(a, "args", what) for a in container.get("args") or []),
        env=_env(container, what),
        workdir=str(container.get("workingDir") or ""),
    )
    if not image_run.image:
        raise Unsupported(f"{what}'s container names no image")
    if why := containers.registry_problem(image_run.image):
        raise Unsupported(f"{what}'s container: {why}")
    port_specs = tuple(PortSpec(name, inside, protocol="tcp") for _, name, _, inside in ports)
    return replace(service, ports=port_specs, volumes=volumes, exports=exports, image_run=image_run, image=image_run.image)


def _text(value: object, field: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Unsupported(f"{what}'s container has a {field} that is not text")
    return str(value)


def _env(container: dict, what: str) -> tuple[tuple[str, str], ...]:
    if container.get("envFrom"):
        raise Unsupported(f"{what}'s container takes its environment from other objects (envFrom)")
    env = []
    for item in container.get("env") or []:
        if not isinstance(item, dict) or "valueFrom" in item or not isinstance(item.get("name"), str):
            raise Unsupported(f"{what}'s container takes a variable from another object (valueFrom)")
        env.append((item["name"], "" if item.get("value") is None else _text(item["value"], "variable", what)))
    return tuple(env)


def _mounts(container: dict, pod: dict, service: ServiceSpec, what: str) -> tuple[VolumeSpec, ...]:
    """Each storage the container mounts, at its path there; nothing else."""
    by_name = {v.get("name"): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
    sizes = {v.name: v.size for v in service.volumes}
    found = []
    for mount in container.get("volumeMounts") or []:
        volume = by_name.get(mount.get("name")) or {}
        path = str((volume.get("hostPath") or {}).get("path", ""))
        storage = path.removeprefix(HOST_PATH)
        if not path.startswith(HOST_PATH) or storage not in sizes:
            raise Unsupported(f"{what} mounts {mount.get('mountPath')}, which is not one of its storage.<id>.hostPath")
        if mount.get("subPath") or mount.get("readOnly"):
            raise Unsupported(f"{what} mounts a part of its storage (subPath, readOnly)")
        found.append(VolumeSpec(storage, str(mount.get("mountPath")), sizes[storage]))
    return tuple(found)


def _ports(objects: list[dict], container: dict, what: str) -> list[tuple[str, str, int, int]]:
    """(Service, port name, Service port, container port) for each port of the chart's Services."""
    named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or [] if isinstance(p, dict)}
    found: list[tuple[str, str, int, int]] = []
    for obj in objects:
        if obj.get("kind") != "Service":
            continue
        service_name = str((obj.get("metadata") or {}).get("name", ""))
        for port in (obj.get("spec") or {}).get("ports") or []:
            number, target = port.get("port"), port.get("targetPort", port.get("port"))
            target = named.get(target, target) if isinstance(target, str) else target
            if not isinstance(number, int) or not isinstance(target, int):
                raise Unsupported(f"{what}'s Service {service_name} has a port that is not a number")
            name = re.sub(r"[^a-z0-9-]", "-", str(port.get("name") or f"{service_name}-{number}").lower())
            if any(name == n for _, n, _, _ in found):
                name = f"{service_name}-{name}"
            found.append((service_name, name, number, target))
    return found


def _addressed(template: str, ports: list[tuple[str, str, int, int]]) -> str:
    """A value the package gives others, its Kubernetes addresses made this machine's."""
    for service_name, name, number, _ in ports:
        for host in (f"{service_name}.{{namespace}}{KUBERNETES_SUFFIX}", f"{service_name}.{{namespace}}"):
            template = template.replace(f"{host}:{number}", f"{{host}}:{{port.{name}}}")
    for service_name, *_ in ports:
        for host in (f"{service_name}.{{namespace}}{KUBERNETES_SUFFIX}", f"{service_name}.{{namespace}}"):
            template = template.replace(host, "{host}")
    for _, name, number, _ in ports:
        if template.strip() == str(number):
            return f"{{port.{name}}}"
    return template
