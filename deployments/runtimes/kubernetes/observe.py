"""A deployment's status items from the objects the cluster lists (pods, claims, workloads, metrics),
and `trim`, which keeps of an object only what these read (what the monitor's cache holds)."""

import sys
from dataclasses import replace

from deployments.runtimes.base import Colour, DeploymentSpec, ItemState, Observation
from deployments.runtimes.kubernetes.manifests import COMPONENT, DEPLOYMENT_ID, VOLUME

OBSERVED_KINDS = ("Pod", "PersistentVolumeClaim", "StatefulSet", "Deployment")


def trim(kind: str, obj: dict) -> dict:
    """`obj` with only the fields `observation` reads, in the same shape; the strings that repeat from
    object to object (label values, phases, reasons) are interned, held once."""
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    kept_meta: dict = {
        "name": meta.get("name", ""),
        "namespace": sys.intern(meta.get("namespace", "")),
        "labels": {sys.intern(k): sys.intern(v) for k, v in labels.items() if k in (COMPONENT, DEPLOYMENT_ID, VOLUME)},
    }
    if meta.get("deletionTimestamp"):
        kept_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    status = obj.get("status") or {}
    if kind == "Pod":
        kept_status: dict = {"phase": sys.intern(status.get("phase", "Pending"))}
        if status.get("reason"):
            kept_status["reason"] = sys.intern(status["reason"])
        kept_status["containerStatuses"] = [_container(c) for c in status.get("containerStatuses") or []]
        return {"metadata": kept_meta, "status": kept_status}
    if kind == "PersistentVolumeClaim":
        size = ((obj.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "")
        claim_status = {"phase": sys.intern(status["phase"])} if status.get("phase") else {}
        return {"metadata": kept_meta, "spec": {"resources": {"requests": {"storage": sys.intern(size)}}}, "status": claim_status}
    return {"metadata": kept_meta, "status": {"readyReplicas": status.get("readyReplicas", 0)}}  # a workload


def _container(found: dict) -> dict:
    kept: dict = {"name": sys.intern(found.get("name", "")), "ready": bool(found.get("ready"))}
    kept["restartCount"] = found.get("restartCount", 0)
    waiting = (found.get("state") or {}).get("waiting")
    kept["state"] = {"waiting": {"reason": sys.intern(waiting.get("reason", "")), "message": waiting.get("message", "")}} if waiting else {}
    return kept


def observation(spec: DeploymentSpec, objects: dict[str, list[dict]], usage: dict | None) -> Observation:
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


def usage_by_pod(metrics: list[dict] | None) -> dict | None:
    """metrics.k8s.io's pod list as (namespace, pod) → usage_of; None when the cluster does not serve it."""
    return None if metrics is None else {(m["metadata"]["namespace"], m["metadata"]["name"]): usage_of(m) for m in metrics}


def usage_of(metrics: dict) -> tuple[float, int]:
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
    """Named `<component>/<volume>` (as on the local runtime), from the claim's labels."""
    found = claim["metadata"]["labels"]
    name = f"{found.get(COMPONENT, '?')}/{found.get(VOLUME, claim['metadata']['name'])}"
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
