"""What a deployment is on Kubernetes, as plain manifests (pure: tests validate them offline).

Mapping: env and parameters in one Secret per service (its checksum in the pod template, so a change
rolls the workload); storage as PersistentVolumeClaims; add-ons and development components as
StatefulSets (development: the branch cloned onto a claim by an init container, then the package's
development command); staging/production components as Deployments of the built image; a Service
per service; one Ingress per deployment (its host names, hostnames.py, plus custom domains,
TLS by cert-manager's cluster issuer). Every object carries the managed-by, project, deployment and
component labels, so observation lists and watches them across all namespaces by one selector; the
Ingress also carries a label per host name (host_label), by which a new host name is checked free.
"""

import base64
import hashlib
import json
import posixpath
import re

from django.conf import settings

from deployments.runtimes import hostnames
from deployments.runtimes.base import DeploymentSpec, ServiceSpec, imported_env, port_names
from deployments.runtimes.kubernetes import charts
from deployments.runtimes.placeholders import render

MANAGED = "app.kubernetes.io/managed-by"
HOST_LABEL = "host.diploi.io/"  # + a digest of a host name the Ingress serves: found by label, not by listing all
VOLUME = "diploi.io/volume"
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
UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm-slim"  # (the Python recipes install with uv, as Diploi's components)
NODE_IMAGE = "node:22-slim"
IMAGES = {
    **dict.fromkeys(("python", "fastapi", "flask", "django", "static"), UV_IMAGE),
    **dict.fromkeys(("node", "react-vite", "astro", "sveltekit"), NODE_IMAGE),
    "redis": "valkey/valkey:8",
    "postgres": "postgres:16",
}
COPY_POD, COPY_ROOT = "diploi-copy", "/copy"


def has_code(spec: DeploymentSpec, service: ServiceSpec) -> bool:
    """Whether the component works on its code, cloned onto a claim of its own: in development, one
    that is built, or that is a package's chart (Diploi's charts mount `storage.code` at /app)."""
    return spec.stage == "development" and service.kind == "component" and (service.built or bool(service.chart))


def code_root(service: ServiceSpec) -> str:
    """Where a development component's code is: a container built from its Dockerfile, or a package's
    chart, finds it where Diploi's images expect it (/app), a recipe's image at /code."""
    return "/app" if service.container or service.chart else "/code"


def namespace(spec: DeploymentSpec) -> str:
    """From the deployment's id alone: two deployments never share one, whatever their names."""
    return f"diploi-d{spec.id}"


def claim_name(service: ServiceSpec, volume: str) -> str:
    """`data.<component>.<volume>`; dots cannot occur in identifiers or volume names, so no two meet."""
    return f"data.{service.identifier}.{volume}"


def code_claim(service: ServiceSpec) -> str:
    return f"code.{service.identifier}"


def env_secret(service: ServiceSpec) -> str:
    return f"env.{service.identifier}"


def labels(spec: DeploymentSpec, service: ServiceSpec | None = None) -> dict[str, str]:
    found = {MANAGED: "diploi", PROJECT: spec.project_slug, DEPLOYMENT: spec.slug, DEPLOYMENT_ID: str(spec.id)}
    if service is not None:
        found[COMPONENT] = service.identifier
    return found


def _meta(spec: DeploymentSpec, name: str, service: ServiceSpec | None = None, namespaced: bool = True) -> dict:
    meta = {"name": name, "labels": labels(spec, service)}
    if namespaced:
        meta["namespace"] = namespace(spec)
    return meta


def placeholder_values(spec: DeploymentSpec, service: ServiceSpec) -> dict[str, str]:
    """Placeholder values inside the cluster: services reach each other by their Service's name."""
    ctx = {
        "host": service.identifier,
        "port": str(service.ports[0].port) if service.ports else "",
        "password": service.password,
        "code": f"{code_root(service)}/{service.folder}".rstrip("/") if service.kind == "component" else "",
        "identifier": service.identifier,
        "deployment": spec.slug,
        "stage": spec.stage,
        "namespace": namespace(spec),
    }
    ctx.update({f"port.{p.name}": str(p.port) for p in service.ports})
    ctx.update({f"storage.{v.name}": v.path for v in service.volumes})
    ctx.update({f"endpoint.{name}": url for (svc, name), url in hostnames.port_urls(spec).items() if svc == service.identifier})
    return ctx


