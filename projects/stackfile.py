"""The stack file, `diploi.yaml`: which components and add-ons make up a project, and their env."""

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from projects.package import PACKAGE_FILE, Package, builtin_names, load_builtin, parse_package
from projects.stackerrors import Problems, StackError
from projects.validators import dns_label_error, env_name_error, safe_relative_folder

STACK_FILE = "diploi.yaml"
SUPPORTED_VERSIONS = ("v1.0",)
MAX_STACK_BYTES = 64 * 1024
_ARTICLE = {"component": "a component", "addon": "an add-on"}
_INCLUDE = re.compile(r"^(?P<ident>[^.\s]+)\.(?P<name>\*|[^:\s]+)(?::(?P<alias>\S+))?$")


@dataclass(frozen=True)
class Service:
    """A component or an add-on as the stack file declares it, with its resolved package."""

    name: str
    identifier: str
    kind: str
    folder: str
    package: Package


@dataclass(frozen=True)
class EnvInclude:
    """One `env.include` entry: everything (`*`), one service's env, one variable, or a literal."""

    identifier: str = ""  # "" for `*` and literals
    name: str = ""  # "*" for all of a service's variables; "" for `*`
    alias: str = ""
    value: str | None = None  # literals only


@dataclass
class Stack:
    version: str
    components: list[Service] = field(default_factory=list)
    addons: list[Service] = field(default_factory=list)
    env_include: list[EnvInclude] = field(default_factory=list)

    @property
    def services(self) -> list[Service]:
        return [*self.components, *self.addons]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RepoReader(Protocol):
    """The repository at the commit being checked."""

    def read(self, path: str) -> bytes | None:
        """The file's content, or None when there is no such file."""

    def is_folder(self, path: str) -> bool: ...


def parse_stack(text: bytes | str | None, repo: RepoReader) -> tuple[Stack | None, list[StackError]]:
    p = Problems(STACK_FILE)
    if text is None:
        p.add("", "not found at the root of the branch")
        return None, p.errors
    if len(text) > MAX_STACK_BYTES:
        p.add("", f"is larger than {MAX_STACK_BYTES // 1024} KiB")
        return None, p.errors
    data = p.load_yaml(text)
    if not p.mapping(data, "", {"diploiVersion", "components", "addons", "env"}, required={"diploiVersion"}):
        return None, p.errors

    version = data.get("diploiVersion")
    if version is not None and str(version) not in SUPPORTED_VERSIONS:
        p.add("diploiVersion", f"“{version}” is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})")

    packages = _PackageLoader(repo)
    seen: dict[str, str] = {}
    components = _services(p, data.get("components"), "components", "component", seen, packages)
    addons = _services(p, data.get("addons"), "addons", "addon", seen, packages)
    if not components and "components" not in [e.field.split("[")[0] for e in p.errors]:
        p.add("components", "at least one component is required")
    env_include = _env_include(p, data.get("env"), {s.identifier: s for s in [*components, *addons]}, set(seen))

    errors = p.errors + packages.errors
    if errors:
        return None, errors
    return Stack(version=str(version), components=components, addons=addons, env_include=env_include), []


class _PackageLoader:
    """Resolves package references once each, keeping the errors of repository packages."""

    def __init__(self, repo: RepoReader) -> None:
        self.repo = repo
        self.cache: dict[str, Package | None] = {}
        self.errors: list[StackError] = []

    def load(self, ref: str) -> tuple[Package | None, str | None]:
        """The package, or None and the reason it cannot be used."""
        if ref in self.cache:
            return self.cache[ref], None if self.cache[ref] else "is not a valid package (see its own errors)"
        if ref.startswith("./"):
            folder = safe_relative_folder(ref[2:])
            if folder is None or folder == ".":
                return None, "must name a folder inside the repository"
            path = f"{folder}/{PACKAGE_FILE}"
            text = self.repo.read(path)
            if text is None:
                return None, f"the repository has no {path}"
            package, errors = parse_package(text, path, source=ref)
            self.errors.extend(errors)
        elif ref in builtin_names():
            package, errors = load_builtin(ref)
        else:
            return None, (
                f"unknown package “{ref}” (built-in packages: {', '.join(builtin_names())}; "
                f"a package in this repository is written ./folder)"
            )
        self.cache[ref] = package
        return package, None if package else "is not a valid package (see its own errors)"


