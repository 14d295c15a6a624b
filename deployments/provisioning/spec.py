"""From the database and the stack file to the plain DeploymentSpec the runtime works from."""

import base64
import json
import secrets
import string
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from deployments.models import Build, Deployment, EnvVar, RegistryCredential
from deployments.runtimes import get_runtime
from deployments.runtimes.base import DeploymentSpec, EnvImport, PortSpec, ServiceSpec, VolumeSpec
from projects import git, values
from projects.remote import GitPackages
from projects.stack import parse_stack_at, project_mirror
from projects.stackerrors import StackError
from projects.stackfile import START_COMMANDS, Service, Stack, split_package_ref


class StackInvalid(Exception):
    def __init__(self, errors: list[StackError]) -> None:
        super().__init__("; ".join(str(e) for e in errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""))
        self.errors = errors


def fetch_branch(deployment: Deployment) -> str:
    """Update the project's mirror and return the commit at the tip of the deployment's branch."""
    mirror = project_mirror(deployment.project)
    git.sync_mirror(deployment.project.repository, mirror)
    return git.resolve_branch(mirror, deployment.branch)


def load_stack(deployment: Deployment, commit: str, locks: dict[str, str] | None = None) -> Stack:
    """The stack at `commit`, its packages by Git URL at `locks` (a release's), else at the project's."""
    project = deployment.project
    chosen = (project.package_locks or {}) if locks is None else locks
    stack, errors = _parse_at(project_mirror(project), commit, tuple(sorted(chosen.items())))
    if errors:
        raise StackInvalid(list(errors))
    return stack


@lru_cache(maxsize=256)
def _parse_at(mirror: Path, commit: str, locks: tuple[tuple[str, str], ...]) -> tuple[Stack | None, tuple[StackError, ...]]:
    """A commit's stack, with its packages at the project's locked commits, never changes: each
    process parses it once."""
    stack, errors = parse_stack_at(mirror, commit, GitPackages(dict(locks)))
    return stack, tuple(errors)


def deployment_stack(deployment: Deployment) -> Stack | None:
    """The deployment's own stack — at the commit it runs, else at its branch's tip as last fetched —
    which the dashboard and the SSH gateway show (None when it cannot be read)."""
    try:
        commit = deployment.commit or git.resolve_branch(project_mirror(deployment.project), deployment.branch)
        return load_stack(deployment, commit)
    except (StackInvalid, git.GitError):
        return None


class Secrets:
    """The deployment's generated secrets (encrypted in `Deployment.credentials`): one password per
    add-on for first-format packages ({password}), and each `${generate-…}` of a parameter as
    "<service>/<PARAMETER>" ("…#2" for a second one in the same value; a project file's literal env
    value as "<service>/env:<NAME>") — generated once, kept across restarts and clones. A JWT keeps
    only when it was issued: it is signed again from its secret's current value."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.values: dict[str, str] = json.loads(deployment.credentials or "{}")
        self.changed = False

    def get(self, key: str, length: int, fallback: str = "") -> str:
        return self._kept(key, lambda: fallback or "".join(secrets.choice(_ALPHABET) for _ in range(length)))

    def generate(self, key: str, found: values.Generator, secret: str) -> str:
        if found.kind == "password":
            return self.get(key, found.size)
        if found.kind == "bytes":
            return self._kept(key, lambda: base64.b64encode(secrets.token_bytes(found.size)).decode())
        issued = self._kept(key, lambda: str(int(time.time())))
        return values.jwt(secret, found.claims, int(issued))

    def _kept(self, key: str, make) -> str:
        if key not in self.values:
            self.values[key] = make()
            self.changed = True
        return self.values[key]

    def save(self) -> None:
        if self.changed:
            self.deployment.credentials = json.dumps(self.values)
            self.deployment.save(update_fields=["credentials"])
            self.changed = False


_ALPHABET = string.ascii_letters + string.digits


def stored_key(service: str, key: str, index: int) -> str:
    """Where the `index`th generator of `service`'s parameter `key` keeps its value (Secrets)."""
    return f"{service}/{key}" + (f"#{index + 1}" if index else "")


