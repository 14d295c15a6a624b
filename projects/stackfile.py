"""The project file, `diploi.yaml` in Diploi's format: which components and add-ons make up a project,
where each one's package comes from, and which env each one includes from the others."""

import dataclasses
import fnmatch
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from projects import values
from projects.builtins import recipe_for
from projects.git import GitError
from projects.legacy import LEGACY_PACKAGE_FILE, parse_legacy_package
from projects.package import CHART_FOLDER, PACKAGE_FILE, Package, builtin_names, load_builtin, parse_package
from projects.stackerrors import Problems, StackError, TooLarge
from projects.validators import dns_label_error, env_name_error, own_env_name_error, safe_relative_folder

STACK_FILE = "diploi.yaml"
SUPPORTED_VERSIONS = ("v1.0",)
MAX_STACK_BYTES = 64 * 1024
MAX_PACKAGE_BYTES = 64 * 1024
MAX_SERVICES = 50
MAX_INCLUDES = 200
READ_BUDGET = 10.0  # seconds to read a stack and its packages (fetches included); past it the rest is refused
_ARTICLE = {"component": "a component", "addon": "an add-on"}
# `postgres.POSTGRES_USER:DB_USER`, `postgres.POSTGRES_*`, `postgres.*`, `post*`
_INCLUDE = re.compile(r"^(?P<ident>[a-z0-9*-]+)(?:\.(?P<name>[A-Za-z0-9_*]+)(?::(?P<alias>\S+))?)?$")
_ENTRY = {"name", "identifier", "package", "folder", "env", "prebuildImage", "containerCommands"}
START_COMMANDS = {"developmentStart": "development", "productionStart": "start"}  # containerCommands → our command names
MAX_COMMAND = 4096
_URL = re.compile(r"^(https?|ssh|git|file)://|^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:|^/")


@dataclass(frozen=True)
class EnvInclude:
    """One `env.include` entry: services and names by pattern (`*`, `post*`, `postgres.POSTGRES_*`,
    `postgres.USER:ALIAS`), or a literal {name, value}."""

    identifier: str = "*"  # a service identifier, or a pattern with *
    name: str = "*"  # a variable name, or a pattern with *
    alias: str = ""
    value: str | None = None  # literals only

    def matches(self, identifier: str, name: str) -> bool:
        return self.value is None and fnmatch.fnmatchcase(identifier, self.identifier) and fnmatch.fnmatchcase(name, self.name)


@dataclass(frozen=True)
class Service:
    """A component or an add-on as the project file declares it, with its resolved package."""

    name: str
    identifier: str
    kind: str
    folder: str
    package: Package
    package_ref: str = ""  # as written in the file
    prebuild_image: str = ""
    env_include: tuple[EnvInclude, ...] = ()
    # `containerCommands`: the project's own start commands (developmentStart, productionStart)
    start_commands: tuple[tuple[str, str], ...] = ()


@dataclass
class Stack:
    version: str
    components: list[Service] = field(default_factory=list)
    addons: list[Service] = field(default_factory=list)
    kind: str = ""  # "starter" or ""
    name: str = ""
    description: str = ""
    preview_images: list[str] = field(default_factory=list)
    warnings: list[StackError] = field(default_factory=list)

    @property
    def services(self) -> list[Service]:
        return [*self.components, *self.addons]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RepoReader(Protocol):
    """The repository at the commit being checked."""

    def read(self, path: str, limit: int) -> bytes | None:
        """The file's content, or None when there is no such file; TooLarge above `limit` bytes."""

    def is_folder(self, path: str) -> bool: ...


class RemotePackages(Protocol):
    """Packages named by Git URL: (commit, package file text or None), or GitError/TooLarge."""

    def fetch(self, url: str, ref: str, limit: int) -> tuple[str, bytes | None]: ...

    def chart(self, url: str, commit: str, limit: int) -> tuple[tuple[str, str], ...]: ...


