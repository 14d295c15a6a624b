"""Packages: what a component or add-on is (Diploi's package file) and how it runs here.

A package file is Diploi's `diploi.yaml` with `type: component|addon` — name, description, hosts,
parameterGroups, connectionStrings, images, logs, storage — plus one block of ours, `local:`, which
says how to run the package as processes on this machine (commands, internal ports, health check,
where storage is mounted). The built-in packages in projects/packages/ are such files; a package
without a `local:` block runs only on the Kubernetes runtime (from its `images`).

Packages written in this platform's first format (`diploi-package.yaml`, `kind:`) are still read,
with a deprecation notice (projects/legacy.py).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projects import values
from projects.stackerrors import Problems, StackError
from projects.validators import dns_label_error, env_name_error, has_control_character

PACKAGE_FILE = "diploi.yaml"
CHART_FOLDER = ".diploi/helm"  # Diploi's: the package's Kubernetes objects, as Helm templates
MAX_CHART_FILES = 30
MAX_CHART_BYTES = 256 * 1024  # all of them together (they are kept with the project's stack)
BUILTIN_DIR = Path(__file__).parent / "packages"
KINDS = ("component", "addon")
COMMANDS = ("install", "build", "start", "development")
PARAMETER_TYPES = ("string", "integer", "secret", "boolean")
MAX_HOSTS = 20
MAX_PARAMETERS = 200
MAX_ITEMS = 50  # connection strings, logs, images, storage
_TOP = {
    "diploiVersion",
    "type",
    "name",
    "description",
    "hosts",
    "parameterGroups",
    "environmentVariables",
    "connectionStrings",
    "images",
    "logs",
    "storage",
    "contexts",
    "supportsAdditionalHosts",
    "defaultContainer",  # which of its images' containers a shell and logs open first (one process here)
    "dependencies",
    "local",
}
STAGES = ("development", "staging", "production")


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    public: bool = False
    protocol: str = "http"


@dataclass(frozen=True)
class Storage:
    name: str
    path: str
    size: str = "1Gi"
    stages: tuple[str, ...] = STAGES  # the stages whose deployments have it
    uid: int | None = None  # who owns its files in a container (the image's user)
    gid: int | None = None


@dataclass(frozen=True)
class Dependency:
    """An add-on a component brings with it (Diploi's `dependencies`): created beside it under its
    own identifier, the listed variables included into the component (`NAME:ALIAS`)."""

    identifier: str
    package: str
    includes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Parameter:
    key: str
    type: str
    group: str
    label: str
    default: str = ""
    readonly: bool = False
    description: str = ""
    group_description: str = ""


@dataclass(frozen=True)
class Host:
    identifier: str
    name: str
    port: int | None = None


@dataclass(frozen=True)
class ConnectionString:
    name: str
    value: str
    description: str = ""


@dataclass(frozen=True)
class LogStream:
    name: str
    type: str  # "log" (a container's output) | "exec" (a command's output)
    selector: str = ""
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Image:
    identifier: str
    image: str = ""
    prebuild: str = ""  # Diploi's prebuilt image, "[tag]" filled with the package's ref


@dataclass(frozen=True)
class Package:
    name: str
    kind: str
    source: str
    description: str = ""
    commands: dict[str, str] = field(default_factory=dict)  # empty: no recipe for local processes
    ports: tuple[Port, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # what the service provides to others (templates)
    storage: tuple[Storage, ...] = ()
    parameters: tuple[Parameter, ...] = ()
    health: dict[str, Any] = field(default_factory=dict)
    hosts: tuple[Host, ...] = ()
    connection_strings: tuple[ConnectionString, ...] = ()
    logs: tuple[LogStream, ...] = ()
    images: tuple[Image, ...] = ()
    reload: bool = False  # development: restart the development command when the code changes
    status: str = ""  # a path where the component serves Diploi's status format (polled by the monitor)
    recipe: str = ""  # the built-in package serving it ("" for a package of the repository's or fetched by URL)
    commit: str = ""  # a package fetched by Git URL: the commit it was read at
    legacy: bool = False  # written in the first format (diploi-package.yaml)
    chart: tuple[tuple[str, str], ...] = ()  # its Helm templates (.diploi/helm/): what it is on Kubernetes
    dependencies: tuple[Dependency, ...] = ()
    # local.container: (Dockerfile, development Dockerfile) in the component's folder, built and run with podman
    container: tuple[str, str] = ()
    # Diploi's convention for its components' Dockerfiles: built with the repository as the context and
    # FOLDER=/app/<folder> (else the component's folder is the context)
    context_root: bool = False
    toggles: tuple[tuple[str, bool], ...] = ()  # each toggleable parameter group and whether it is on (its default)

    @property
    def runs_locally(self) -> bool:
        return "start" in self.commands or bool(self.container)

    @property
    def endpoints(self) -> dict[str, str]:
        """A component's `<HOST>_ENDPOINT` per public port (host) → the runtime's placeholder of its URL."""
        return values.endpoint_variables([p.name for p in self.ports if p.public]) if self.kind == "component" else {}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_builtin(name: str) -> tuple[Package | None, list[StackError]]:
    path = BUILTIN_DIR / f"{name}.yaml"
    package, problems = parse_package(path.read_text(), f"built-in package {name}", source=name)
    return (dataclasses.replace(package, recipe=name) if package else None), problems


def parse_package(text: str | bytes, file: str, source: str) -> tuple[Package | None, list[StackError]]:
    """A package file in Diploi's format (with our `local:` block), or the errors that stop it."""
    p = Problems(file)
    data = p.load_yaml(text)
    if not p.mapping(data, "", _TOP, required={"name", "type"}, lenient=True):
        return None, p.errors
    kind = data.get("type")
    if kind is not None and kind not in KINDS:
        p.add("type", f"must be component or addon in a package file (“{kind}” is for a project's own diploi.yaml)")

    parameters = _parameter_groups(p, data.get("parameterGroups"))
    toggles = _toggles(data.get("parameterGroups"))
    parameters += _environment_variables(p, data.get("environmentVariables"), len(parameters))
    parameters = _without_duplicates(p, parameters)
    hosts = _hosts(p, data.get("hosts"))
    local = _local(p, data.get("local"), kind, hosts)
    storage = _storage(p, data.get("storage"), local.get("storage", {}))

    templates = {q.key: q.default for q in parameters}
    for where, err in values.check(templates, local.get("placeholders", set()), tuple(h.identifier for h in hosts)):
        p.add(f"parameterGroups.{where}", err)
    strings = _connection_strings(p, data.get("connectionStrings"), set(templates))
    logs, images = _logs(p, data.get("logs")), _images(p, data.get("images"))
    dependencies = _dependencies(p, data.get("dependencies"), kind)

    if p.errors:
        return None, p.errors + p.warnings
    return (
        Package(
            name=str(data["name"]),
            kind=kind,
            source=source,
            description=str(data.get("description") or ""),
            commands=local.get("commands", {}),
            ports=tuple([Port(name=h.identifier, port=h.port, public=True) for h in hosts if h.port] + local.get("ports", [])),
            env=dict(templates),
            storage=tuple(storage),
            parameters=tuple(parameters),
            health=local.get("health", {}),
            status=local.get("status", ""),
            reload=local.get("reload", False),
            container=local.get("container", ()),
            toggles=toggles,
            hosts=tuple(hosts),
            connection_strings=tuple(strings),
            logs=tuple(logs),
            images=tuple(images),
            dependencies=tuple(dependencies),
        ),
        p.warnings,
    )


def _without_duplicates(p: Problems, parameters: list[Parameter]) -> list[Parameter]:
    """A key declared twice (in parameterGroups and environmentVariables, as Diploi's MariaDB add-on
    does) is a warning: the first declaration is the one used."""
    first: dict[str, Parameter] = {}
    for q in parameters:
        if q.key not in first:
            first[q.key] = q
            continue
        same = (
            "with the same default"
            if q.default == first[q.key].default
            else f"(default “{first[q.key].default}” is used, not “{q.default}”)"
        )
        p.warn(q.group or "environmentVariables", f"{q.key} is declared more than once {same}; the first declaration is used")
    return list(first.values())


def _dependencies(p: Problems, value: object, kind: object) -> list[Dependency]:
    found = []
    for i, item in enumerate(_list(p, value, "dependencies", MAX_ITEMS)):
        where = f"dependencies[{i}]"
        if not p.mapping(item, where, {"identifier", "package", "env", "name"}, required={"identifier", "package"}, lenient=True):
            continue
        ident = _text(item.get("identifier"))
        if err := dns_label_error(ident):
            p.add(f"{where}.identifier", f"“{ident}” {err}")
            continue
        package = p.string(item.get("package"), f"{where}.package")
        includes: list[str] = []
        env = item.get("env")
        if env is not None and p.mapping(env, f"{where}.env", {"include"}):
            for j, entry in enumerate(_list(p, env.get("include"), f"{where}.env.include", MAX_PARAMETERS)):
                text = _text(entry)
                name, _, alias = text.partition(":")
                if not isinstance(entry, str) or env_name_error(name) or (alias and env_name_error(alias)):
                    p.add(f"{where}.env.include[{j}]", f"“{text}” must be NAME or NAME:ALIAS (a variable of the add-on)")
                    continue
                includes.append(text)
        if kind != "component":
            p.warn(where, "only a component's dependencies are created; this one is not")
        elif package:
            found.append(Dependency(ident, package, tuple(includes)))
    return found


def _list(p: Problems, value: object, field: str, cap: int) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(field, "must be a list")
        return []
    if len(value) > cap:
        p.add(field, f"has {len(value)} entries; at most {cap} are allowed")
        return []
    return value


def _text(value: object) -> str:
    """A scalar as Diploi writes them (numbers and booleans are fine: `defaultValue: 5432`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _parameter_groups(p: Problems, value: object) -> list[Parameter]:
    parameters: list[Parameter] = []
    allowed_group = {"name", "identifier", "description", "parameters", "toggleable", "defaultValue"}
    allowed = {"name", "identifier", "defaultValue", "type", "readOnly", "contexts", "description"}
    for g, group in enumerate(_list(p, value, "parameterGroups", MAX_PARAMETERS)):
        where = f"parameterGroups[{g}]"
        if not p.mapping(group, where, allowed_group, required={"name", "parameters"}, lenient=True):
            continue
        for i, item in enumerate(_list(p, group.get("parameters"), f"{where}.parameters", MAX_PARAMETERS)):
            if len(parameters) >= MAX_PARAMETERS:
                p.add("parameterGroups", f"declares more than {MAX_PARAMETERS} parameters")
                return parameters
            if q := _parameter(p, item, f"{where}.parameters[{i}]", allowed, _text(group.get("name")), _text(group.get("description"))):
                parameters.append(q)
    return parameters


def _toggles(value: object) -> tuple[tuple[str, bool], ...]:
    """The parameter groups a user may turn on or off (`toggleable`), each with its `defaultValue`
    (off unless true): a chart reads them as parameterGroupsEnabled. (What is wrong in a group was
    said by _parameter_groups.)"""
    groups = value if isinstance(value, list) else []
    return tuple(
        (str(g["identifier"]), g.get("defaultValue") in (True, "true"))
        for g in groups[:MAX_PARAMETERS]
        if isinstance(g, dict) and g.get("toggleable") is True and isinstance(g.get("identifier"), str) and g["identifier"]
    )


def _environment_variables(p: Problems, value: object, count: int) -> list[Parameter]:
    """Diploi's `environmentVariables`: parameters without a group."""
    allowed = {"identifier", "defaultValue", "type", "contexts", "name", "readOnly", "description"}
    found = []
    for i, item in enumerate(_list(p, value, "environmentVariables", MAX_PARAMETERS - count)):
        if q := _parameter(p, item, f"environmentVariables[{i}]", allowed, "Environment", ""):
            found.append(q)
    return found


def _parameter(p: Problems, item: object, where: str, allowed: set[str], group: str, description: str) -> Parameter | None:
    if not p.mapping(item, where, allowed, required={"identifier"}, lenient=True):
        return None
    key = _text(item.get("identifier"))
    if err := env_name_error(key):
        p.add(f"{where}.identifier", f"“{key}” {err}")
        return None
    kind = _text(item.get("type") or "string")
    if kind not in PARAMETER_TYPES:
        p.add(f"{where}.type", f"must be one of: {', '.join(PARAMETER_TYPES)}")
        return None
    default = _text(item.get("defaultValue"))
    if kind == "integer" and default and not values.REFERENCE.search(default) and not default.lstrip("-").isdigit():
        p.add(f"{where}.defaultValue", f"“{default}” is not an integer")
        return None
    return Parameter(
        key=key,
        type=kind,
        group=group,
        label=_text(item.get("name")) or key,
        default=default,
        readonly=item.get("readOnly") is True,
        description=_text(item.get("description")),
        group_description=description,
    )


def _hosts(p: Problems, value: object) -> list[Host]:
    hosts = []
    for i, item in enumerate(_list(p, value, "hosts", MAX_HOSTS)):
        where = f"hosts[{i}]"
        if not p.mapping(item, where, {"name", "identifier", "port", "urlFormat", "link"}, required={"identifier"}, lenient=True):
            continue
        ident = _text(item.get("identifier"))
        if err := dns_label_error(ident):
            p.add(f"{where}.identifier", f"“{ident}” {err}")
            continue
        port = item.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            p.add(f"{where}.port", "must be a port number from 1 to 65535")
            continue
        hosts.append(Host(identifier=ident, name=_text(item.get("name")) or ident, port=port))
    return hosts


def _connection_strings(p: Problems, value: object, parameters: set[str]) -> list[ConnectionString]:
    found = []
    for i, item in enumerate(_list(p, value, "connectionStrings", MAX_ITEMS)):
        where = f"connectionStrings[{i}]"
        if not p.mapping(item, where, {"name", "value", "description"}, required={"name", "value"}, lenient=True):
            continue
        text = _text(item.get("value"))
        for name in values.references(text):
            if name not in parameters and not values.is_runtime(name):  # (Diploi's MariaDB add-on has one)
                p.warn(
                    f"{where}.value",
                    f"${{{name}}} is neither a parameter of this package nor one of {values.runtime_names()}: left as written",
                )
        found.append(ConnectionString(_text(item.get("name")), text, _text(item.get("description"))))
    return found


def _logs(p: Problems, value: object) -> list[LogStream]:
    found = []
    for i, item in enumerate(_list(p, value, "logs", MAX_ITEMS)):
        where = f"logs[{i}]"
        if not p.mapping(item, where, {"name", "type", "labelSelector", "command"}, required={"name"}, lenient=True):
            continue
        kind = _text(item.get("type") or "log")
        if kind not in ("log", "exec"):
            p.add(f"{where}.type", "must be log or exec")
            continue
        command = item.get("command") or []
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            p.add(f"{where}.command", "must be a list of strings")
            continue
        found.append(LogStream(_text(item.get("name")), kind, _text(item.get("labelSelector")), tuple(command)))
    return found


def _images(p: Problems, value: object) -> list[Image]:
    found = []
    for i, item in enumerate(_list(p, value, "images", MAX_ITEMS)):
        where = f"images[{i}]"
        if not p.mapping(item, where, {"identifier", "image", "prebuildImage"}, required={"identifier"}, lenient=True):
            continue
        if not item.get("image") and not item.get("prebuildImage"):
            p.add(where, "needs image or prebuildImage")
            continue
        found.append(Image(_text(item.get("identifier")), _text(item.get("image")), _text(item.get("prebuildImage"))))
    return found


def _storage(p: Problems, value: object, paths: dict[str, str]) -> list[Storage]:
    volumes = []
    for i, item in enumerate(_list(p, value, "storage", MAX_ITEMS)):
        where = f"storage[{i}]"
        if not p.mapping(item, where, {"identifier", "sizeMiB", "stages", "uid", "gid"}, required={"identifier"}, lenient=True):
            continue
        ident = _text(item.get("identifier"))
        if err := dns_label_error(ident):
            p.add(f"{where}.identifier", f"“{ident}” {err}")
            continue
        size = item.get("sizeMiB", 1024)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 16 * 1024 * 1024:
            p.add(f"{where}.sizeMiB", "must be a whole number of MiB from 1 to 16777216")
            continue
        stages = item.get("stages", list(STAGES))
        if not isinstance(stages, list) or not stages or any(st not in STAGES for st in stages):
            p.add(f"{where}.stages", f"must be a list of {', '.join(STAGES)}")
            continue
        owner = {}
        for key in ("uid", "gid"):
            number = item.get(key)
            if number is not None and (isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**31):
                p.add(f"{where}.{key}", "must be a number from 0 to 2147483647")
            owner[key] = number
        volumes.append(Storage(ident, paths.get(ident, f"/storage/{ident}"), f"{size}Mi", tuple(stages), owner["uid"], owner["gid"]))
    for name in sorted(set(paths) - {v.name for v in volumes}):
        p.add(f"local.storage.{name}", "names no storage entry of this package")
    return volumes


def _local(p: Problems, value: object, kind: object, hosts: list[Host]) -> dict[str, Any]:
    """Our block: how the package runs as local processes."""
    if value is None:
        return {}
    known = {"install", "build", "start", "development", "ports", "health", "storage", "status", "reload", "container"}
    container = _container(p, value.get("container")) if isinstance(value, dict) else ()
    if not p.mapping(value, "local", known, required=set() if container else {"start"}):
        return {}
    commands = {}
    for key in COMMANDS:
        if key in value and (text := p.string(value[key], f"local.{key}")) is not None:
            commands[key] = text
    ports = []
    for i, item in enumerate(_list(p, value.get("ports"), "local.ports", MAX_HOSTS)):
        where = f"local.ports[{i}]"
        if not p.mapping(item, where, {"name", "port", "protocol"}, required={"name", "port"}):
            continue
        number = item.get("port")
        if err := dns_label_error(_text(item.get("name"))):
            p.add(f"{where}.name", err)
        elif isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            p.add(f"{where}.port", "must be a port number from 1 to 65535")
        elif item.get("protocol", "tcp") not in ("http", "tcp"):
            p.add(f"{where}.protocol", "must be http or tcp")
        else:
            ports.append(Port(name=_text(item["name"]), port=number, protocol=item.get("protocol", "tcp")))
    if kind == "component" and hosts and all(h.port is None for h in hosts) and not ports:
        p.add("hosts", "a host needs a port to run locally")
    health = health_check(p, value.get("health"), "local.health")
    storage = value.get("storage") or {}
    if not isinstance(storage, dict):
        p.add("local.storage", "must map storage identifiers to mount paths")
        storage = {}
    for name, path in storage.items():
        if err := mount_path_error(str(path)):
            p.add(f"local.storage.{name}", err)
    placeholders = (
        {f"storage.{n}" for n in storage} | {f"port.{pt.name}" for pt in ports} | {f"port.{h.identifier}" for h in hosts if h.port}
    )
    for key, text in commands.items():
        for name in values.PLACEHOLDER.findall(text):
            if not values.known_placeholder(name, placeholders):
                p.add(f"local.{key}", f"unknown placeholder {{{name}}}")
    if not isinstance(value.get("reload", False), bool):
        p.add("local.reload", "must be true or false")
    status = value.get("status") or ""
    if status and (not isinstance(status, str) or not status.startswith("/")):
        p.add("local.status", "must be a path starting with '/' where the component serves its status items")
        status = ""
    paths = {str(k): str(v) for k, v in storage.items()}
    found = {"commands": commands, "ports": ports, "health": health, "storage": paths, "placeholders": placeholders}
    return {**found, "status": status, "reload": value.get("reload") is True, "container": container}


def _container(p: Problems, value: object) -> tuple[str, str]:
    """`local.container`: the Dockerfile (and the development one, used when the folder has it), paths
    inside the component's folder."""
    if value is None:
        return ()
    if not p.mapping(value, "local.container", {"dockerfile", "development"}):
        return ()
    paths = []
    for key, default in (("dockerfile", "Dockerfile"), ("development", "Dockerfile.dev")):
        path = value.get(key, default)
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/") or has_control_character(path):
            p.add(f"local.container.{key}", "must be a path inside the component's folder (like Dockerfile)")
            return ()
        paths.append(path)
    return (paths[0], paths[1])


def health_check(p: Problems, value: object, field: str) -> dict[str, Any]:
    """`{http: /path}` or `{tcp: true}` ({} when absent or wrong, with the reason recorded)."""
    health = value or {}
    if not isinstance(health, dict) or not set(health) <= {"http", "tcp"}:
        p.add(field, "must be a mapping with 'http: /path' or 'tcp: true'")
        return {}
    if "http" in health and not str(health["http"]).startswith("/"):
        p.add(f"{field}.http", "must be a path starting with '/'")
    return health


def mount_path_error(path: str) -> str | None:
    """Where storage is mounted in a container: an absolute, plain path (spaces and quotes are fine)."""
    if not path.startswith("/") or path == "/":
        return "must be an absolute path below / (like /data)"
    if any(part in (".", "..") for part in path.split("/")):
        return "must not contain . or .. parts"
    if has_control_character(path) or len(path) > 255:
        return "must be at most 255 characters, without control characters"
    return None