def environment(spec: DeploymentSpec, service: ServiceSpec) -> dict[str, str]:
    env = {"HOST": "0.0.0.0", "PYTHONUNBUFFERED": "1", "DIPLOI_STAGE": spec.stage, "DIPLOI_COMMIT": spec.commit}
    if service.ports:
        env["PORT"] = str(service.ports[0].port)
    env.update(port_names({p.name: p.port for p in service.ports}))
    own = placeholder_values(spec, service)
    env.update({name: render(value, own) for name, value in service.exports.items()})  # its own parameters
    env.update(service.env)  # literal values, as the local runtime sets them
    env.update(imported_env(spec, service, lambda source: placeholder_values(spec, source)))
    return env


DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def pushed_image(spec: DeploymentSpec, service: ServiceSpec) -> str:
    """Where the builder pushes a component's image (`<registry>/<project>/<component>`: project slugs
    are unique, so no two projects share one), without tag or digest."""
    return f"{settings.DIPLOI_K8S_REGISTRY}/{spec.project_slug}/{service.identifier}"


PULL_SECRET, PUSH_SECRET = "registry-pull", "registry-push"


def registry_secret(spec: DeploymentSpec, name: str, auths: dict[str, str]) -> dict:
    """A docker config with a "user:password" (or token) per registry host."""
    config = {"auths": {host: {"auth": base64.b64encode(auth.encode()).decode()} for host, auth in sorted(auths.items())}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(spec, name),
        "type": "kubernetes.io/dockerconfigjson",
        "data": _encoded({".dockerconfigjson": json.dumps(config)}),
    }


def _auths(platform: str, spec: DeploymentSpec) -> dict[str, str]:
    """The platform's registry with `platform` ("user:password", "" for none), and the project's own logins."""
    auths = {settings.DIPLOI_K8S_REGISTRY.split("/", 1)[0]: platform} if platform else {}
    return auths | {host: f"{user}:{password}" for host, user, password in spec.registries}


def pull_auths(spec: DeploymentSpec) -> dict[str, str]:
    """What the deployment's pods pull with: the platform's registry (where its components' images are
    built; DIPLOI_K8S_REGISTRY_PULL_AUTH) and the project's own registry logins."""
    # (a development deployment runs nothing of the platform's registry but images built from a Dockerfile)
    platform = spec.stage != "development" or any(s.container for s in spec.services)
    return _auths(settings.DIPLOI_K8S_REGISTRY_PULL_AUTH if platform else "", spec)


def push_auths(spec: DeploymentSpec) -> dict[str, str]:
    """What a build Job pushes and pulls (its base images) with: DIPLOI_K8S_REGISTRY_PUSH_AUTH and the
    project's registry logins."""
    return _auths(settings.DIPLOI_K8S_REGISTRY_PUSH_AUTH, spec)


def _encoded(values: dict[str, str]) -> dict[str, str]:
    """A Secret's `data`. Not `stringData`: the API server folds that into `data` without recording who
    set each key, so server-side apply would never remove a key dropped from it (an env var removed)."""
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def _image(spec: DeploymentSpec, service: ServiceSpec) -> str:
    """A built component runs its release's image, pinned by digest (what the build or CI recorded);
    a package that gives only an image runs that image."""
    if not service.commands and not service.container and service.image:
        return service.image
    if service.built and (spec.stage != "development" or service.container):
        return spec.image(service.identifier) or f"{pushed_image(spec, service)}:{spec.release or spec.commit}"
    return IMAGES.get(service.package, settings.DIPLOI_K8S_DEFAULT_IMAGE)


def workload_kind(spec: DeploymentSpec, service: ServiceSpec) -> str:
    """Add-ons and development components keep their state (StatefulSet); built components are Deployments."""
    return "StatefulSet" if service.kind == "addon" or spec.stage == "development" else "Deployment"


# The user each image runs as: the add-on images' own (their data belongs to it), and an unprivileged
# uid without a name for the language images (which would otherwise run as root).
RUN_AS = {"postgres": 999, "redis": 999}
UNPRIVILEGED_UID = 10001