def _services(p: Problems, value: object, section: str, kind: str, seen: dict[str, str], packages: _PackageLoader) -> list[Service]:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(section, "must be a list")
        return []
    allowed = {"name", "identifier", "package", "folder"} if kind == "component" else {"name", "identifier", "package"}
    services = []
    for i, item in enumerate(value):
        where = f"{section}[{i}]"
        if not p.mapping(item, where, allowed, required={"name", "identifier", "package"}):
            continue
        identifier = str(item.get("identifier") or "")
        if identifier:
            if err := dns_label_error(identifier):
                p.add(f"{where}.identifier", f"“{identifier}” {err}")
            elif identifier in seen:
                p.add(f"{where}.identifier", f"“{identifier}” is already used by {seen[identifier]}; identifiers must be unique")
            else:
                seen[identifier] = where
        folder = "."
        if kind == "component":
            raw_folder = p.string(item.get("folder", "/"), f"{where}.folder")
            folder = safe_relative_folder(raw_folder or "/") if raw_folder is not None else None
            if folder is None and raw_folder is not None:
                p.add(f"{where}.folder", f"“{raw_folder}” points outside the repository")
            elif folder not in (None, ".") and not packages.repo.is_folder(folder):
                p.add(f"{where}.folder", f"“{raw_folder}” does not exist in the repository")
        ref = p.string(item.get("package"), f"{where}.package") if item.get("package") else None
        package = None
        if ref:
            package, reason = packages.load(ref)
            if reason:
                p.add(f"{where}.package", reason)
            elif package and package.kind != kind:
                p.add(f"{where}.package", f"“{ref}” is {_ARTICLE[package.kind]} package and cannot be used as {_ARTICLE[kind]}")
        if package and identifier and folder is not None and not any(e.field.startswith(where) for e in p.errors):
            services.append(Service(str(item["name"]), identifier, kind, folder, package))
    return services


def _env_include(p: Problems, value: object, services: dict[str, Service], identifiers: set[str]) -> list[EnvInclude]:
    if value is None:
        return []
    if not p.mapping(value, "env", {"include"}):
        return []
    entries = value.get("include") or []
    if not isinstance(entries, list):
        p.add("env.include", "must be a list")
        return []
    result = []
    for i, entry in enumerate(entries):
        where = f"env.include[{i}]"
        if isinstance(entry, dict):
            if p.mapping(entry, where, {"name", "value"}, required={"name"}):
                name = str(entry.get("name"))
                if err := env_name_error(name):
                    p.add(f"{where}.name", f"“{name}” {err}")
                elif "value" not in entry:
                    p.add(f"{where}.value", "is required")
                else:
                    raw = entry["value"]
                    val = "" if raw is None else str(raw).lower() if isinstance(raw, bool) else str(raw)
                    result.append(EnvInclude(name=name, value=val))
            continue
        if not isinstance(entry, str):
            p.add(where, "must be “*”, “identifier.*”, “identifier.NAME”, “identifier.NAME:ALIAS” or {name, value}")
            continue
        if entry == "*":
            result.append(EnvInclude())
            continue
        m = _INCLUDE.match(entry)
        if not m:
            p.add(where, f"“{entry}” must be “*”, “identifier.*”, “identifier.NAME” or “identifier.NAME:ALIAS”")
            continue
        ident, name, alias = m["ident"], m["name"], m["alias"] or ""
        if ident not in identifiers:
            p.add(where, f"“{ident}” is not the identifier of a component or add-on")
            continue
        if name == "*":
            if alias:
                p.add(where, "“identifier.*” cannot be renamed")
                continue
        elif err := env_name_error(name):
            p.add(where, f"“{name}” {err}")
            continue
        elif ident in services and name not in services[ident].package.env:
            exported = ", ".join(services[ident].package.env) or "nothing"
            p.add(where, f"“{ident}” does not provide {name} (it provides: {exported})")
            continue
        if alias and (err := env_name_error(alias)):
            p.add(where, f"alias “{alias}” {err}")
            continue
        result.append(EnvInclude(identifier=ident, name=name, alias=alias))
    return result
