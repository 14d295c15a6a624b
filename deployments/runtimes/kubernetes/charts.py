"""A package's own Kubernetes objects: its Helm templates (`.diploi/helm/`, Diploi's charts) rendered
with the values Diploi's charts read (../helm.py), then wrapped in this platform's tenancy.

The wrapping: only the kinds a deployment may have (workloads, Services, Ingresses, ConfigMaps,
Secrets, claims — no cluster-scoped object, no RBAC, no NetworkPolicy that would open its fence), all
in the deployment's namespace (an object naming another is refused); the deployment's labels on every
object and pod; `hostPath` only where the chart was given one for its storage, and that replaced by the
deployment's claim; containers without privileges; Services reached inside the cluster only;
Diploi's fixed names (the `traefik` class, the `tls-secret` certificate, `diploi-pull-secret`) mapped
to this cluster's.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from deployments.runtimes import hostnames
from deployments.runtimes.base import DeploymentSpec, ServiceSpec
from deployments.runtimes.helm import HOST_PATH, ChartRefused, render

__all__ = ["ChartRefused", "Tenancy", "render", "wrap"]

ALLOWED = {
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("networking.k8s.io/v1", "Ingress"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
}
POD_FIELDS_REFUSED = ("hostNetwork", "hostPID", "hostIPC", "nodeName", "serviceAccountName", "serviceAccount")
DIPLOI_PULL_SECRET = "diploi-pull-secret"
DIPLOI_INGRESS_CLASS = "kubernetes.io/ingress.class"


@dataclass(frozen=True)
class Tenancy:
    """What makes an object the deployment's (manifests.py knows these names)."""

    namespace: str
    labels: dict[str, str]
    claims: dict[str, str]  # storage identifier → the deployment's claim ("code": a development component's code)
    pull_secret: str  # "" when the cluster needs none
    host_label: Callable[[str], str]  # the label that says an Ingress serves a host name
    clone: dict | None = None  # the init container that fills the code claim (its volume named "code")


def wrap(objects: list[dict], spec: DeploymentSpec, service: ServiceSpec, tenancy: Tenancy) -> list[dict]:
    """The rendered objects, checked and made the deployment's (see the module's docstring); the
    first refusal is raised as ChartRefused naming the object and why."""
    namespace, labels = tenancy.namespace, tenancy.labels
    wrapped = []
    for original in objects:
        obj = copy.deepcopy(original)
        kind, api = obj.get("kind"), obj.get("apiVersion")
        meta = obj.setdefault("metadata", {})
        what = f"{service.identifier}: its chart's {kind or 'object'} “{meta.get('name', '?')}”"
        if (api, kind) not in ALLOWED:
            raise ChartRefused(f"{what} is refused: a package may create {', '.join(sorted({k for _, k in ALLOWED}))} only")
        if meta.get("namespace") not in (None, namespace):
            raise ChartRefused(f"{what} is refused: it names the namespace {meta['namespace']}, not the deployment's")
        meta["namespace"] = namespace
        meta["labels"] = {**(meta.get("labels") or {}), **labels}
        if kind == "Service":
            _service(obj, what)
        if kind == "Ingress":
            _ingress(obj, spec, tenancy)
        for pod_meta, pod in _pods(obj):
            pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
            _pod(pod, what, tenancy)
        wrapped.append(obj)
    return wrapped


# What makes a Service reach beyond the cluster's own network: a node's port, a load balancer.
OUTSIDE_FIELDS = (
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "loadBalancerClass",
    "allocateLoadBalancerNodePorts",
)


def _service(obj: dict, what: str) -> None:
    """Reached inside the cluster only: Diploi's add-ons ask for NodePort Services (all four of them),
    which become ClusterIP ones (the deployment's hosts are published by Ingresses, and a tenant may
    not open a port on every node); an address outside the cluster is refused."""
    body = obj.setdefault("spec", {}) or {}
    kind_of = body.get("type", "ClusterIP")
    if kind_of == "ExternalName" or body.get("externalIPs") or body.get("externalName"):
        raise ChartRefused(f"{what} is refused: a Service may not name an address outside the cluster (externalName, externalIPs)")
    if kind_of not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ChartRefused(f"{what} is refused: a Service of type {kind_of}")
    body["type"] = "ClusterIP"
    for name in OUTSIDE_FIELDS:
        body.pop(name, None)
    for port in body.get("ports") or []:
        if isinstance(port, dict):
            port.pop("nodePort", None)
    obj["spec"] = body