def pod_security(uid: int) -> dict:
    """Pod-level: never root, the runtime's default seccomp profile, claims writable by the group."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
BUILDER_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETFCAP"]
# The clone's copy helper extracts each claim's files keeping their owners (PostgreSQL refuses a data
# directory that is not its own): root, with only the capabilities tar needs for that.
COPY_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]

# A development component's code, cloned by an init container. The branch and repository are the
# script's arguments, never part of its text.
CLONE_SCRIPT = '[ -d "$3/.git" ] || exec git clone --branch "$1" -- "$2" "$3"'


def clone_command(spec: DeploymentSpec, target: str = "/code") -> list[str]:
    return ["/bin/sh", "-c", CLONE_SCRIPT, "clone", spec.branch, spec.repository, target]


def _clone_container(spec: DeploymentSpec, target: str) -> dict:
    """The init container that clones the branch onto the code claim (mounted as volume "code")."""
    requests, limits = SIZES[settings.DIPLOI_K8S_SIZE]
    return {
        "name": "clone",
        "image": settings.DIPLOI_K8S_GIT_IMAGE,
        "command": clone_command(spec, target),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": "code", "mountPath": target}],
        "securityContext": CONTAINER_SECURITY,
    }


def _workload(spec: DeploymentSpec, service: ServiceSpec, env: dict[str, str]) -> dict:
    development = service.built and spec.stage == "development"
    command_name = "development" if development and "development" in service.commands else "start"
    command = render(service.commands.get(command_name, ""), placeholder_values(spec, service), quote=True)
    requests, limits = SIZES[settings.DIPLOI_K8S_SIZE]
    mounts = [{"name": v.name, "mountPath": v.path} for v in service.volumes]
    volumes = [{"name": v.name, "persistentVolumeClaim": {"claimName": claim_name(service, v.name)}} for v in service.volumes]
    container = {
        "name": service.identifier,
        "image": _image(spec, service),
        **({"command": ["/bin/sh", "-c", command]} if command else {}),  # else the image's own
        "envFrom": [{"secretRef": {"name": env_secret(service)}}],
        "ports": [{"name": p.name[:15], "containerPort": p.port} for p in service.ports],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY,
    }
    pod: dict = {
        "containers": [container],
        "volumes": volumes,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(RUN_AS.get(service.package, UNPRIVILEGED_UID)),
    }
    if pull_auths(spec) and (spec.registries or (service.built and (not development or service.container))):
        pod["imagePullSecrets"] = [{"name": PULL_SECRET}]
    if development:
        root = code_root(service)
        container["workingDir"] = placeholder_values(spec, service)["code"]
        mounts.append({"name": "code", "mountPath": root})
        volumes.append({"name": "code", "persistentVolumeClaim": {"claimName": code_claim(service)}})
        pod["initContainers"] = [_clone_container(spec, root)]
        if service.container and (install := render(service.commands.get("install", ""), placeholder_values(spec, service), quote=True)):
            # the package's install step, in the component's own image, on its code (Diploi's
            # charts' install-dependencies)
            pod["initContainers"].append(
                {k: v for k, v in container.items() if k != "ports"} | {"name": "install", "command": ["/bin/sh", "-c", install]}
            )
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


def _claim(spec: DeploymentSpec, service: ServiceSpec, name: str, size: str, volume: str) -> dict:
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if settings.DIPLOI_K8S_STORAGE_CLASS:
        claim["storageClassName"] = settings.DIPLOI_K8S_STORAGE_CLASS
    meta = _meta(spec, name, service)
    meta["labels"][VOLUME] = volume
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": claim}


def _service(spec: DeploymentSpec, service: ServiceSpec) -> dict:
    """The component's name inside the namespace. A StatefulSet's is headless (the name resolves to its
    pod, as a StatefulSet's governing Service should): no cluster IP to allocate, which costs the API
    server a scan of every allocated address per Service created (MultiCIDRServiceAllocator, 1.33+).
    A Deployment's keeps a virtual IP, which stays put while a release replaces its pods."""
    ports = [{"name": p.name[:15], "port": p.port, "targetPort": p.port, "protocol": "TCP"} for p in service.ports]
    service_spec: dict = {"selector": {DEPLOYMENT_ID: str(spec.id), COMPONENT: service.identifier}, "ports": ports}
    if workload_kind(spec, service) == "StatefulSet":
        service_spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(spec, service.identifier, service), "spec": service_spec}


