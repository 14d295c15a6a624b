"""Packages: how a component or add-on runs (commands, ports, env, storage, parameters, health check).

A package is either built in (a YAML file shipped in projects/packages/) or a folder in the
project's repository holding its own `diploi-package.yaml`.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projects.stackerrors import Problems, StackError
from projects.validators import dns_label_error, env_name_error

PACKAGE_FILE = "diploi-package.yaml"
BUILTIN_DIR = Path(__file__).parent / "packages"
KINDS = ("component", "addon")
COMMANDS = ("install", "build", "start", "development")
PARAMETER_TYPES = ("string", "integer", "boolean", "secret")
# The same pattern as deployments/runtimes/placeholders.py, which fills them in (a test keeps them equal).
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")
_SIZE = re.compile(r"^[0-9]+(Mi|Gi|Ti)$")


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


@dataclass(frozen=True)
class Parameter:
    key: str
    type: str
    group: str
    label: str
    default: str = ""
    readonly: bool = False


@dataclass(frozen=True)
class Package:
    name: str
    kind: str
    source: str
    description: str = ""
    commands: dict[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    storage: tuple[Storage, ...] = ()
    parameters: tuple[Parameter, ...] = ()
    health: dict[str, Any] = field(default_factory=dict)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_builtin(name: str) -> tuple[Package | None, list[StackError]]:
    path = BUILTIN_DIR / f"{name}.yaml"
    return parse_package(path.read_text(), f"built-in package {name}", source=name)


def parse_package(text: str | bytes, file: str, source: str) -> tuple[Package | None, list[StackError]]:
    p = Problems(file)
    data = p.load_yaml(text)
    allowed = {"name", "kind", "description", "commands", "ports", "env", "storage", "parameters", "health"}
    if not p.mapping(data, "", allowed, required={"name", "kind", "commands"}):
        return None, p.errors

    kind = data.get("kind")
    if kind is not None and kind not in KINDS:
        p.add("kind", f"must be one of: {', '.join(KINDS)}")

    commands: dict[str, str] = {}
    if isinstance(data.get("commands"), dict):
        for key, value in data["commands"].items():
            if key not in COMMANDS:
                p.add(f"commands.{key}", f"unknown command (allowed: {', '.join(COMMANDS)})")
            elif (text_value := p.string(value, f"commands.{key}")) is not None:
                commands[key] = text_value
        if "start" not in commands:
            p.add("commands.start", "is required")
    elif "commands" in data:
        p.add("commands", "must be a mapping of install/build/start/development commands")

    ports = _ports(p, data.get("ports", []), kind)
    storage = _storage(p, data.get("storage", []))
    parameters = _parameters(p, data.get("parameters", []))

    env: dict[str, str] = {}
    if isinstance(data.get("env", {}), dict):
        for key, value in (data.get("env") or {}).items():
            if err := env_name_error(str(key)):
                p.add(f"env.{key}", err)
            elif (text_value := p.string(value, f"env.{key}")) is not None:
                env[str(key)] = text_value
    else:
        p.add("env", "must be a mapping of variable names to values")

    storage_names = {s.name for s in storage}
    port_names = {pt.name for pt in ports}
    for where, text_value in [*(("commands." + k, v) for k, v in commands.items()), *(("env." + k, v) for k, v in env.items())]:
        for name in PLACEHOLDER.findall(text_value):
            if not _known_placeholder(name, storage_names, port_names):
                p.add(where, f"unknown placeholder {{{name}}}")

    health = data.get("health") or {}
    if not isinstance(health, dict) or not set(health) <= {"http", "tcp"}:
        p.add("health", "must be a mapping with 'http: /path' or 'tcp: true'")
        health = {}
    elif "http" in health and not str(health["http"]).startswith("/"):
        p.add("health.http", "must be a path starting with '/'")

    if p.errors:
        return None, p.errors
    return (
        Package(
            name=str(data["name"]),
            kind=kind,
            source=source,
            description=str(data.get("description", "")),
            commands=commands,
            ports=tuple(ports),
            env=env,
            storage=tuple(storage),
            parameters=tuple(parameters),
            health=health,
        ),
        [],
    )


def _known_placeholder(name: str, storage: set[str], ports: set[str]) -> bool:
    if name in ("host", "port", "password", "code", "identifier", "deployment", "stage"):
        return True
    head, _, tail = name.partition(".")
    return (head == "storage" and tail in storage) or (head == "port" and tail in ports)


def _list(p: Problems, value: object, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(field, "must be a list")
        return []
    return value


def _ports(p: Problems, value: object, kind: str | None) -> list[Port]:
    ports = []
    for i, item in enumerate(_list(p, value, "ports")):
        where = f"ports[{i}]"
        if not p.mapping(item, where, {"name", "port", "public", "protocol"}, required={"name", "port"}):
            continue
        if err := dns_label_error(str(item.get("name", ""))):
            p.add(f"{where}.name", err)
        number = item.get("port")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            p.add(f"{where}.port", "must be a port number from 1 to 65535")
            continue
        public = item.get("public", False)
        if not isinstance(public, bool):
            p.add(f"{where}.public", "must be true or false")
        elif public and kind == "addon":
            p.add(f"{where}.public", "add-ons are never public")
        protocol = item.get("protocol", "http")
        if protocol not in ("http", "tcp"):
            p.add(f"{where}.protocol", "must be http or tcp")
        ports.append(Port(name=str(item.get("name")), port=number, public=public is True, protocol=protocol))
    return ports


def _storage(p: Problems, value: object) -> list[Storage]:
    volumes = []
    for i, item in enumerate(_list(p, value, "storage")):
        where = f"storage[{i}]"
        if not p.mapping(item, where, {"name", "path", "size"}, required={"name", "path"}):
            continue
        if err := dns_label_error(str(item.get("name", ""))):
            p.add(f"{where}.name", err)
        if err := _mount_path_error(str(item.get("path", ""))):
            p.add(f"{where}.path", err)
        size = str(item.get("size", "1Gi"))
        if not _SIZE.match(size):
            p.add(f"{where}.size", "must be a size like 512Mi, 1Gi or 2Ti")
        volumes.append(Storage(name=str(item.get("name")), path=str(item.get("path")), size=size))
    return volumes


def _mount_path_error(path: str) -> str | None:
    """Where storage is mounted in a container: an absolute, plain path (spaces and quotes are fine)."""
    if not path.startswith("/") or path == "/":
        return "must be an absolute path below / (like /data)"
    if any(part in (".", "..") for part in path.split("/")):
        return "must not contain . or .. parts"
    if any(ord(c) < 32 or ord(c) == 127 for c in path) or len(path) > 255:
        return "must be at most 255 characters, without control characters"
    return None


def _parameters(p: Problems, value: object) -> list[Parameter]:
    parameters = []
    for g, group in enumerate(_list(p, value, "parameters")):
        where = f"parameters[{g}]"
        if not p.mapping(group, where, {"group", "items"}, required={"group", "items"}):
            continue
        for i, item in enumerate(_list(p, group.get("items"), f"{where}.items")):
            iwhere = f"{where}.items[{i}]"
            if not p.mapping(item, iwhere, {"key", "type", "label", "default", "readonly"}, required={"key", "type"}):
                continue
            if err := env_name_error(str(item.get("key", ""))):
                p.add(f"{iwhere}.key", err)
            if item.get("type") not in PARAMETER_TYPES:
                p.add(f"{iwhere}.type", f"must be one of: {', '.join(PARAMETER_TYPES)}")
            parameters.append(
                Parameter(
                    key=str(item.get("key")),
                    type=str(item.get("type")),
                    group=str(group.get("group")),
                    label=str(item.get("label", item.get("key"))),
                    default="" if item.get("default") is None else str(item.get("default")),
                    readonly=item.get("readonly") is True,
                )
            )
    return parameters