def _pods(obj: dict) -> list[tuple[dict, dict]]:
    """The pod templates of a workload: (its metadata, its spec)."""
    spec = obj.get("spec") or {}
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        template = spec.setdefault("template", {})
    elif obj["kind"] == "CronJob":
        template = spec.setdefault("jobTemplate", {}).setdefault("spec", {}).setdefault("template", {})
    else:
        return []
    return [(template.setdefault("metadata", {}), template.setdefault("spec", {}))]


def _pod(pod: dict, what: str, tenancy: Tenancy) -> None:
    claims = tenancy.claims
    for name in POD_FIELDS_REFUSED:
        if pod.get(name):
            raise ChartRefused(f"{what} is refused: its pods set {name}")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            path = str(volume["hostPath"].get("path", ""))
            storage = path.removeprefix(HOST_PATH)
            if not path.startswith(HOST_PATH) or storage not in claims:
                raise ChartRefused(f"{what} is refused: a hostPath volume ({path}) that is not one of its storage.<id>.hostPath")
            volume.pop("hostPath")
            volume["persistentVolumeClaim"] = {"claimName": claims[storage]}
            if storage == "code" and tenancy.clone:
                _cloned(pod, volume["name"], tenancy.clone)
    security = pod.setdefault("securityContext", {}) or {}
    pod["securityContext"] = {**security, "seccompProfile": {"type": "RuntimeDefault"}}
    pod["automountServiceAccountToken"] = False
    pod["enableServiceLinks"] = False
    secrets = [s for s in pod.get("imagePullSecrets") or [] if s.get("name") != DIPLOI_PULL_SECRET]
    if tenancy.pull_secret and len(secrets) != len(pod.get("imagePullSecrets") or []):
        secrets.append({"name": tenancy.pull_secret})
    pod["imagePullSecrets"] = secrets
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        own = container.get("securityContext") or {}
        if own.get("privileged") or (own.get("capabilities") or {}).get("add"):
            raise ChartRefused(f"{what} is refused: its container {container.get('name')} asks for privileges")
        container["securityContext"] = {**own, "allowPrivilegeEscalation": False, "privileged": False}


def _cloned(pod: dict, volume: str, clone: dict) -> None:
    """The branch cloned onto the code claim before anything of the pod runs, as the pod's user (the
    files are then the image's user's, as Diploi's code volumes are); the claim writable by the pod's
    group."""
    security = pod.get("securityContext") or {}
    if "fsGroup" not in security and (group := security.get("runAsGroup", security.get("runAsUser"))) is not None:
        pod["securityContext"] = {**security, "fsGroup": group}
    first = {**clone, "volumeMounts": [{**clone["volumeMounts"][0], "name": volume}]}
    pod["initContainers"] = [first, *(pod.get("initContainers") or [])]


def _ingress(obj: dict, spec: DeploymentSpec, tenancy: Tenancy) -> None:
    """Diploi's fixed Ingress class and certificate name, as this cluster has them; only the
    deployment's own host names (checked again, with every Ingress, before anything is applied)."""
    annotations = obj["metadata"].get("annotations") or {}
    annotations.pop(DIPLOI_INGRESS_CLASS, None)
    if settings.DIPLOI_K8S_CLUSTER_ISSUER:
        annotations["cert-manager.io/cluster-issuer"] = settings.DIPLOI_K8S_CLUSTER_ISSUER
    obj["metadata"]["annotations"] = annotations
    body = obj.setdefault("spec", {})
    body.pop("ingressClassName", None)
    if settings.DIPLOI_K8S_INGRESS_CLASS:
        body["ingressClassName"] = settings.DIPLOI_K8S_INGRESS_CLASS
    name = obj["metadata"].get("name", "ingress")
    for tls in body.get("tls") or []:
        tls["secretName"] = f"{name}-tls"
    own = {e.host for e in hostnames.endpoints(spec)} | set(spec.hosts)
    for rule in body.get("rules") or []:
        if rule.get("host") not in own:
            raise ChartRefused(f"its chart's Ingress “{name}” is refused: the host {rule.get('host')!r} is not one of the deployment's")
        obj["metadata"]["labels"][tenancy.host_label(rule["host"])] = "1"