def stored_keys(stored: dict[str, str], service: str, key: str) -> list[str]:
    """Every generated value kept for `service`'s parameter `key` (stored_key's names)."""
    return [name for name in stored if name == stored_key(service, key, 0) or name.startswith(stored_key(service, key, 0) + "#")]


def resolve_parameters(service: Service, overrides: dict[str, str], store: Secrets) -> dict[str, str]:
    """The service's parameters as templates for the runtime: defaults or the deployment's saved
    values, generated values filled in (an add-on's first generated password is its first-format
    password, so a database initialised before keeps working), references to other parameters
    substituted, `${<HOST>_ENDPOINT}` as the runtime's placeholder of that host's URL."""
    legacy = store.values.get(service.identifier, "") if service.kind == "addon" else ""
    passwords: list[str] = []

    def generate(key: str, index: int, found: values.Generator, secret: str) -> str:
        name = stored_key(service.identifier, key, index)
        if found.kind == "password":
            passwords.append(name)
            return store.get(name, found.size, legacy if len(passwords) == 1 else "")
        return store.generate(name, found, secret)

    try:
        return values.resolve(dict(service.package.env), overrides, generate, service.package.endpoints)
    except values.Cycle as e:
        raise StackInvalid([StackError("parameters", service.identifier, str(e))]) from None


def literal_env(service: Service, store: Secrets) -> dict[str, str]:
    """The project file's literal env values of a component, generators filled in (kept per deployment)."""

    def generate(name: str, index: int, found: values.Generator, _secret: str) -> str:
        return store.generate(stored_key(service.identifier, f"env:{name}", index), found, "")

    return {e.name: values.generate_in(e.value, e.name, generate) for e in service.env_include if e.value is not None}


def build_spec(deployment: Deployment, stack: Stack, commit: str, release: Build | None = None) -> DeploymentSpec:
    """What should run: `commit`'s stack with the deployment's env and parameters, and
    (staging/production) the release to run — its commit, and its images pinned by digest where the
    release is images (built in the cluster, or reported by CI in external build mode)."""
    store = Secrets(deployment)
    user_env: dict[str, dict[str, str]] = {}
    for var in EnvVar.objects.filter(deployment=deployment):
        user_env.setdefault(var.service, {})[var.key] = var.value
    platform_env = {
        "DIPLOI_PROJECT": deployment.project.slug,
        "DIPLOI_DEPLOYMENT": deployment.slug,
        "DIPLOI_STAGE": deployment.stage,
        "STAGE": deployment.stage,  # (what Diploi's charts set besides)
        "DIPLOI_BRANCH": deployment.branch,
        "DIPLOI_COMMIT": commit,
    }
    exports: dict[str, dict[str, str]] = {}
    env: dict[str, dict[str, str]] = {}
    for s in stack.services:
        pkg, own = s.package, user_env.get(s.identifier, {})
        if pkg.legacy:
            exports[s.identifier] = dict(pkg.env)
            env[s.identifier] = {p.key: p.default for p in pkg.parameters if p.default != ""}
        else:
            params = {p.key for p in pkg.parameters}
            exports[s.identifier] = resolve_parameters(s, {k: v for k, v in own.items() if k in params}, store)
            own = {k: v for k, v in own.items() if k not in params}
            env[s.identifier] = {}
        if s.kind == "component":  # Diploi's <HOST>_ENDPOINT per host, which other components may include
            for name, placeholder in pkg.endpoints.items():
                exports[s.identifier].setdefault(name, "{" + placeholder + "}")
            env[s.identifier].update(literal_env(s, store))
            env[s.identifier].update(user_env.get("", {}))
        env[s.identifier].update(own)
        env[s.identifier].update(platform_env)
    for a in stack.addons:
        store.get(a.identifier, 32)  # an add-on's {password} (first-format packages use it)
    store.save()
    services = []
    for s in stack.services:
        pkg = s.package
        services.append(
            ServiceSpec(
                identifier=s.identifier,
                name=s.name,
                kind=s.kind,
                package=pkg.recipe or pkg.name,
                folder=s.folder,
                commands=_commands(s),
                ports=tuple(PortSpec(p.name, p.port, p.public, p.protocol) for p in pkg.ports),
                volumes=tuple(VolumeSpec(v.name, v.path, v.size) for v in pkg.storage if deployment.stage in v.stages),
                env=env[s.identifier],
                exports=exports[s.identifier],
                imports=_imports(stack, s, exports),
                password=store.values.get(s.identifier, "") if s.kind == "addon" else "",
                health=dict(pkg.health),
                status_path=pkg.status,
                reload=pkg.reload,
                image=package_image(s),
                images=tuple(sorted(package_images(s).items())),
                chart=pkg.chart,
                container=pkg.container,
                context_root=pkg.context_root,
                start_commands=s.start_commands,
                toggles=pkg.toggles,
            )
        )
    spec = replace(
        minimal_spec(deployment),
        commit=commit,
        services=tuple(services),
        hosts=tuple(deployment.domains.filter(verified=True).values_list("name", flat=True)),  # only what DNS showed is theirs
        release=release.commit if release else "",
        images=tuple(sorted(release.images.items())) if release else (),
        registries=tuple(RegistryCredential.objects.filter(project_id=deployment.project_id).values_list("host", "username", "password")),
    )
    return get_runtime().specialise(spec)