def parse_stack(text: bytes | str | None, repo: RepoReader, remote: RemotePackages | None = None) -> tuple[Stack | None, list[StackError]]:
    """The project file's stack, or the errors that stop it (each naming file, field and reason)."""
    p = Problems(STACK_FILE)
    if text is None:
        p.add("", "not found at the root of the branch")
        return None, p.errors
    if len(text) > MAX_STACK_BYTES:
        p.add("", f"is larger than {MAX_STACK_BYTES // 1024} KiB")
        return None, p.errors
    data = p.load_yaml(text)
    top = {"diploiVersion", "type", "name", "description", "previewImageUrls", "components", "addons", "env"}
    if not p.mapping(data, "", top, required={"diploiVersion"}, lenient=True):
        return None, p.errors

    version = data.get("diploiVersion")
    if version is not None and str(version) not in SUPPORTED_VERSIONS:
        p.add("diploiVersion", f"“{version}” is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})")
    kind = data.get("type")
    if kind in ("component", "addon"):
        p.add("type", f"this is {_ARTICLE[kind]} package's file, not a project's: a project's diploi.yaml lists components and addons")
    elif kind not in (None, "starter"):
        p.add("type", "must be starter (or left out) in a project's diploi.yaml")
    previews = data.get("previewImageUrls") or []
    if not isinstance(previews, list) or not all(isinstance(u, str) for u in previews):
        p.add("previewImageUrls", "must be a list of image paths or URLs")
        previews = []

    shared: list[EnvInclude] = []
    if data.get("env") is not None:
        p.warn("env", "a top-level env is this platform's first format (deprecated): move its include under each component's env")
        shared = _env_include(p, data["env"], "env")
    packages = _PackageLoader(repo, remote)
    seen: dict[str, str] = {}
    components = _services(p, data.get("components"), "components", "component", seen, packages, shared)
    addons = _services(p, data.get("addons"), "addons", "addon", seen, packages, [])
    components, addons = _with_dependencies(p, components, addons, seen, packages)
    if not components and not packages.unchecked and "components" not in [e.field.split("[")[0] for e in p.errors]:
        p.add("components", "at least one component is required")
    _check_includes(p, [*components, *addons], set(seen), packages.unchecked)

    errors = p.errors + packages.errors
    if errors:
        return None, errors + p.warnings + packages.warnings
    stack = Stack(
        version=str(version),
        components=components,
        addons=addons,
        kind=str(kind or ""),
        name=str(data.get("name") or ""),
        description=str(data.get("description") or ""),
        preview_images=[str(u) for u in previews[:10]],
        warnings=p.warnings + packages.warnings,
    )
    return stack, []


def split_package_ref(ref: str) -> tuple[str, str]:
    """`https://host/repo#v1.2` → (url, "v1.2"); no `#` → (url, "") (the default branch)."""
    url, _, version = ref.partition("#")
    return url, version


