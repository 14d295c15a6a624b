"""The packages' `connectionStrings`, filled in with the deployment's values and this runtime's
addresses when it is applied, and kept (encrypted) for the Overview — which then reads them without
calling the runtime."""

import json

from deployments.models import Deployment
from deployments.runtimes.base import DeploymentSpec
from deployments.runtimes.placeholders import render
from projects import values
from projects.stackfile import Stack

MASK = "••••••"


def connection_strings(stack: Stack, spec: DeploymentSpec, addresses: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    found = []
    for s in stack.services:
        if not s.package.connection_strings:
            continue
        resolved, ctx = spec.service(s.identifier).exports, addresses.get(s.identifier, {})
        # The secrets themselves (a generated password), not the values built from them (a URL holding it).
        secrets = [
            render(resolved[p.key], ctx)
            for p in s.package.parameters
            if p.type == "secret" and resolved.get(p.key) and not values.references(s.package.env.get(p.key, ""))
        ]
        for cs in s.package.connection_strings:
            value = render(values.fill(cs.value, resolved), ctx)
            masked = value
            for secret in sorted(secrets, key=len, reverse=True):
                masked = masked.replace(secret, MASK)
            found.append({"service": s.identifier, "name": cs.name, "description": cs.description, "value": value, "masked": masked})
    return found


def store_connections(deployment: Deployment, stack: Stack, spec: DeploymentSpec, addresses: dict[str, dict[str, str]]) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(connections=json.dumps(connection_strings(stack, spec, addresses)))


def stored_connections(deployment: Deployment) -> list[dict[str, str]]:
    return json.loads(deployment.connections or "[]")
