"""The Kubernetes runtime: the same stack files, as objects in one namespace per deployment.

`manifests.manifests(spec)` is what `apply` sends with server-side apply: in stages (the namespace,
its fence, then the rest), each stage's objects in parallel, and only the objects whose digest differs
from the one the namespace recorded when they were applied last. The process that calls `watch` (the
monitor) keeps an informer (informer.py) and `observe` reads it without asking the API; elsewhere
`observe` lists. Logs, shells and port-forwards go through the pod API (client.py).
"""

import functools
import hashlib
import json
import logging
import posixpath
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from django.conf import settings

import gitsafe
from deployments.runtimes import hostnames
from deployments.runtimes.base import (
    BuildFailed,
    CodeState,
    Colour,
    Confinement,
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
)
from deployments.runtimes.kubernetes.client import Kube, KubeError, KubeUnavailable
from deployments.runtimes.kubernetes.informer import Informer
from deployments.runtimes.kubernetes.manifests import (
    COMPONENT,
    COPY_POD,
    COPY_ROOT,
    DEPLOYMENT_ID,
    DIGEST,
    MANAGED,
    build_manifests,
    build_name,
    copy_command,
    copy_pod,
    env_secret,
    environment,
    fence,
    from_chart,
    host_label,
    manifests,
    namespace,
    placeholder_values,
    pushed_image,
    storage_paths,
    workload_kind,
)
from deployments.runtimes.kubernetes.observe import OBSERVED_KINDS, observation, usage_by_pod
from deployments.runtimes.statusitems import MAX_STATUS_BYTES, Answer, status_items

log = logging.getLogger(__name__)
APPLIED = "diploi.io/applied"  # the namespace's annotation: each object's digest, as applied last
APPLIED_MANAGER = "diploi-applied"  # its own field manager: the manifests' applies leave it alone
DEVELOPMENT_IMAGES = "diploi.io/development-images"  # the namespace's annotation: each development image built
DEVELOPMENT_IMAGES_MANAGER = "diploi-development-images"
OURS = f"{MANAGED}=diploi"
STATUS_EVERY = 10.0  # seconds between two reads of a component's status items
SYNC_TIMEOUT = 60  # seconds observe waits for the informer's first lists
BROKEN_GRACE = 10  # seconds the watches may be broken before observe says the cluster is not answering
FEW = 3  # at most this many deployments are observed (without an informer) by listing their namespaces
# The order objects are applied in: the namespace, its fence (nothing runs in it unfenced), everything
# not named here, the workloads.
STAGES = (
    ("Namespace",),
    ("NetworkPolicy", "ResourceQuota", "LimitRange", "ServiceAccount"),
    (),
    ("StatefulSet", "Deployment", "Job", "Pod"),
)
REST = 2