class _PackageLoader:
    """Resolves package references once each, keeping the problems of the package files."""

    def __init__(self, repo: RepoReader, remote: RemotePackages | None) -> None:
        self.repo = repo
        self.remote = remote
        self.deadline = time.monotonic() + READ_BUDGET
        self.cache: dict[str, tuple[Package | None, str | None]] = {}
        self.errors: list[StackError] = []
        self.warnings: list[StackError] = []
        self.unchecked: set[str] = set()  # services whose package was not fetched (offline)

    def load(self, ref: str) -> tuple[Package | None, str | None]:
        """The package, or None and the reason it cannot be used."""
        if ref not in self.cache:
            if time.monotonic() > self.deadline:
                return None, f"not read: reading this stack's packages took more than {READ_BUDGET:g} s"
            self.cache[ref] = self._load(ref)
        return self.cache[ref]

    def _read(self, text: bytes | None, path: str, source: str, legacy_path: str = "") -> tuple[Package | None, str | None]:
        if text is not None:
            package, problems = parse_package(text, path, source=source)
        elif legacy_path and (text := self._repo_read(legacy_path)) is not None:
            package, problems = parse_legacy_package(text, legacy_path, source=source)
            if package:
                self.warnings.append(
                    StackError(legacy_path, "", f"is this platform's first package format (deprecated): write it as {path}", "warning")
                )
        else:
            return None, f"the repository has no {path}"
        (self.warnings if package else self.errors).extend(problems)
        return package, None if package else "is not a valid package (see its own errors)"

    def _repo_read(self, path: str) -> bytes | None:
        try:
            return self.repo.read(path, MAX_PACKAGE_BYTES)
        except TooLarge as e:
            self.errors.append(StackError(path, "", f"{e}; a package file may be at most {MAX_PACKAGE_BYTES // 1024} KiB"))
            return None

    def _load(self, ref: str) -> tuple[Package | None, str | None]:
        if ref.startswith("./"):
            folder = safe_relative_folder(ref[2:])
            if folder is None or folder == ".":
                return None, "must name a folder inside the repository"
            path = f"{folder}/{PACKAGE_FILE}"
            return self._read(self._repo_read(path), path, ref, legacy_path=f"{folder}/{LEGACY_PACKAGE_FILE}")
        if ref in builtin_names():
            package, _ = load_builtin(ref)
            return package, None
        if not _URL.match(ref):
            return None, (
                f"unknown package “{ref}” (a Git URL with #version, a built-in package — {', '.join(builtin_names())} — "
                f"or a package in this repository, written ./folder)"
            )
        url, version = split_package_ref(ref)
        if recipe := recipe_for(url):
            package, _ = load_builtin(recipe)
            return dataclasses.replace(package, source=ref, recipe=recipe), None
        if self.remote is None:
            return None, NOT_FETCHED
        try:
            commit, text = self.remote.fetch(url, version, MAX_PACKAGE_BYTES)
        except TooLarge as e:
            return None, f"its {PACKAGE_FILE} {e}; a package file may be at most {MAX_PACKAGE_BYTES // 1024} KiB"
        except GitError as e:
            return None, str(e)
        if text is None:
            return None, f"its repository has no {PACKAGE_FILE} at {version or 'the default branch'} ({commit[:10]})"
        package, reason = self._read(text, f"{url}#{version} {PACKAGE_FILE}" if version else f"{url} {PACKAGE_FILE}", ref)
        if package is None:
            return None, reason
        try:
            chart = self.remote.chart(url, commit, MAX_PACKAGE_BYTES)
        except TooLarge as e:
            return None, f"a file of its {CHART_FOLDER} {e}; each may be at most {MAX_PACKAGE_BYTES // 1024} KiB"
        except GitError as e:
            return None, str(e)
        return dataclasses.replace(package, commit=commit, chart=chart), None


NOT_FETCHED = "not checked: a package by Git URL is fetched only when asked (stack check --fetch)"


def _services(
    p: Problems, value: object, section: str, kind: str, seen: dict[str, str], packages: _PackageLoader, shared: list[EnvInclude]
) -> list[Service]:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(section, "must be a list")
        return []
    if len(value) > MAX_SERVICES:
        p.add(section, f"has {len(value)} entries; at most {MAX_SERVICES} are allowed")
        return []
    services = []
    for i, item in enumerate(value):
        where = f"{section}[{i}]"
        if not p.mapping(item, where, _ENTRY, required={"name", "identifier", "package"}, lenient=True):
            continue
        identifier = str(item.get("identifier") or "")
        if identifier:
            if err := dns_label_error(identifier):
                p.add(f"{where}.identifier", f"“{identifier}” {err}")
            elif identifier in seen:
                p.add(f"{where}.identifier", f"“{identifier}” is already used by {seen[identifier]}; identifiers must be unique")
            else:
                seen[identifier] = where
        folder = _folder(p, item, where, identifier, packages.repo) if kind == "component" else "."
        ref = p.string(item.get("package"), f"{where}.package") if item.get("package") else None
        package = None
        if ref:
            package, reason = packages.load(ref)
            if reason == NOT_FETCHED:  # (offline `stack check`: the rest is checked)
                p.warn(f"{where}.package", reason)
                packages.unchecked.add(identifier)
            elif reason:
                p.add(f"{where}.package", reason)
            elif package and package.kind != kind:
                p.add(f"{where}.package", f"“{ref}” is {_ARTICLE[package.kind]} package and cannot be used as {_ARTICLE[kind]}")
        prebuild = p.string(item.get("prebuildImage"), f"{where}.prebuildImage") if item.get("prebuildImage") is not None else ""
        includes = _env_include(p, item["env"], f"{where}.env") if item.get("env") is not None else []
        starts = _start_commands(p, item["containerCommands"], f"{where}.containerCommands") if "containerCommands" in item else ()
        if package and kind == "component" and folder is not None and not package.runs_locally and _has_dockerfile(packages.repo, folder):
            # Diploi's component without a recipe here: its image, built from the folder's Dockerfile
            package = dataclasses.replace(package, container=DIPLOI_DOCKERFILES, context_root=True)
        if package and identifier and folder is not None and not any(e.field.startswith(where) for e in p.errors):
            own = tuple(includes) + (tuple(shared) if kind == "component" else ())
            services.append(Service(str(item["name"]), identifier, kind, folder, package, ref or "", prebuild or "", own, starts))
    return services


