"""The package format of this platform's first versions: `diploi-package.yaml` with `kind:`,
`commands:`, `ports:`, `env:`, `storage:` (name, path, size), `parameters:` (group, items) and
`health:`. Still read so that existing repositories keep working; the project page shows a
deprecation notice for each one (Diploi's package format, projects/package.py, replaces it)."""

import re

from projects.package import COMMANDS, KINDS, PARAMETER_TYPES, Package, Parameter, Port, Storage, health_check, mount_path_error
from projects.stackerrors import Problems, StackError
from projects.validators import dns_label_error, env_name_error
from projects.values import PLACEHOLDER, known_placeholder

LEGACY_PACKAGE_FILE = "diploi-package.yaml"
_SIZE = re.compile(r"^[0-9]+(Mi|Gi|Ti)$")


def parse_legacy_package(text: str | bytes, file: str, source: str) -> tuple[Package | None, list[StackError]]:
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
            if not known_placeholder(name, {f"storage.{s}" for s in storage_names} | {f"port.{n}" for n in port_names}):
                p.add(where, f"unknown placeholder {{{name}}}")

    health = health_check(p, data.get("health"), "health")

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
            legacy=True,
        ),
        [],
    )


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
        if err := mount_path_error(str(item.get("path", ""))):
            p.add(f"{where}.path", err)
        size = str(item.get("size", "1Gi"))
        if not _SIZE.fullmatch(size):
            p.add(f"{where}.size", "must be a size like 512Mi, 1Gi or 2Ti")
        volumes.append(Storage(name=str(item.get("name")), path=str(item.get("path")), size=size))
    return volumes


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
