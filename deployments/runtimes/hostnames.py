"""The host names a deployment answers on, the same on every runtime.

`<deployment>--<project>.<base>` is the deployment's own address (its first public component, and the
target of its custom domains' CNAME); every public port also has `<component>--<deployment>--<project>`
(a component's further ports `<port>--<component>--<deployment>--<project>`). Slugs and identifiers are
DNS labels without a leading or trailing '-', so the double dashes are only ever separators and two
deployments never share a name. A name that would not fit in one DNS label (63 characters), or whose
parts hold a "--" themselves, becomes `h<hash>-<readable part>`: it holds no "--", so it cannot be any
other deployment's name either. One label under the base domain is what a wildcard DNS record
(`*.example.com`) and a wildcard certificate cover.
"""

import hashlib
import ipaddress
from dataclasses import dataclass

from django.conf import settings

from deployments.runtimes.base import DeploymentSpec

LABEL = 63
SEPARATOR = "--"
# Base domains no public CA issues for: their certificates come from the router's own CA.
PRIVATE_SUFFIXES = ("localhost", "local", "internal", "test", "lan", "home.arpa", "invalid", "example")


@dataclass(frozen=True)
class Endpoint:
    key: str  # as Deployment.endpoints names it: the component, or "<component>/<port>" for a further port
    service: str
    port: str  # the port's name in the package
    host: str


def _label(*parts: str) -> str:
    if len(SEPARATOR.join(parts)) <= LABEL and not any(SEPARATOR in p for p in parts):
        return SEPARATOR.join(parts)
    digest = "h" + hashlib.sha256("/".join(parts).encode()).hexdigest()[:10]
    readable = "-".join(p.replace(SEPARATOR, "-") for p in parts)
    while SEPARATOR in readable:
        readable = readable.replace(SEPARATOR, "-")
    return f"{digest}-{readable}"[:LABEL].rstrip("-")


def deployment_host(slug: str, project_slug: str) -> str:
    return f"{_label(slug, project_slug)}.{settings.DIPLOI_BASE_DOMAIN}"


def endpoints(spec: DeploymentSpec) -> list[Endpoint]:
    """Every public port's host name; the first public component's first port also answers on the
    deployment's own host (listed first)."""
    found: list[Endpoint] = []
    for service in spec.public_components:
        for i, port in enumerate(p for p in service.ports if p.public):
            key = service.identifier if i == 0 else f"{service.identifier}/{port.name}"
            parts = (service.identifier, spec.slug, spec.project_slug)
            if i:
                parts = (port.name, *parts)
            if not found:
                found.append(Endpoint(key, service.identifier, port.name, deployment_host(spec.slug, spec.project_slug)))
            found.append(Endpoint(key, service.identifier, port.name, f"{_label(*parts)}.{settings.DIPLOI_BASE_DOMAIN}"))
    return found


def shown_endpoints(spec: DeploymentSpec, scheme: str = "https", port: int = 443) -> dict[str, str]:
    """Deployment.endpoints: a URL per key, the first host of each (the deployment's own for the first)."""
    return by_key(spec, port_urls(spec, scheme, port))


def port_urls(spec: DeploymentSpec, scheme: str = "https", port: int = 443) -> dict[tuple[str, str], str]:
    """(component, port name) → the URL its users open (the first of its host names)."""
    found: dict[tuple[str, str], str] = {}
    for endpoint in endpoints(spec):
        found.setdefault((endpoint.service, endpoint.port), url(endpoint.host, scheme, port))
    return found


def by_key(spec: DeploymentSpec, urls: dict[tuple[str, str], str]) -> dict[str, str]:
    """`urls` (port_urls' shape) as Deployment.endpoints names them: the component, "<component>/<port>"."""
    return {e.key: urls[(e.service, e.port)] for e in endpoints(spec) if (e.service, e.port) in urls}


def url(host: str, scheme: str = "https", port: int = 443) -> str:
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if port == default else f"{scheme}://{host}:{port}"


def is_private(domain: str) -> bool:
    """Whether `domain` is a name no public CA will certify (localhost, .internal, an address, …)."""
    name = domain.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return any(name == s or name.endswith("." + s) for s in PRIVATE_SUFFIXES)