def host_label(host: str) -> str:
    return HOST_LABEL + hashlib.sha256(host.encode()).hexdigest()[:40]


def _ingress(spec: DeploymentSpec) -> dict:
    """Every public port by its host name (hostnames.py, as on the local runtime); the verified custom
    domains serve what the deployment's own host serves."""
    found = [e for e in hostnames.endpoints(spec) if not from_chart(spec.service(e.service))]  # a chart routes its own
    routes = [(e.host, e.service, next(p.port for p in spec.service(e.service).ports if p.name == e.port)) for e in found]
    routes += [(h, routes[0][1], routes[0][2]) for h in spec.hosts]
    meta = _meta(spec, "web")
    meta["labels"].update({host_label(h): "1" for h, _, _ in routes})
    if settings.DIPLOI_K8S_CLUSTER_ISSUER:
        meta["annotations"] = {"cert-manager.io/cluster-issuer": settings.DIPLOI_K8S_CLUSTER_ISSUER}
    rules = [
        {"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": n}}}}]}}
        for h, svc, n in routes
    ]
    ingress: dict = {"rules": rules, "tls": [{"hosts": [h for h, _, _ in routes], "secretName": "web-tls"}]}
    if settings.DIPLOI_K8S_INGRESS_CLASS:
        ingress["ingressClassName"] = settings.DIPLOI_K8S_INGRESS_CLASS
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": ingress}


def manifests(spec: DeploymentSpec) -> list[dict]:
    """Everything the deployment consists of, in the order it is applied."""
    objects = fence(spec)
    if auths := pull_auths(spec):
        objects.append(registry_secret(spec, PULL_SECRET, auths))
    for service in spec.services:
        env = environment(spec, service)
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _meta(spec, env_secret(service), service),
                "type": "Opaque",
                "data": _encoded(env),
            }
        )
        objects += [_claim(spec, service, claim_name(service, v.name), v.size, v.name) for v in service.volumes]
        if has_code(spec, service):
            objects.append(_claim(spec, service, code_claim(service), settings.DIPLOI_K8S_CODE_SIZE, "code"))
        if from_chart(service):
            objects += chart_objects(spec, service, env)
            continue
        if service.ports:
            objects.append(_service(spec, service))
        objects.append(_workload(spec, service, env))
    if any(not from_chart(s) for s in spec.public_components):
        objects.append(_ingress(spec))
    return objects


def from_chart(service: ServiceSpec) -> bool:
    """A package with a chart and no commands of ours is its chart's objects (charts.py)."""
    return bool(service.chart) and not service.commands


def chart_objects(spec: DeploymentSpec, service: ServiceSpec, env: dict[str, str]) -> list[dict]:
    ns = namespace(spec)
    code = has_code(spec, service)
    tenancy = charts.Tenancy(
        namespace=ns,
        labels=labels(spec, service),
        claims={v.name: claim_name(service, v.name) for v in service.volumes} | ({"code": code_claim(service)} if code else {}),
        clone=_clone_container(spec, "/app") if code else None,
        pull_secret=PULL_SECRET if pull_auths(spec) else "",
        host_label=host_label,
    )
    return charts.wrap(charts.render(spec, service, env, ns, code), spec, service, tenancy)


