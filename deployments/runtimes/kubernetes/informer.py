"""The monitor's picture of the cluster: Diploi's pods, claims and workloads, kept current by watches.

Per kind, one thread lists the objects labelled `managed-by: diploi` (in pages), then watches from the
list's resource version with bookmarks (which move the version on when nothing of ours changes, so a
watch started again rarely finds its version gone). A watch the server ends is started again from the
last version; one that breaks (the API server went away) is started again from it once the server
answers; a version the server no longer has (410 Gone) is listed again, and the list replaces what was
held, so a change made while nobody watched is not missed. Objects are kept trimmed to what
`observe.observation` reads (observe.trim), indexed by deployment id.

`changed(ids)` is called, from the watch threads, with the ids of the deployments whose kept objects
changed (a status field nobody reads changing is no change).
"""

import logging
import threading
import time
from collections.abc import Callable

from deployments.runtimes.kubernetes.client import Kube, KubeError, KubeUnavailable, Watch
from deployments.runtimes.kubernetes.manifests import DEPLOYMENT_ID
from deployments.runtimes.kubernetes.observe import OBSERVED_KINDS, trim

log = logging.getLogger(__name__)
WATCH_TIMEOUT = 300  # seconds a watch lasts before the server ends it (and it is started again)
BACKOFF = (0.2, 5.0)  # seconds waited after a failure: the first time, and at most
Key = tuple[str, str]  # namespace, name


class Gone(Exception):
    """The watch's resource version is too old for the server: list again."""