class KubernetesRuntime(Runtime):
    sftp_command = (  # the image's own SFTP server, where distributions put it
        "for p in /usr/lib/openssh/sftp-server /usr/lib/sftp-server /usr/libexec/sftp-server /usr/libexec/openssh/sftp-server "
        '/usr/lib/ssh/sftp-server; do [ -x "$p" ] && exec "$p"; done; '
        'echo "diploi: this image has no sftp-server (add openssh-sftp-server to it)" >&2; exit 127'
    )

    def __init__(self, kube: Kube | None = None) -> None:
        self.kube = kube or Kube(
            settings.DIPLOI_K8S_KUBECONFIG,
            settings.DIPLOI_K8S_CONTEXT,
            qps=settings.DIPLOI_K8S_QPS,
            burst=settings.DIPLOI_K8S_BURST,
            concurrency=settings.DIPLOI_K8S_CONCURRENCY,
        )
        self.informer: Informer | None = None
        # deployment id → (its objects' generation, the spec, the usage, what was observed from them)
        self._observed: dict[int, tuple[int, DeploymentSpec, dict | None, Observation]] = {}
        self._status: dict[tuple[int, str], tuple[float, tuple[ItemState, ...]]] = {}  # (deployment, component) → (read at, items)
        self._metrics: tuple[float, dict | None] | None = None  # (when, usage by pod) of the last metrics read

    def confinement(self) -> Confinement:
        """A namespace per deployment named from its id, with a default-deny NetworkPolicy (enforced
        by the cluster's network plugin), a quota and limit range, and pods that never run as root
        (but for the builder and the copy helper) and hold no API token."""
        return Confinement()

    def _own_namespace(self, spec: DeploymentSpec) -> dict | None:
        """The deployment's namespace (None if there is none yet); refuses one that belongs to another."""
        found = self.kube.get("Namespace", namespace(spec))
        owner = (found or {}).get("metadata", {}).get("labels", {}).get(DEPLOYMENT_ID)
        if found is not None and owner != str(spec.id):
            raise RuntimeFailure(
                f"the namespace {namespace(spec)} exists and is not this deployment's (its {DEPLOYMENT_ID} label is "
                f"{owner or 'missing'}); nothing was changed in it"
            )
        return found

    def _apply_all(self, objects: list[dict], spec: DeploymentSpec, owned: bool = False) -> None:
        """Apply after checking that the namespace (unless the caller did: `owned`) and every host name
        are the deployment's: the namespace, then its fence (nothing runs in it unfenced), then the rest
        with the workloads last, each stage's objects at once through the client's bounded pool."""
        if not owned:
            self._own_namespace(spec)
        hosts = {rule["host"] for obj in objects if obj["kind"] == "Ingress" for rule in obj["spec"]["rules"]}
        if hosts:
            self._hosts_free(spec, hosts)
        fence = {*STAGES[0], *STAGES[1]}
        fenced, rest = [obj for obj in objects if obj["kind"] in fence], [obj for obj in objects if obj["kind"] not in fence]
        for stage in _stages(fenced):
            self.kube.parallel([lambda obj=obj: self._put(obj) for obj in stage])
        # The rest, a package's chart's objects among them, checked by the API server first (a dry run,
        # unknown fields refused): an object it refuses stops the apply before anything of it changes.
        self.kube.parallel([lambda obj=obj: self._checked(obj) for obj in rest])
        for stage in _stages(rest):
            self.kube.parallel([lambda obj=obj: self._put(obj) for obj in stage])

    def _checked(self, obj: dict) -> None:
        try:
            self.kube.apply(obj, dry_run=True)
        except KubeError as e:
            # (server-side apply answers 500 for a field the schema lacks: that is the object's fault, not the cluster's)
            invalid = e.status in (400, 422) or "failed to create typed patch object" in str(e)
            if not invalid:
                raise
            if obj["kind"] == "Service" and "clusterIP" in str(e):
                return  # (a Service whose cluster IP changes is made anew: _put)
            meta = obj["metadata"]
            raise RuntimeFailure(f"the {obj['kind']} “{meta['name']}” is not valid for this cluster: {e}") from None

    def _put(self, obj: dict) -> None:
        """Apply one object. A Service's cluster IP cannot change in place (one made with a virtual IP
        by an earlier Diploi, now headless): that Service is deleted and made anew, the name
        unresolvable for that moment."""
        try:
            self.kube.apply(obj)
        except KubeError as e:
            if obj["kind"] != "Service" or e.status != 422 or "clusterIP" not in str(e):
                raise
            name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
            log.info("the Service %s/%s changes its cluster IP: made anew", ns, name)
            self.kube.delete("Service", name, ns)
            self.kube.wait_gone("Service", name, ns)
            self.kube.apply(obj)

    def _hosts_free(self, spec: DeploymentSpec, hosts: set[str]) -> None:
        """Refuse host names another Ingress of the cluster serves (another Diploi's, or anyone's). Ours
        carry a label per host name: the API finds them by label, and lists only the Ingresses that are
        not Diploi's (a few), not every deployment's."""
        found = self.kube.list("Ingress", selector=f"{MANAGED}!=diploi")
        for host in sorted(hosts):
            found += self.kube.list("Ingress", selector=host_label(host))
        for ingress in found:
            if ingress["metadata"].get("labels", {}).get(DEPLOYMENT_ID) == str(spec.id):
                continue
            taken = hosts & {rule.get("host") for rule in ingress.get("spec", {}).get("rules", [])}
            if taken:
                raise RuntimeFailure(f"{', '.join(sorted(taken))} is already served by another Ingress in the cluster; nothing was changed")

    def apply(self, spec: DeploymentSpec) -> dict[str, str]:
        """Everything the deployment consists of that differs from what was applied last: the namespace
        records a digest per object once all are applied (annotation APPLIED, under its own field
        manager), so an unchanged deployment costs one read and no write, and a changed env var rewrites
        its Secret and workload only. A change made by hand in the cluster is not undone until the
        object itself changes in the deployment."""
        spec = self._development_images(spec)
        objects = manifests(spec)
        digests = {_name(obj): _digest(obj) for obj in objects}
        applied = _applied(self._own_namespace(spec))
        changed = [obj for obj in objects if applied.get(_name(obj)) != digests[_name(obj)]]
        if changed:
            self._forget(spec, applied, {_name(obj) for obj in changed})
            self._apply_all(changed, spec, owned=True)
        if applied != digests:
            self._stamp(spec, digests)
        return hostnames.shown_endpoints(spec)

    def _forget(self, spec: DeploymentSpec, applied: dict[str, str], names: set[str]) -> None:
        """Before writing these objects, the record no longer vouches for them: an apply that fails
        half-way leaves no digest saying a half-written object is what it was."""
        if applied and names & applied.keys():
            self._stamp(spec, {name: digest for name, digest in applied.items() if name not in names})

    def _stamp(self, spec: DeploymentSpec, digests: dict[str, str]) -> None:
        stamp = {"name": namespace(spec), "annotations": {APPLIED: json.dumps(digests, sort_keys=True)}}
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": stamp}, manager=APPLIED_MANAGER)

    def route(self, spec: DeploymentSpec) -> None:
        """The Ingress again, with the verified domains (or without a removed one)."""
        ingresses = [obj for obj in manifests(spec) if obj["kind"] == "Ingress"]
        found = self._own_namespace(spec)
        if ingresses and found is not None:
            self._forget(spec, _applied(found), {_name(obj) for obj in ingresses})  # the next apply writes it as it is then
            self._apply_all(ingresses, spec, owned=True)

    def watch(self, changed) -> bool:
        """Follow the cluster's Diploi objects in this process (the monitor): `observe` reads them from
        then on, and `changed(ids)` hears of each deployment whose objects changed."""
        if self.informer is None:
            self.informer = Informer(self.kube, OURS, lambda owners: changed({int(o) for o in owners if o.isdigit()})).start()
        return True

    def set_enabled(self, spec: DeploymentSpec, enabled: bool) -> None:
        """Replicas to zero (or back); claims stay."""
        self.apply(replace(spec, enabled=enabled))

    def describe(self, spec: DeploymentSpec, service: str) -> list[tuple[str, str]]:
        spec.service(service)
        pods = self.kube.list("Pod", namespace(spec), f"{DEPLOYMENT_ID}={spec.id},{COMPONENT}={service}")
        if not pods:
            return [("Pod", "none: the workload has no pod (stopped, or not scheduled yet)")]
        pod = pods[0]
        container = next((c for c in pod["spec"].get("containers", []) if c["name"] == service), pod["spec"]["containers"][0])
        status = next((c for c in pod.get("status", {}).get("containerStatuses", []) if c["name"] == container["name"]), {})
        events = sorted(self.kube.events(namespace(spec), pod["metadata"]["name"]), key=lambda e: e.get("lastTimestamp") or "")
        told = [f"{e.get('lastTimestamp') or ''} {e.get('reason', '')}: {e.get('message', '')}" for e in events[-10:]]
        return [
            ("Pod", f"{pod['metadata']['name']} on {pod['spec'].get('nodeName') or '(not scheduled)'}"),
            ("Phase", pod.get("status", {}).get("phase", "unknown")),
            ("Image", container.get("image", "")),
            ("Command", " ".join(container.get("command", []) + container.get("args", [])) or "(the image's own)"),
            ("Working folder", container.get("workingDir") or "(the image's own)"),
            (
                "Environment",
                f"{', '.join(sorted(environment(spec, spec.service(service))))} (from the Secret {env_secret(spec.service(service))})",
            ),
            ("Limits", ", ".join(f"{k} {v}" for k, v in sorted(container.get("resources", {}).get("limits", {}).items())) or "none"),
            ("Restarts", str(status.get("restartCount", 0))),
            ("Started", pod.get("status", {}).get("startTime", "—")),
            ("Events", "\n".join(told) or "none"),
        ]

    def addresses(self, spec: DeploymentSpec) -> dict[str, dict[str, str]]:
        return {s.identifier: placeholder_values(spec, s) for s in spec.services}

    def restart(self, spec: DeploymentSpec, service: str) -> None:
        stamp = {"spec": {"template": {"metadata": {"annotations": {"diploi.io/restarted-at": str(time.time())}}}}}
        self.kube.patch(workload_kind(spec, spec.service(service)), service, namespace(spec), stamp)

    def observe(self, specs: list[DeploymentSpec]) -> dict[int, Observation]:
        """From the informer's objects when this process watches (no API call but the metrics, read at
        most once per monitor interval); else from lists: of the deployments' namespaces for a few
        deployments, across the cluster for more."""
        if self.informer is not None:
            if not self.informer.wait_synced(SYNC_TIMEOUT):
                raise KubeUnavailable(0, f"the first lists of the cluster's objects did not finish in {SYNC_TIMEOUT} s")
            if self.informer.broken_for() > BROKEN_GRACE:
                raise KubeUnavailable(0, f"the cluster has not been followed for {self.informer.broken_for():.0f} s (its watches broke)")
            return self._with_status_items(specs, self._from_informer(specs, self._usage()))
        if len(specs) <= FEW:
            found = {}
            for spec in specs:
                objects = {kind: self.kube.list(kind, namespace(spec), OURS) for kind in OBSERVED_KINDS}
                found[spec.id] = observation(spec, objects, usage_by_pod(self.kube.pod_metrics(OURS, namespace(spec))))
            return self._with_status_items(specs, found)
        by_deployment: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {kind: [] for kind in OBSERVED_KINDS})
        for kind in OBSERVED_KINDS:
            for obj in self.kube.list(kind, selector=OURS):
                by_deployment[obj["metadata"]["labels"].get(DEPLOYMENT_ID, "")][kind].append(obj)
        usage = self._usage(fresh=True)
        return self._with_status_items(specs, {s.id: observation(s, by_deployment[str(s.id)], usage) for s in specs})

    def _with_status_items(self, specs: list[DeploymentSpec], found: dict[int, Observation]) -> dict[int, Observation]:
        """The items each ready component with a status path (`local.status`) serves, read through the
        API server's service proxy (the platform never needs a route into the cluster), at most once per
        STATUS_EVERY per component; each becomes a line under the component's service."""
        now = time.monotonic()
        ready = {
            (spec.id, service.identifier): (spec, service)
            for spec in specs
            if spec.id in found
            for service in spec.services
            if service.status_path and service.ports and not from_chart(service)
            if any(s.name == service.identifier and s.colour == Colour.GREEN for s in found[spec.id].services)
        }
        due = [key for key in ready if now - self._status.get(key, (-STATUS_EVERY, ()))[0] >= STATUS_EVERY]
        answers = self.kube.parallel([functools.partial(self._status_answer, *ready[key]) for key in due])
        for key, answer in zip(due, answers, strict=True):
            self._status[key] = (now, tuple(status_items(ready[key][1], answer, 0)))
        self._status = {key: kept for key, kept in self._status.items() if key in ready}
        for spec in specs:
            items = [item for service in spec.services for item in self._status.get((spec.id, service.identifier), (0, ()))[1]]
            if items:
                found[spec.id] = replace(found[spec.id], services=found[spec.id].services + tuple(items))
        return found

    def _status_answer(self, spec: DeploymentSpec, service: ServiceSpec) -> Answer:
        try:
            port, path = service.ports[0].port, service.status_path
            status, body = self.kube.service_get(namespace(spec), service.identifier, port, path, MAX_STATUS_BYTES + 1)
        except KubeUnavailable as e:  # the proxy found no pod answering
            return Answer(error=str(e)[:200])
        except KubeError as e:  # the component's own error status
            return Answer(status=e.status)
        return Answer(status=status, body=body)

    def _from_informer(self, specs: list[DeploymentSpec], usage: dict | None) -> dict[int, Observation]:
        """Each deployment's observation, derived again only when its objects, its spec (the monitor
        keeps one object per deployment until it changes) or the metrics read changed since."""
        found = {}
        for spec in specs:
            kept = self._observed.get(spec.id)
            if kept is not None and kept[0] == self.informer.generation(str(spec.id)) and kept[1] is spec and kept[2] is usage:
                found[spec.id] = kept[3]
                continue
            generation, objects = self.informer.of(str(spec.id))
            found[spec.id] = observation(spec, objects, usage)
            self._observed[spec.id] = (generation, spec, usage, found[spec.id])
        if len(self._observed) > 2 * len(self.informer.index) + 1000:  # deployments long gone
            self._observed = {pk: v for pk, v in self._observed.items() if str(pk) in self.informer.index}
        return found

    def _usage(self, fresh: bool = False) -> dict | None:
        """CPU and memory of every Diploi pod from metrics.k8s.io (None where the cluster does not serve
        it): one call for all pods, at most once per monitor interval (the ticks a change brings on
        in between use the last one)."""
        if fresh or self._metrics is None or time.monotonic() - self._metrics[0] >= settings.DIPLOI_MONITOR_INTERVAL:
            self._metrics = (time.monotonic(), usage_by_pod(self.kube.pod_metrics(OURS)))
        return self._metrics[1]

    def _pod(self, spec: DeploymentSpec, service: str, running: bool = False) -> str | None:
        """The name of one pod of the service (a running one when asked), or None."""
        pods = self.kube.list("Pod", namespace(spec), f"{DEPLOYMENT_ID}={spec.id},{COMPONENT}={service}")
        if running:
            pods = [p for p in pods if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        return pods[0]["metadata"]["name"] if pods else None

    def logs(
        self,
        spec: DeploymentSpec,
        service: str,
        follow: bool = False,
        since: int | None = None,
        tail: int = 200,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        spec.service(service)
        pod = self._pod(spec, service)
        if pod is None:
            return
        for line in self.kube.logs(namespace(spec), pod, service, follow=follow, tail=None if since == 0 else tail):
            if stop is not None and stop.is_set():
                return
            yield line

    def destroy(self, spec: DeploymentSpec) -> None:
        """Delete the namespace (everything in it, claims included) and wait until it is gone. A
        namespace of that name that is not labelled as this deployment's is left alone."""
        try:
            if self._own_namespace(spec) is None:
                return
        except RuntimeFailure as e:
            log.warning("destroy of deployment %s: %s", spec.id, e)
            return
        self.kube.delete("Namespace", namespace(spec))
        self.kube.wait_gone("Namespace", namespace(spec), timeout=settings.DIPLOI_K8S_DELETE_TIMEOUT)

    def build(self, spec: DeploymentSpec, progress: Progress) -> dict[str, str]:
        """One Job per component: the builder image builds the commit (from the component's own
        Dockerfile, or one generated from the package's image, the code, its install and build
        commands), pushes it and leaves its digest as the pod's termination message; the workloads run
        that digest, not the tag. Progress follows the Jobs; a failed Job fails the build with its reason."""
        progress("clone", 0, f"Building {spec.commit[:10]} of {spec.branch} in the cluster")
        images = self._built(spec, [s for s in spec.services if s.built], progress)
        progress("release", 100, f"Release {spec.commit[:10]} ready")
        return images

    def _built(self, spec: DeploymentSpec, components: list[ServiceSpec], progress: Progress) -> dict[str, str]:
        jobs = [obj for service in components for obj in build_manifests(spec, service, self._dockerfile(spec, service))]
        self._apply_all(fence(spec) + jobs, spec)
        progress("install", 25, f"{len(components)} build job(s) started")
        deadline = time.monotonic() + settings.DIPLOI_K8S_BUILD_TIMEOUT
        images: dict[str, str] = {}
        while len(images) < len(components):
            for service in components:
                if service.identifier in images:
                    continue
                job = self.kube.get("Job", build_name(spec, service), namespace(spec)) or {}
                conditions = {c["type"]: c for c in job.get("status", {}).get("conditions", []) if c.get("status") == "True"}
                if "Failed" in conditions:
                    raise BuildFailed(
                        "build", f"{service.identifier}: {conditions['Failed'].get('message') or conditions['Failed'].get('reason')}"
                    )
                if "Complete" in conditions:
                    pushed = f"{pushed_image(spec, service)}@{self._digest(spec, build_name(spec, service))}"
                    images[service.identifier] = pushed
                    progress("build", 25 + 65 * len(images) // len(components), f"{service.identifier}: pushed {pushed}")
            if len(images) < len(components):
                if time.monotonic() > deadline:
                    raise BuildFailed("build", f"not finished after {settings.DIPLOI_K8S_BUILD_TIMEOUT} s")
                time.sleep(1)
        return images

    def _dockerfile(self, spec: DeploymentSpec, service: ServiceSpec) -> str:
        """Which Dockerfile in the component's folder its image is built from ("" for a recipe's
        component): a development deployment's is the package's development Dockerfile when the commit
        has it. Looked up in the platform's own copy of the repository; a missing one fails the build."""
        if not service.container:
            return ""
        dockerfile, development = service.container
        if spec.stage == "development" and development != dockerfile and self._in_commit(spec, service, development):
            return development
        if spec.mirror and not self._in_commit(spec, service, dockerfile):
            where = posixpath.join(service.folder or ".", dockerfile)
            raise BuildFailed("build", f"{service.identifier}: {where} is missing (its package builds a Dockerfile)")
        return dockerfile

    @staticmethod
    def _in_commit(spec: DeploymentSpec, service: ServiceSpec, name: str) -> bool:
        if not spec.mirror:
            return False
        path = posixpath.join(service.folder, name)
        try:
            return gitsafe.output(("cat-file", "-t", f"{spec.commit}:{path}"), Path(spec.mirror), 30).strip() == b"blob"
        except gitsafe.Failed:
            return False

    def _development_images(self, spec: DeploymentSpec) -> DeploymentSpec:
        """A development deployment's components built from their Dockerfile run their development
        image: built in the cluster once per commit and Dockerfile (the namespace records each one's
        digest), then reused by every apply."""
        wanted = [s for s in spec.services if s.container]
        if spec.stage != "development" or not wanted:
            return spec
        recorded = _recorded(self._own_namespace(spec), DEVELOPMENT_IMAGES)
        keys = {s.identifier: f"{spec.commit}:{self._dockerfile(spec, s)}" for s in wanted}
        images: dict[str, str] = {}
        missing = []
        for service in wanted:
            entry = recorded.get(service.identifier)
            if isinstance(entry, dict) and entry.get("key") == keys[service.identifier] and isinstance(entry.get("image"), str):
                images[service.identifier] = entry["image"]
            else:
                missing.append(service)
        if missing:
            images.update(self._built(spec, missing, _logged(spec)))
            record = {s.identifier: {"key": keys[s.identifier], "image": images[s.identifier]} for s in wanted}
            stamp = {"name": namespace(spec), "annotations": {DEVELOPMENT_IMAGES: json.dumps(record, sort_keys=True)}}
            self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": stamp}, manager=DEVELOPMENT_IMAGES_MANAGER)
        return replace(spec, images=tuple(sorted(images.items())))

    def import_release(self, source: DeploymentSpec, target: DeploymentSpec) -> None:
        """A release here is its images, pinned by digest in the registry: the target runs the same
        references (the platform copies them onto its release), there is nothing to copy."""

    def prune_releases(self, spec: DeploymentSpec, keep: set[str]) -> None:
        """Images are the registry's to collect; the platform only stops offering their releases."""

    def update_code(self, spec: DeploymentSpec, pull: bool) -> CodeState:
        """The code is cloned into each development component's claim by its init container, and
        stays the developer's; fast-forwarding it in the cluster is not done yet."""
        if not pull:
            return CodeState(spec.commit)
        return CodeState(spec.commit, 1, ("fast-forwarding development code is not available on Kubernetes yet: pull over SSH",))

    def _digest(self, spec: DeploymentSpec, job: str) -> str:
        """What the builder of `job` wrote to its termination log: the pushed image's digest."""
        for pod in self.kube.list("Pod", namespace(spec), f"job-name={job}"):
            for status in pod.get("status", {}).get("containerStatuses", []):
                message = status.get("state", {}).get("terminated", {}).get("message", "").strip()
                if DIGEST.fullmatch(message):
                    return message
        raise BuildFailed("build", f"{job}: the builder reported no image digest (its termination message)")

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
        copies = [(service, claim, path) for service in target.services for claim, path in storage_paths(source, target, service)]
        if not copies:
            return
        ns = namespace(target)
        self._own_namespace(source)
        claims = [obj for obj in manifests(target) if obj["kind"] == "PersistentVolumeClaim"]
        self._apply_all(fence(target) + claims, target)
        self.kube.apply(copy_pod(target, [claim for _, claim, _ in copies]))
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
        reading = self.kube.exec(source_ns, pod, container, copy_command("read", path), False)
        writing = self.kube.exec(ns, COPY_POD, "copy", copy_command("write", f"{COPY_ROOT}/{claim}"), False)
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
            script = (
                f'p=$(cat {self.pidfile}) && for s in /proc/[0-9]*/stat; do read -r c _ _ pp _ < "$s" && [ "$pp" = "$p" ] '
                f'&& kill -TERM "$c"; done 2> /dev/null; kill -TERM "$p" 2> /dev/null; {script}'
            )
        try:
            self.kube.exec(*self.target, ["/bin/sh", "-c", script], False).close()
        except RuntimeFailure:
            log.warning("could not end the session %s in %s", self.pidfile, "/".join(self.target))

    def kill(self) -> None:
        # The processes first, while the stream still holds them: a runtime that ends the exec's
        # own process when its stream ends would leave that process's children to another parent.
        self._finish(kill=True)
        self.stream.kill()

    def close(self) -> int:
        status = self.stream.close()
        self._finish(kill=False)
        return status


def _applied(namespace_found: dict | None) -> dict[str, str]:
    """What the namespace records as applied last (nothing for one missing or being deleted)."""
    return _recorded(namespace_found, APPLIED)


def _logged(spec: DeploymentSpec) -> Progress:
    """Progress of a build no Build row follows (a development image's): its lines in the log."""

    def progress(step: str, percent: int, line: str | None = None) -> None:
        if line:
            log.info("deployment %s: %s", spec.id, line)

    return progress


def _recorded(namespace_found: dict | None, annotation: str) -> dict:
    """What the namespace records in its `annotation` (nothing for one missing or being deleted)."""
    meta = (namespace_found or {}).get("metadata", {})
    if meta.get("deletionTimestamp"):
        return {}
    try:
        found = json.loads(meta.get("annotations", {}).get(annotation, "{}"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _stages(objects: list[dict]) -> list[list[dict]]:
    """The objects by STAGES, each stage in the order given, the empty ones left out."""
    stages: list[list[dict]] = [[] for _ in STAGES]
    for obj in objects:
        stages[next((i for i, kinds in enumerate(STAGES) if obj["kind"] in kinds), REST)].append(obj)
    return [stage for stage in stages if stage]
