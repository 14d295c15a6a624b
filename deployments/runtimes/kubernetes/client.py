"""All Kubernetes API access, through the official client's HTTP layer (no other module imports
`kubernetes`). Objects are plain dicts; writes are server-side apply with one field manager.

Errors: KubeUnavailable (a TransientFailure: connection refused, timeouts, 429 and 5xx — the callers'
retries take them) and KubeError (anything else, with the API's message). A 409 AlreadyExists on a
retried create counts as success.

Load: requests pass a client-side rate limit (a token bucket: `qps` a second, bursts of `burst`), and
writes run at most `concurrency` at a time (`Kube.parallel`). An API server that sheds load (429 from
priority and fairness, or 503 with Retry-After) is asked again after the time it names, a few times,
before the caller sees KubeUnavailable.
"""

import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import ws_client
from websocket import WebSocketBadStatusException, WebSocketException

from deployments.runtimes.base import RuntimeFailure, TransientFailure

log = logging.getLogger(__name__)
FIELD_MANAGER = "diploi"
RETRIED = {0, 429, 500, 502, 503, 504}
SHED = {429, 503}  # answers that may say when to ask again (Retry-After)
RETRY_AFTER_TIMES = 5  # times a shed request is asked again before the caller is told
RETRY_AFTER_MAX = 10.0  # seconds waited at most for one Retry-After