DIPLOI_DOCKERFILES = ("Dockerfile", "Dockerfile.dev")


def _has_dockerfile(repo: "RepoReader", folder: str) -> bool:
    """Whether the component's folder has a Dockerfile (Diploi's components carry theirs there)."""
    try:
        return repo.read("Dockerfile" if folder in ("", ".") else f"{folder}/Dockerfile", MAX_PACKAGE_BYTES) is not None
    except TooLarge:
        return True  # (its build says what is wrong with it)
    except GitError:
        return False


def _start_commands(p: Problems, value: object, where: str) -> tuple[tuple[str, str], ...]:
    """Diploi's `containerCommands` of a component entry: the shell text that starts it in development
    (developmentStart) and in staging/production (productionStart), instead of its package's."""
    if not p.mapping(value, where, set(START_COMMANDS)):
        return ()
    found = []
    for key, text in sorted(value.items()):
        command = p.string(text, f"{where}.{key}")
        if command is None:
            continue
        if not command.strip() or len(command) > MAX_COMMAND or "\0" in command:
            p.add(f"{where}.{key}", f"must be a shell command of 1 to {MAX_COMMAND} characters")
            continue
        found.append((key, command))
    return tuple(found)


def _with_dependencies(
    p: Problems, components: list[Service], addons: list[Service], seen: dict[str, str], packages: _PackageLoader
) -> tuple[list[Service], list[Service]]:
    """Each component's package `dependencies` as add-ons of the project (one per identifier: an add-on
    the project declares itself under that identifier is used as it is), their listed variables
    included into the component before its own includes (which win)."""
    by_id = {a.identifier: a for a in addons}
    found: list[Service] = []
    result = []
    for c in components:
        extra: list[EnvInclude] = []
        for i, dep in enumerate(c.package.dependencies):
            where = f"{seen.get(c.identifier, c.identifier)}.package: dependencies[{i}]"
            if dep.identifier not in by_id:
                if dep.identifier in seen:
                    p.add(where, f"“{dep.identifier}” is already used by {seen[dep.identifier]}, which is not an add-on")
                    continue
                package, reason = packages.load(dep.package)
                if reason or package is None:
                    p.add(where, f"“{dep.package}”: {reason}")
                    continue
                if package.kind != "addon":
                    p.add(where, f"“{dep.package}” is {_ARTICLE[package.kind]} package, not an add-on")
                    continue
                by_id[dep.identifier] = Service(package.name, dep.identifier, "addon", ".", package, dep.package)
                seen[dep.identifier] = where
                found.append(by_id[dep.identifier])
            for text in dep.includes:
                name, _, alias = text.partition(":")
                extra.append(EnvInclude(identifier=dep.identifier, name=name, alias=alias))
        result.append(dataclasses.replace(c, env_include=(*extra, *c.env_include)) if extra else c)
    return result, [*addons, *found]


def _folder(p: Problems, item: dict, where: str, identifier: str, repo: RepoReader) -> str | None:
    """The component's folder: as written, else its identifier's folder when the repository has one
    (Diploi's rule), else the repository's root."""
    if "folder" not in item:
        return identifier if identifier and not dns_label_error(identifier) and repo.is_folder(identifier) else "."
    raw = p.string(item.get("folder") or "/", f"{where}.folder")
    if raw is None:
        return None
    folder = safe_relative_folder(raw)
    if folder is None:
        p.add(f"{where}.folder", f"“{raw}” points outside the repository")
    elif folder != "." and not repo.is_folder(folder):
        p.add(f"{where}.folder", f"“{raw}” does not exist in the repository")
        return None
    return folder


