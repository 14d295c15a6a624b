"""From the database and the stack file to the plain DeploymentSpec the runtime works from."""

import json
import secrets
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from deployments.models import Build, Deployment, EnvVar
from deployments.runtimes.base import DeploymentSpec, EnvImport, PortSpec, ServiceSpec, VolumeSpec
from projects import git
from projects.stack import GitTree, project_mirror
from projects.stackerrors import StackError
from projects.stackfile import STACK_FILE, Stack, parse_stack


class StackInvalid(Exception):
    def __init__(self, errors: list[StackError]) -> None:
        super().__init__("; ".join(str(e) for e in errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""))
        self.errors = errors


def fetch_branch(deployment: Deployment) -> str:
    """Update the project's mirror and return the commit at the tip of the deployment's branch."""
    mirror = project_mirror(deployment.project)
    git.sync_mirror(deployment.project.repository, mirror)
    return git.resolve_branch(mirror, deployment.branch)


def load_stack(deployment: Deployment, commit: str) -> Stack:
    stack, errors = _parse_at(project_mirror(deployment.project), commit)
    if errors:
        raise StackInvalid(list(errors))
    return stack


@lru_cache(maxsize=256)
def _parse_at(mirror: Path, commit: str) -> tuple[Stack | None, tuple[StackError, ...]]:
    """A commit's stack never changes: each process parses it once."""
    tree = GitTree(mirror, commit)
    stack, errors = parse_stack(tree.read(STACK_FILE), tree)
    return stack, tuple(errors)


def deployment_stack(deployment: Deployment) -> Stack | None:
    """The deployment's own stack — at the commit it runs, else at its branch's tip as last fetched —
    which the dashboard and the SSH gateway show (None when it cannot be read)."""
    try:
        commit = deployment.commit or git.resolve_branch(project_mirror(deployment.project), deployment.branch)
        return load_stack(deployment, commit)
    except (StackInvalid, git.GitError):
        return None


def ensure_credentials(deployment: Deployment, stack: Stack) -> dict[str, str]:
    """A generated password per add-on, created once and kept (encrypted) with the deployment."""
    creds = json.loads(deployment.credentials or "{}")
    missing = [a.identifier for a in stack.addons if a.identifier not in creds]
    if missing:
        creds.update({identifier: secrets.token_hex(16) for identifier in missing})
        deployment.credentials = json.dumps(creds)
        deployment.save(update_fields=["credentials"])
    return creds


def build_spec(deployment: Deployment, stack: Stack, commit: str, release: Build | None = None) -> DeploymentSpec:
    """What should run: `commit`'s stack with the deployment's env, and (staging/production) the
    release to run — its commit, and its images pinned by digest where the release is images (built in
    the cluster, or reported by CI in external build mode)."""
    creds = ensure_credentials(deployment, stack)
    user_env: dict[str, dict[str, str]] = {}
    for var in EnvVar.objects.filter(deployment=deployment):
        user_env.setdefault(var.service, {})[var.key] = var.value
    platform_env = {
        "DIPLOI_PROJECT": deployment.project.slug,
        "DIPLOI_DEPLOYMENT": deployment.slug,
        "DIPLOI_STAGE": deployment.stage,
        "DIPLOI_BRANCH": deployment.branch,
        "DIPLOI_COMMIT": commit,
    }
    literals = {e.name: e.value for e in stack.env_include if e.value is not None}
    imports = _imports(stack)
    services = []
    for s in stack.services:
        pkg = s.package
        env = {p.key: p.default for p in pkg.parameters if p.default != ""}
        if s.kind == "component":
            env.update(literals)
            env.update(user_env.get("", {}))
        env.update(user_env.get(s.identifier, {}))
        env.update(platform_env)
        services.append(
            ServiceSpec(
                identifier=s.identifier,
                name=s.name,
                kind=s.kind,
                package=pkg.name,
                folder=s.folder,
                commands=dict(pkg.commands),
                ports=tuple(PortSpec(p.name, p.port, p.public, p.protocol) for p in pkg.ports),
                volumes=tuple(VolumeSpec(v.name, v.path, v.size) for v in pkg.storage),
                env=env,
                exports=dict(pkg.env),
                imports=imports if s.kind == "component" else (),
                password=creds.get(s.identifier, ""),
                health=dict(pkg.health),
            )
        )
    return replace(
        minimal_spec(deployment),
        commit=commit,
        services=tuple(services),
        hosts=tuple(deployment.domains.filter(verified=True).values_list("name", flat=True)),  # only what DNS showed is theirs
        release=release.commit if release else "",
        images=tuple(sorted(release.images.items())) if release else (),
    )


def minimal_spec(deployment: Deployment) -> DeploymentSpec:
    """Enough for destroy and for stopping/starting: works even when the stack or repository is gone."""
    return DeploymentSpec(
        id=deployment.pk,
        slug=deployment.slug,
        project_slug=deployment.project.slug,
        stage=deployment.stage,
        repository=deployment.project.repository,
        branch=deployment.branch,
        commit=deployment.commit,
        enabled=deployment.enabled,
    )


def current_spec(deployment: Deployment) -> DeploymentSpec:
    """The spec of what runs now (the deployment's current commit and release), or a minimal one."""
    if not deployment.commit:
        return minimal_spec(deployment)
    try:
        stack = load_stack(deployment, deployment.commit)
    except (StackInvalid, git.GitError):
        return minimal_spec(deployment)
    return build_spec(deployment, stack, deployment.commit, deployment.release if deployment.release_id else None)


def _imports(stack: Stack) -> tuple[EnvImport, ...]:
    """env.include resolved to (name, provider, provider's name) triples; later entries win."""
    found: dict[str, EnvImport] = {}
    for entry in stack.env_include:
        if entry.value is not None:
            continue
        sources = stack.services if not entry.identifier else [s for s in stack.services if s.identifier == entry.identifier]
        for source in sources:
            names = source.package.env if entry.name in ("", "*") else [entry.name]
            for name in names:
                target = entry.alias or name
                found[target] = EnvImport(target, source.identifier, name)
    return tuple(found.values())