def fence(spec: DeploymentSpec) -> list[dict]:
    """The namespace and what keeps it to itself: applied first, by builds and clones' copies too. The
    API server itself refuses privileged pods, host namespaces and hostPath in it (Pod Security
    "baseline"), whatever a package's chart says."""
    meta = _meta(spec, namespace(spec), namespaced=False)
    meta["labels"].update({"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "latest"})
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": meta}, *boundary(spec)]


def _cidr_rule(everything: str, blocked: list[str]) -> dict:
    return {"to": [{"ipBlock": {"cidr": everything, **({"except": blocked} if blocked else {})}}]}


def boundary(spec: DeploymentSpec) -> list[dict]:
    """What keeps the namespace's pods to themselves: traffic denied but for what a deployment needs,
    and a quota with per-container defaults sized from DIPLOI_K8S_SIZE."""
    public_ports = sorted({p.port for s in spec.public_components for p in s.ports if p.public})
    blocked = [c for c in settings.DIPLOI_K8S_BLOCKED_CIDRS if c]
    dns = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.DIPLOI_K8S_DNS_NAMESPACE}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    ingress: list[dict] = [{"from": [{"podSelector": {}}]}]  # its own pods
    if public_ports:
        ingress_namespace = {"kubernetes.io/metadata.name": settings.DIPLOI_K8S_INGRESS_NAMESPACE}
        ingress.append(
            {
                "from": [{"namespaceSelector": {"matchLabels": ingress_namespace}}],
                "ports": [{"protocol": "TCP", "port": p} for p in public_ports],
            }
        )
    egress = [
        {"to": [{"podSelector": {}}]},
        dns,
        _cidr_rule("0.0.0.0/0", [c for c in blocked if ":" not in c]),
        _cidr_rule("::/0", [c for c in blocked if ":" in c]),
        *(_cidr_rule(c, []) for c in settings.DIPLOI_K8S_ALLOWED_CIDRS if c),
    ]
    requests, limits = SIZES[settings.DIPLOI_K8S_SIZE]
    # Room for every workload twice (a rolling update's new pod beside the old) and one helper (a
    # build Job per component, a clone's copy pod).
    pods = 2 * len(spec.services) + max(1, sum(1 for s in spec.services if s.kind == "component"))
    storage_bytes = sum(_bytes(v.size) for s in spec.services for v in s.volumes)
    storage_bytes += sum(_bytes(settings.DIPLOI_K8S_CODE_SIZE) for s in spec.services if s.kind == "component")
    quota = {
        "pods": str(pods),
        "requests.cpu": _times(requests["cpu"], pods),
        "requests.memory": _times(requests["memory"], pods),
        "limits.cpu": _times(limits["cpu"], pods),
        "limits.memory": _times(limits["memory"], pods),
        "requests.storage": f"{storage_bytes // 1024**2}Mi",
        "persistentvolumeclaims": str(sum(len(s.volumes) + 1 for s in spec.services)),
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }
    limit_range = {"limits": [{"type": "Container", "default": limits, "defaultRequest": requests, "max": limits}]}
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(spec, "default-deny"),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(spec, "allow"),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress},
        },
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": _meta(spec, "quota"), "spec": {"hard": quota}},
        {"apiVersion": "v1", "kind": "LimitRange", "metadata": _meta(spec, "limits"), "spec": limit_range},
    ]