def _env_include(p: Problems, value: object, where: str) -> list[EnvInclude]:
    if not p.mapping(value, where, {"include"}, lenient=True):
        return []
    entries = value.get("include")
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]  # Diploi writes `include: '*'`
    if not isinstance(entries, list):
        p.add(f"{where}.include", "must be a list, or '*'")
        return []
    if len(entries) > MAX_INCLUDES:
        p.add(f"{where}.include", f"has {len(entries)} entries; at most {MAX_INCLUDES} are allowed")
        return []
    result = []
    for i, entry in enumerate(entries):
        if include := _include(p, entry, f"{where}.include[{i}]"):
            result.append(include)
    return result


_SHAPES = "“*”, “identifier.*”, “identifier.PREFIX_*”, “prefix*”, “identifier.NAME”, “identifier.NAME:ALIAS”, {path, name} or {name, value}"


def _include(p: Problems, entry: object, where: str) -> EnvInclude | None:
    if isinstance(entry, dict):
        if "path" in entry:  # {path: postgres.POSTGRES_USER, name: DB_USER}
            if not p.mapping(entry, where, {"path", "name"}, required={"path"}):
                return None
            text = str(entry["path"]) + (f":{entry['name']}" if entry.get("name") else "")
            return _include(p, text, where)
        if not p.mapping(entry, where, {"name", "value"}, required={"name"}):
            return None
        name = str(entry.get("name"))
        if err := own_env_name_error(name):
            p.add(f"{where}.name", f"“{name}” {err}")
        elif "value" not in entry:
            p.add(f"{where}.value", "is required")
        else:
            raw = entry["value"]
            text = "" if raw is None else str(raw).lower() if isinstance(raw, bool) else str(raw)
            for problem in values.check_text(text):
                p.add(f"{where}.value", problem)
            if "${generate-jwt:" in text:  # (a literal has no parameters to sign with)
                p.add(f"{where}.value", "generate-jwt signs with a parameter of a package: declare it in the package's parameterGroups")
            return EnvInclude(identifier="", name=name, value=text)
        return None
    if not isinstance(entry, str):
        p.add(where, f"must be {_SHAPES}")
        return None
    m = _INCLUDE.fullmatch(entry)
    if not m:
        p.add(where, f"“{entry}” must be {_SHAPES}")
        return None
    ident, name, alias = m["ident"], m["name"] or "*", m["alias"] or ""
    if "*" in ident and m["name"] is not None and ident != "*":
        p.add(where, f"“{entry}”: a pattern of identifiers (“{ident}”) takes all of their variables; write “{ident}” alone")
        return None
    if alias:
        if "*" in name:
            p.add(where, f"“{entry}”: only a single variable can be renamed")
            return None
        if err := own_env_name_error(alias):
            p.add(where, f"alias “{alias}” {err}")
            return None
    if "*" not in name and (err := env_name_error(name)):
        p.add(where, f"“{name}” {err}")
        return None
    return EnvInclude(identifier=ident, name=name, alias=alias)


def _check_includes(p: Problems, services: list[Service], identifiers: set[str], unchecked: set[str]) -> None:
    """An include naming no service, or a variable its service does not provide, is a warning:
    the deployment runs without it (as on Diploi), and the project page says so."""
    exports = {s.identifier: set(s.package.env) | set(s.package.endpoints) for s in services}
    for s in services:
        for include in s.env_include:
            if include.value is not None or include.identifier == "*":
                continue
            shown = f"{include.identifier}.{include.name}" if include.name != "*" else include.identifier
            targets = [i for i in identifiers if fnmatch.fnmatchcase(i, include.identifier)]
            if not targets:
                p.warn(f"{s.identifier}.env.include", f"“{shown}” names no component or add-on of this project; it includes nothing")
            elif "*" not in include.name and not unchecked & set(targets) and not any(include.name in exports.get(t, ()) for t in targets):
                provided = ", ".join(sorted(exports.get(targets[0], ()))) or "nothing"
                p.warn(f"{s.identifier}.env.include", f"“{shown}”: {targets[0]} does not provide {include.name} (it provides: {provided})")