# kind → (API path prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "Pod": ("/api/v1", "pods", True),
    "Event": ("/api/v1", "events", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "LimitRange": ("/api/v1", "limitranges", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}


class KubeError(RuntimeFailure):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes answered {status}: {message}")
        self.status = status


class KubeUnavailable(KubeError, TransientFailure):
    retry_after: float | None = None  # seconds the API server asked to wait (429/503 with Retry-After)


def path(kind: str, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
    prefix, plural, namespaced = KINDS[kind]
    parts = [prefix]
    if namespaced and namespace:
        parts += ["namespaces", namespace]
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class RateLimit:
    """A token bucket: `qps` tokens a second, at most `burst` saved up; `take` waits for one."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.burst = qps, max(1, burst)
        self.tokens, self.at = float(self.burst), time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        if self.qps <= 0:
            return
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.qps)
            self.at = now
            self.tokens -= 1
            wait = -self.tokens / self.qps if self.tokens < 0 else 0.0
        if wait:
            time.sleep(wait)


class Kube:
    """One API server. `calls` counts requests and `writes` the writes among them (the benchmarks and
    tests report them per operation)."""

    def __init__(self, kubeconfig: str = "", context: str = "", qps: float = 200, burst: int = 400, concurrency: int = 16) -> None:
        self.configuration = client.Configuration()
        try:
            if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_kube_config(config_file=kubeconfig or None, context=context or None, client_configuration=self.configuration)
            else:
                config.load_incluster_config(client_configuration=self.configuration)
        except (ConfigException, OSError) as e:
            raise RuntimeFailure(f"cannot read the Kubernetes configuration: {e}") from None
        self.configuration.connection_pool_maxsize = concurrency + 8  # the writers, the watches and the readers
        # urllib3 would also wait out a Retry-After itself (for reads only): that is `request`'s to do, once
        self.configuration.retries = urllib3.Retry(total=3, respect_retry_after_header=False)
        self.api = client.ApiClient(self.configuration)
        self.calls = self.writes = 0
        self.counting = threading.Lock()
        self.limit = RateLimit(qps, burst)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube-write")

    def parallel(self, calls: "list") -> "list":
        """Run the calls (no-argument callables) through the bounded pool; their results in order. The
        first failure is raised once all have ended (none is left running behind the caller)."""
        futures = [self.pool.submit(c) for c in calls]
        results, failure = [], None
        for f in futures:
            try:
                results.append(f.result())
            except Exception as e:  # noqa: BLE001 - raised below, after the others ended
                failure = failure or e
                results.append(None)
        if failure is not None:
            raise failure
        return results

    def request(
        self,
        method: str,
        url: str,
        query: dict | None = None,
        body: object = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = 30,
        stream: bool = False,
    ):
        for attempt in range(RETRY_AFTER_TIMES + 1):
            try:
                return self._request(method, url, query, body, content_type, timeout, stream)
            except KubeUnavailable as e:
                if e.retry_after is None or attempt == RETRY_AFTER_TIMES:
                    raise
                log.info("Kubernetes shed %s %s (%s); asking again in %.1f s", method, url, e.status, e.retry_after)
                time.sleep(e.retry_after)
        raise AssertionError("unreachable")

    def _request(self, method: str, url: str, query: dict | None, body: object, content_type: str, timeout, stream: bool):
        if not (stream and query and query.get("watch")):  # a watch is one long request, not a rate
            self.limit.take()
        with self.counting:
            self.calls += 1
            self.writes += method != "GET" and not (query or {}).get("dryRun")  # (a dry run keeps nothing)
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method, full_url, headers, body, _ = self.api.param_serialize(
            method,
            url,
            query_params=params,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.rest_client.request(method, full_url, headers=headers, body=body, _request_timeout=timeout)
        except ApiException as e:
            raise self._error(e.status or 0, e.body or e.reason, e.headers) from None
        except (OSError, urllib3.exceptions.HTTPError) as e:  # refused, reset, timed out
            raise KubeUnavailable(0, str(e)) from None
        if stream:
            if response.status >= 400:
                raise self._error(response.status, response.read(), response.headers)
            return response.response
        data = response.read()
        if response.status >= 400:
            raise self._error(response.status, data, response.headers)
        return json.loads(data) if data else None

    @staticmethod
    def _error(status: int, body: object, headers=None) -> KubeError:
        message = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        try:
            message = json.loads(message).get("message", message)
        except (ValueError, AttributeError):
            pass
        if status not in RETRIED:
            return KubeError(status, message[:500])
        error = KubeUnavailable(status, message[:500])
        after = (headers or {}).get("Retry-After") if status in SHED else None
        if after is not None and after.strip().isdigit():
            error.retry_after = min(float(after), RETRY_AFTER_MAX)
        return error

    # --- objects ---

    def apply(self, obj: dict, manager: str = FIELD_MANAGER, dry_run: bool = False) -> dict:
        """Server-side apply: create or update to exactly these fields (idempotent), as `manager`. With
        `dry_run`, the API server checks it (unknown fields refused) and keeps nothing."""
        meta = obj["metadata"]
        url = path(obj["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": manager, "force": "true", **({"dryRun": "All", "fieldValidation": "Strict"} if dry_run else {})}
        return self.request("PATCH", url, params, obj, "application/apply-patch+yaml")

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self.request("GET", path(kind, namespace, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        """Across all namespaces when `namespace` is None: one call, whatever the number of deployments."""
        return self.request("GET", path(kind, namespace), {"labelSelector": selector}).get("items", [])

    def list_pages(self, kind: str, selector: str | None = None, limit: int = 500) -> "Iterator[tuple[list[dict], str]]":
        """Across all namespaces, `limit` objects a call (the whole list is never one response in
        memory); each page with the list's resource version (the same for all of them: one snapshot)."""
        token = None
        while True:
            page = self.request("GET", path(kind), {"labelSelector": selector, "limit": limit, "continue": token})
            meta = page.get("metadata", {})
            yield page.get("items", []), meta.get("resourceVersion", "")
            token = meta.get("continue")
            if not token:
                return

    def watch(self, kind: str, version: str, selector: str | None = None, timeout: int = 300) -> "Watch":
        """The changes after `version` (see Watch), until the server ends the watch after about
        `timeout` seconds."""
        query = {
            "watch": "1",
            "resourceVersion": version,
            "labelSelector": selector,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout,
        }
        return Watch(kind, self.request("GET", path(kind), query, stream=True, timeout=(10, timeout + 30)))

    def events(self, namespace: str, name: str) -> "list[dict]":
        """The events about one object of the namespace (a pod's scheduling, pulls, restarts)."""
        return self.request("GET", path("Event", namespace), {"fieldSelector": f"involvedObject.name={name}"}).get("items", [])

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """False when it was already gone."""
        try:
            self.request("DELETE", path(kind, namespace, name), body={"propagationPolicy": "Foreground"})
            return True
        except KubeError as e:
            if e.status == 404:
                return False
            raise

    def pod_metrics(self, selector: str, namespace: str | None = None) -> "list[dict] | None":
        """CPU and memory per pod from metrics.k8s.io, of a namespace or across them; None when the cluster does not serve it."""
        where = f"/namespaces/{namespace}" if namespace else ""
        try:
            return self.request("GET", f"/apis/metrics.k8s.io/v1beta1{where}/pods", {"labelSelector": selector}).get("items", [])
        except KubeError as e:
            if e.status in (404, 503):
                return None
            raise

    def service_get(self, namespace: str, service: str, port: int, path: str, limit: int, timeout: float = 5) -> tuple[int, bytes]:
        """GET `path` of a Service's port through the API server's proxy: the status and at most `limit`
        bytes of the body. KubeError when the answer is an error (the proxy's own, e.g. 503 with no
        endpoint, is a KubeUnavailable)."""
        url = f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy{path}"
        response = self.request("GET", url, stream=True, timeout=timeout)
        try:
            return response.status, response.read(limit)
        finally:
            response.release_conn()

    def patch(self, kind: str, name: str, namespace: str, patch: dict) -> dict:
        return self.request("PATCH", path(kind, namespace, name), body=patch, content_type="application/merge-patch+json")

    def wait_gone(self, kind: str, name: str, namespace: str | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.get(kind, name, namespace) is not None:
            if time.monotonic() > deadline:
                raise KubeUnavailable(0, f"{kind} {name} is still being deleted after {timeout:.0f} s")
            time.sleep(0.5)

    def logs(self, namespace: str, pod: str, container: str, follow: bool = False, tail: int | None = 200) -> Iterator[str]:
        query = {"container": container, "follow": "true" if follow else None, "tailLines": tail}
        response = self.request("GET", path("Pod", namespace, pod, "log"), query, stream=True, timeout=None if follow else 30)
        try:
            buffer = b""
            for chunk in response.stream(4096):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if buffer:
                yield buffer.decode(errors="replace")
        finally:
            response.release_conn()

    def exec(self, namespace: str, pod: str, container: str, argv: "list[str]", tty: bool) -> "Exec":
        """`argv` in a running container through the pod exec API (a websocket, channel protocol v5)."""
        query = [
            ("container", container),
            ("stdin", "true"),
            ("stdout", "true"),
            ("stderr", "false" if tty else "true"),
            ("tty", "true" if tty else "false"),
            *(("command", arg) for arg in argv),
        ]
        return Exec(self._websocket(path("Pod", namespace, pod, "exec"), query))

    def portforward(self, namespace: str, pod: str, port: int) -> "PortForward":
        """A byte stream to `port` of the pod through the pod port-forward API."""
        return PortForward(self._websocket(path("Pod", namespace, pod, "portforward"), [("ports", str(port))]))

    def _websocket(self, url: str, query: "list[tuple[str, str]]"):
        with self.counting:
            self.calls += 1
        _, url, headers, _, _ = self.api.param_serialize("GET", url, query_params=query, auth_settings=["BearerToken"])
        headers = {k.lower(): v for k, v in headers.items()}
        try:
            return ws_client.create_websocket(self.configuration, ws_client.get_websocket_url(url), headers)
        except WebSocketBadStatusException as e:
            raise self._error(e.status_code, e.resp_body or str(e)) from None
        except (OSError, WebSocketException) as e:
            raise KubeUnavailable(0, str(e)) from None


class Watch:
    """One watch request: iterating gives the API's watch events ({"type", "object"}), bookmarks included,
    until the server ends it; a broken connection raises KubeUnavailable. A version the server no longer
    has arrives as an ERROR event whose object is a Status with code 410. `close` ends it from any thread."""

    def __init__(self, kind: str, response) -> None:
        self.kind, self.response, self.closed = kind, response, False

    def __iter__(self) -> Iterator[dict]:
        buffer = b""
        try:
            for chunk in self.response.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except (OSError, urllib3.exceptions.HTTPError, ValueError) as e:  # reset, timed out, cut mid-line
            if not self.closed:
                raise KubeUnavailable(0, f"the watch of {self.kind} broke: {e}") from None
        finally:
            self.response.release_conn()

    def close(self) -> None:
        self.closed = True
        try:
            self.response.shutdown()  # wakes the thread reading it
        except (OSError, AttributeError, ValueError, RuntimeError):
            pass  # it has already ended: its connection went back to the pool


class _Held:
    """A stream's socket as websocket-client sees it, whose `close` only marks it closed: the
    library closes its socket in whichever thread notices the end, while TLS in another thread may
    still be writing to the descriptor's number. `Channels` closes the real one."""

    def __init__(self, raw) -> None:
        self.raw, self._closed = raw, False

    def close(self) -> None:
        self._closed = True

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


class Channels:
    """A websocket of the API's channel protocol: frames start with their channel's number. A thread
    reads the socket and hands frames to `_frame`; `out` holds what `read` returns (bounded: a slow
    reader slows the stream down), b"" once the stream has ended."""

    def __init__(self, sock) -> None:
        self.sock, self.raw = sock, sock.sock
        sock.sock = _Held(self.raw)
        protocol = getattr(sock, "subprotocol", None) or {k.lower(): v for k, v in (sock.getheaders() or {}).items()}.get(
            "sec-websocket-protocol"
        )
        self.v5 = protocol == ws_client.V5_CHANNEL_PROTOCOL
        self.out: queue.Queue[bytes] = queue.Queue(maxsize=256)
        self.ended = False
        self.lock = threading.Lock()  # websocket-client sends are not thread-safe
        self.reader = threading.Thread(target=self._read, daemon=True, name=f"kube-{type(self).__name__.lower()}")
        self.reader.start()

    def _read(self) -> None:
        try:
            while True:
                opcode, frame = self.sock.recv_data()
                if opcode == 8 or not frame:  # closed by the server
                    break
                self._frame(frame[0], bytes(frame[1:]))
        except (OSError, WebSocketException, ValueError):
            pass
        finally:
            self.ended = True
            with self.lock:  # only here, once nobody reads or writes it, is the socket closed
                self.raw.close()
            self._ended()

    def _frame(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    def _ended(self) -> None:
        self.out.put(b"")

    def _send(self, channel: int, data: bytes) -> None:
        try:
            with self.lock:
                self.sock.send_binary(bytes([channel]) + data)
        except (OSError, WebSocketException):
            pass  # the stream has ended; the reader reports it

    def read(self, size: int = 65536) -> bytes:
        return self.out.get()

    def kill(self) -> None:
        """End the stream, from any thread. Only shut down here: closing would free the descriptor's
        number while the reader or a writer still uses it, and TLS would then read and write whatever
        file is opened next under that number (it once wrote into the SQLite database)."""
        try:
            socket.socket.shutdown(self.raw, socket.SHUT_RDWR)  # the plain socket's: an SSLSocket's drops its TLS state
        except OSError:
            pass  # already ended

    def _drain(self) -> None:
        while self.reader.is_alive():  # what nobody read any more must not hold the reader up
            try:
                self.out.get_nowait()
            except queue.Empty:
                self.reader.join(0.1)


class Exec(Channels):
    """One exec stream. Channels: 0 stdin, 1 stdout, 2 stderr, 3 the final status, 4 terminal size,
    255 close (v5: the end of stdin)."""

    STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

    def __init__(self, sock) -> None:
        self.err: queue.Queue[bytes] = queue.Queue()
        self.status: dict | None = None
        super().__init__(sock)

    def _frame(self, channel: int, data: bytes) -> None:
        if not data:  # the server opens each channel with an empty frame
            return
        if channel == self.STDOUT:
            self.out.put(data)
        elif channel == self.STDERR:
            self.err.put(data)
        elif channel == self.STATUS:
            self.status = json.loads(data or b"{}")

    def _ended(self) -> None:
        super()._ended()
        self.err.put(b"")

    def write(self, data: bytes) -> None:
        self._send(self.STDIN, data)

    def close_stdin(self) -> None:
        if self.v5:
            self._send(self.CLOSE, bytes([self.STDIN]))

    def resize(self, columns: int, rows: int) -> None:
        self._send(self.RESIZE, json.dumps({"Width": columns, "Height": rows}).encode())

    def read_stderr(self, size: int = 65536) -> bytes:
        return self.err.get()

    def close(self) -> int:
        self._drain()
        self.kill()
        return exit_status(self.status)


class PortForward(Channels):
    """One forwarded connection: channel 0 carries the bytes both ways, channel 1 the errors; each
    channel's first frame is its port number (two bytes). Its websocket has no half-close."""

    DATA, ERROR = 0, 1

    def __init__(self, sock) -> None:
        self.opened: set[int] = set()
        self.error = ""
        super().__init__(sock)

    def _frame(self, channel: int, data: bytes) -> None:
        if channel not in self.opened:
            self.opened.add(channel)
            data = data[2:]
        if channel == self.DATA and data:
            self.out.put(data)
        elif channel == self.ERROR and data:
            self.error += data.decode(errors="replace")
            log.info("port forward: %s", self.error)
            self.kill()

    def write(self, data: bytes) -> None:
        if self.ended:  # no half-close: once the port's side has ended, so has the connection
            raise BrokenPipeError(f"the port forward has ended {self.error}".strip())
        self._send(self.DATA, data)

    def close_write(self) -> None:
        pass

    def close(self) -> None:
        self.kill()
        self._drain()


def exit_status(status: dict | None) -> int:
    """The exit code in the exec API's final status: Success → 0; the kubelet's NonZeroExitCode
    carries it as the ExitCode cause; runtimes that pass Go's exec error on (KWOK) end the message
    with "exit status N". 255 when the stream ended without a status."""
    if not status:
        return 255
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"])
    found = re.search(r"exit status (\d+)$", status.get("message", ""))
    return int(found.group(1)) if found else 255