_UNITS = {"Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def _bytes(size: str) -> int:
    return int(size[:-2]) * _UNITS[size[-2:]]


def _times(quantity: str, n: int) -> str:
    """A CPU ("500m", "2") or memory ("512Mi", "1Gi") quantity times n."""
    if quantity.endswith("m"):
        return f"{int(quantity[:-1]) * n}m"
    if quantity[-2:] in _UNITS:
        return f"{int(quantity[:-2]) * n}{quantity[-2:]}"
    return str(int(quantity) * n)


def build_name(spec: DeploymentSpec, service: ServiceSpec) -> str:
    return f"build-{spec.commit[:12]}-{service.identifier}"[:63].rstrip("-")


def build_manifests(spec: DeploymentSpec, service: ServiceSpec, dockerfile: str = "") -> list[dict]:
    """The Job that builds the component's image and pushes it: from `dockerfile` in the component's
    folder (a package's local.container), else from a Dockerfile generated here (the package's image,
    the code, its install and build commands; in a ConfigMap beside the Job)."""
    name = build_name(spec, service)
    repository = spec.repository.split("://", 1)[-1]
    args = [f"--context=git://{repository}#refs/heads/{spec.branch}#{spec.commit}"]
    objects = []
    volumes: list[dict] = []
    mounts: list[dict] = []
    if dockerfile:
        inside = "" if service.folder in ("", ".") else service.folder
        if service.context_root:  # Diploi's components: the repository is the context, FOLDER where it is in it
            app = f"/app/{inside}" if inside else "/app"
            args += [f"--dockerfile={posixpath.join(inside, dockerfile)}", f"--build-arg=FOLDER={app}"]
        else:
            args += [f"--context-sub-path={inside}"] if inside else []
            args.append(f"--dockerfile={dockerfile}")
    else:
        ctx = placeholder_values(spec, service)
        steps = [render(service.commands[step], ctx) for step in ("install", "build") if service.commands.get(step)]
        folder = f"/code/{service.folder}".rstrip("/")
        generated = "\n".join(
            [
                f"FROM {IMAGES.get(service.package, settings.DIPLOI_K8S_DEFAULT_IMAGE)}",
                "COPY . /code/",
                f"WORKDIR {folder}",
                *(f"RUN {step}" for step in steps),
                "",
            ]
        )
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(spec, name, service), "data": {"Dockerfile": generated}})
        args.append("--dockerfile=/build/Dockerfile")
        volumes.append({"name": "dockerfile", "configMap": {"name": name}})
        mounts.append({"name": "dockerfile", "mountPath": "/build"})
    tag = f"dev-{spec.commit}" if spec.stage == "development" else spec.commit
    args += [
        f"--destination={pushed_image(spec, service)}:{tag}",
        "--digest-file=/dev/termination-log",  # the runtime pins the workloads to it
    ]
    container = {
        "name": "build",
        "image": settings.DIPLOI_K8S_BUILDER_IMAGE,
        "args": args,
        "volumeMounts": mounts,
        # The one container that runs as root: the builder unpacks the base image's files with their
        # owners and runs the package's install/build steps as the image's user would. It gets the
        # capabilities that needs, and no more.
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": BUILDER_CAPABILITIES}},
    }
    if auths := push_auths(spec):  # only the builder can push
        objects.insert(0, registry_secret(spec, PUSH_SECRET, auths))
        items = [{"key": ".dockerconfigjson", "path": "config.json"}]
        volumes.append({"name": "push", "secret": {"secretName": PUSH_SECRET, "items": items}})
        mounts.append({"name": "push", "mountPath": "/kaniko/.docker", "readOnly": True})
    pod = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    job = {"backoffLimit": 0, "ttlSecondsAfterFinished": 3600, "template": {"metadata": {"labels": labels(spec, service)}, "spec": pod}}
    return [*objects, {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(spec, name, service), "spec": job}]


def storage_paths(source: DeploymentSpec, target: DeploymentSpec, service: ServiceSpec) -> list[tuple[str, str]]:
    """(claim, path in the container) of what a clone copies for `service`: its volumes, and the code
    when both are development deployments."""
    found = [(claim_name(service, v.name), v.path) for v in service.volumes]
    if has_code(source, service) and target.stage == "development":
        found.append((code_claim(service), code_root(service)))
    return found


def copy_pod(spec: DeploymentSpec, claims: list[str]) -> dict:
    """A pod that only holds the target's claims open for the copy."""
    mounts = [{"name": f"c{i}", "mountPath": f"{COPY_ROOT}/{claim}"} for i, claim in enumerate(claims)]
    volumes = [{"name": f"c{i}", "persistentVolumeClaim": {"claimName": claim}} for i, claim in enumerate(claims)]
    container = {
        "name": "copy",
        "image": settings.DIPLOI_K8S_DEFAULT_IMAGE,
        "command": ["sleep", "3600"],
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": COPY_CAPABILITIES}},
    }
    pod = {
        "containers": [container],
        "volumes": volumes,
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(spec, COPY_POD), "spec": pod}


# A clone's copy: tar out of the source's container, into the helper. The path is the script's
# argument, never part of its text. DIPLOI_TEST_ROOT is unset in containers; the test control plane's
# KWOK, which runs exec commands on its own machine, sets it so that the paths stay in the tests' folder.
COPY_SCRIPTS = {"read": 'exec tar -c -C "${DIPLOI_TEST_ROOT:-}$1" .', "write": 'exec tar -x -C "${DIPLOI_TEST_ROOT:-}$1"'}


def copy_command(direction: str, path: str) -> list[str]:
    return ["/bin/sh", "-c", COPY_SCRIPTS[direction], "copy", path]
