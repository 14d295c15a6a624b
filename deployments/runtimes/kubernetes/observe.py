"""A deployment's status items from the objects the cluster lists (pods, claims, workloads, metrics)."""

from dataclasses import replace

from deployments.runtimes.base import Colour, DeploymentSpec, ItemState, Observation
from deployments.runtimes.kubernetes.manifests import COMPONENT, VOLUME


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