def minimal_spec(deployment: Deployment) -> DeploymentSpec:
    """Enough for destroy and for stopping/starting: works even when the stack or repository is gone."""
    return DeploymentSpec(
        id=deployment.pk,
        slug=deployment.slug,
        project_slug=deployment.project.slug,
        stage=deployment.stage,
        repository=deployment.project.repository,
        mirror=str(project_mirror(deployment.project)),
        branch=deployment.branch,
        commit=deployment.commit,
        enabled=deployment.enabled,
    )


def current_spec(deployment: Deployment) -> DeploymentSpec:
    """The spec of what runs now (the deployment's current commit and release), or a minimal one."""
    if not deployment.commit:
        return minimal_spec(deployment)
    release = deployment.release if deployment.release_id else None
    try:
        stack = load_stack(deployment, deployment.commit, release.package_locks if release else None)
    except (StackInvalid, git.GitError):
        return minimal_spec(deployment)
    return build_spec(deployment, stack, deployment.commit, release)


def _commands(service: Service) -> dict[str, str]:
    """The package's commands, with the project's own start commands (`containerCommands`) in place
    of its development and start commands; a package that only gives a chart keeps none (its
    chart reads them)."""
    commands = dict(service.package.commands)
    if service.package.runs_locally:
        commands.update({START_COMMANDS[key]: text for key, text in service.start_commands})
    return commands


def package_image(service: Service) -> str:
    """The image Diploi's package file gives (`images`: the one named like the package's main host,
    else the first): `image` as written, or `prebuildImage` with its `[tag]` filled with the
    package's ref (the part after `#`; `main` when there is none). A component entry's own
    `prebuildImage` in the project file comes first."""
    images = service.package.images
    if service.prebuild_image:
        return service.prebuild_image.replace("[tag]", split_package_ref(service.package_ref)[1] or "main")
    if not images:
        return ""
    hosts = {h.identifier for h in service.package.hosts}
    return package_images(service)[next((i for i in images if i.identifier in hosts), images[0]).identifier]


def package_images(service: Service) -> dict[str, str]:
    """Each of the package's images by its identifier: `image` as written, or `prebuildImage` with its
    `[tag]` filled with the package's ref."""
    tag = split_package_ref(service.package_ref or service.package.source)[1] or "main"
    return {i.identifier: i.image or i.prebuild.replace("[tag]", tag) for i in service.package.images}


def _imports(stack: Stack, service: Service, exports: dict[str, dict[str, str]]) -> tuple[EnvImport, ...]:
    """The service's env.include resolved to (name, provider, provider's name) triples, matched
    against what each other service provides; later entries win."""
    found: dict[str, EnvImport] = {}
    for entry in service.env_include:
        if entry.value is not None:
            continue
        for source in stack.services:
            if source.identifier == service.identifier:
                continue
            for name in exports[source.identifier]:
                if entry.matches(source.identifier, name):
                    target = entry.alias or name
                    found[target] = EnvImport(target, source.identifier, name)
    return tuple(found.values())