class Informer:
    def __init__(self, kube: Kube, selector: str, changed: Callable[[set[str]], None] | None = None) -> None:
        self.kube, self.selector, self.changed = kube, selector, changed
        self.lock = threading.Lock()
        self.index: dict[str, dict[str, dict[Key, dict]]] = {}  # deployment id → kind → key → object
        # deployment id → a number drawn anew whenever its kept objects change (none: it has none). Never
        # reused, so a deployment gone and back is not mistaken for what it was.
        self.generations: dict[str, int] = {}
        self.drawn = 0
        self.versions: dict[str, str] = {}
        self.synced = {kind: threading.Event() for kind in OBSERVED_KINDS}
        self.broken_since: dict[str, float] = {}  # kind → when its watch broke (until it watches again)
        self.lists = dict.fromkeys(OBSERVED_KINDS, 0)  # full lists made, per kind (the first one included)
        self.stopping = threading.Event()
        self.watches: dict[str, Watch] = {}
        self.threads = [threading.Thread(target=self._run, args=(kind,), name=f"informer-{kind}", daemon=True) for kind in OBSERVED_KINDS]

    def start(self) -> "Informer":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for watch in list(self.watches.values()):
            watch.close()
        for thread in self.threads:
            thread.join(5)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in self.synced.values())

    def broken_for(self) -> float:
        """Seconds the longest-broken watch has not been following the cluster (0: all follow it)."""
        since = min(self.broken_since.values(), default=None)
        return 0.0 if since is None else time.monotonic() - since

    def of(self, deployment_id: str) -> tuple[int, dict[str, list[dict]]]:
        """The kept objects of one deployment, by kind, in the order a list gives them (by name), and
        their generation (it moves whenever they change: what was derived from an equal one holds)."""
        with self.lock:
            found = self.index.get(deployment_id, {})
            objects = {kind: [obj for _, obj in sorted(found.get(kind, {}).items())] for kind in OBSERVED_KINDS}
            return self.generations.get(deployment_id, 0), objects

    def generation(self, deployment_id: str) -> int:
        return self.generations.get(deployment_id, 0)

    def count(self) -> int:
        with self.lock:
            return sum(len(objects) for found in self.index.values() for objects in found.values())

    def held(self, kind: str) -> dict[Key, dict]:
        """Every kept object of one kind, by key."""
        with self.lock:
            return {key: obj for found in self.index.values() for key, obj in found.get(kind, {}).items()}

    # --- the watch threads ---

    def _run(self, kind: str) -> None:
        delay = BACKOFF[0]
        listed = False
        while not self.stopping.is_set():
            try:
                if not listed:
                    self._list(kind)
                    listed = True
                self._watch(kind)  # ended by the server: watch again from its last version
                delay = BACKOFF[0]
                continue
            except KubeUnavailable as e:  # the server is away: watch again from the version held, once it answers
                problem = str(e)
            except (Gone, KubeError) as e:  # the version is gone (410, as an event or an answer), or worse: list again
                listed = False
                if isinstance(e, Gone) or e.status == 410:
                    log.info("informer: the %s version is gone; listing again", kind)
                    continue
                problem = str(e)
            except Exception as e:  # noqa: BLE001 - anything else: list again, later
                log.exception("informer: following %s failed", kind)
                listed, problem = False, str(e)
            self.broken_since.setdefault(kind, time.monotonic())
            if not self.stopping.is_set():
                log.warning("informer: %s not followed (%s); again in %.1f s", kind, problem, delay)
            self.stopping.wait(delay)
            delay = min(BACKOFF[1], delay * 2)

    def _list(self, kind: str) -> None:
        fresh: dict[Key, dict] = {}
        version = ""
        for items, page_version in self.kube.list_pages(kind, self.selector):
            version = page_version  # every page's is the list's
            for obj in items:
                kept = trim(kind, obj)
                fresh[_key(kept)] = kept
        before = self.held(kind)
        with self.lock:
            moved = {_owner(o) for k, o in before.items() if fresh.get(k) != o}
            moved |= {_owner(o) for k, o in fresh.items() if before.get(k) != o}
            for found in self.index.values():
                found.pop(kind, None)
            for key, obj in fresh.items():
                self.index.setdefault(_owner(obj), {}).setdefault(kind, {})[key] = obj
            self._moved(moved)
            self.versions[kind] = version
            self.lists[kind] += 1
        self.broken_since.pop(kind, None)
        self.synced[kind].set()
        self._announce(moved)

    def _watch(self, kind: str) -> None:
        watch = self.kube.watch(kind, self.versions[kind], self.selector, WATCH_TIMEOUT)
        self.watches[kind] = watch
        self.broken_since.pop(kind, None)
        try:
            for event in watch:
                if self.stopping.is_set():
                    return
                self._apply(kind, event)
        finally:
            self.watches.pop(kind, None)

    def _apply(self, kind: str, event: dict) -> None:
        kind_of_event, obj = event.get("type"), event.get("object") or {}
        if kind_of_event == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise KubeError(obj.get("code", 0), obj.get("message", "the watch ended with an error"))
        version = obj.get("metadata", {}).get("resourceVersion")
        if kind_of_event == "BOOKMARK":
            self.versions[kind] = version or self.versions[kind]
            return
        kept = trim(kind, obj)
        key, owner = _key(kept), _owner(kept)
        with self.lock:
            if kind_of_event == "DELETED":
                moved = self.index.get(owner, {}).get(kind, {}).pop(key, None) is not None
            else:
                found = self.index.setdefault(owner, {}).setdefault(kind, {})
                moved = found.get(key) != kept
                found[key] = kept
            if version:
                self.versions[kind] = version
            if moved:
                self._moved({owner})
        if moved:
            self._announce({owner})

    def _moved(self, owners: set[str]) -> None:
        """A new generation for each owner that still has objects; the others are forgotten."""
        for owner in owners:
            if any(self.index.get(owner, {}).values()):
                self.drawn += 1
                self.generations[owner] = self.drawn
            else:
                self.index.pop(owner, None)
                self.generations.pop(owner, None)

    def _announce(self, owners: set[str]) -> None:
        owners.discard("")
        if owners and self.changed is not None:
            try:
                self.changed(owners)
            except Exception:  # noqa: BLE001 - the listener's failure must not stop the watch
                log.exception("informer: telling of changes failed")


def _key(obj: dict) -> Key:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _owner(obj: dict) -> str:
    return obj["metadata"]["labels"].get(DEPLOYMENT_ID, "")
