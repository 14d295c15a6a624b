"""Values in Diploi's package files: `${PARAMETER}`, the generators (`${generate-random-password:N}`,
`${generate-random-bytes:N}`, `${generate-jwt:SECRET:claims}`), the runtime's own variables
(`${DIPLOI_NAMESPACE}`, …, and `${<HOST>_ENDPOINT}` per host of the package), and the `{placeholder}`
templates the runtimes fill in.

A parameter's value is resolved per deployment: overrides (the deployment's saved parameters) replace
defaults, generated values come from the deployment's stored secrets, references to other
parameters of the same package are substituted in dependency order (a cycle is an error naming it),
and runtime variables become `{placeholders}` that each runtime fills with its own addresses
(deployments/runtimes/placeholders.py; tests/test_it_architecture.py keeps the two patterns equal).
"""

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")
REFERENCE = re.compile(r"\$\{([^}]*)\}")
GENERATOR = "generate-"
BASE_PLACEHOLDERS = ("host", "port", "password", "code", "identifier", "deployment", "stage", "namespace")
# Diploi's documented variable, then ours (Diploi's packages hard-code their service's host and port;
# a package written for this platform may ask the runtime instead).
RUNTIME = {
    "DIPLOI_NAMESPACE": "namespace",
    "DIPLOI_HOST": "host",
    "DIPLOI_PORT": "port",
    "DIPLOI_STAGE": "stage",
    "DIPLOI_DEPLOYMENT": "deployment",
    "DIPLOI_IDENTIFIER": "identifier",
}
MIN_PASSWORD, MAX_PASSWORD = 8, 256
MIN_BYTES, MAX_BYTES = 8, 1024
ENDPOINT = "_ENDPOINT"  # ${APP_ENDPOINT}: the URL of the package's host `app`


@dataclass(frozen=True)
class Generator:
    """A `${generate-…}`: a random password of `size` letters and digits, `size` random bytes in
    base64, or an HS256 JWT signed with the value of the parameter `secret`, with `claims` (`exp` is
    seconds from when it was made)."""

    kind: str  # password | bytes | jwt
    size: int = 0
    secret: str = ""
    claims: tuple[tuple[str, str], ...] = ()


def generator(name: str) -> Generator | None:
    """The generator `${name}` asks for; None when it is not one. Raises ValueError saying how a
    malformed one should be written."""
    if not name.startswith(GENERATOR):
        return None
    kind, _, rest = name[len(GENERATOR) :].partition(":")
    if kind in ("random-password", "random-bytes"):
        low, high = (MIN_PASSWORD, MAX_PASSWORD) if kind == "random-password" else (MIN_BYTES, MAX_BYTES)
        if not rest.isdigit() or not low <= int(rest) <= high:
            raise ValueError(f"${{{name}}}: write ${{generate-{kind}:N}} with N from {low} to {high}")
        return Generator(kind.removeprefix("random-"), int(rest))
    if kind == "jwt":
        secret, _, query = rest.partition(":")
        claims = tuple(parse_qsl(query, keep_blank_values=True))
        times = [v for k, v in claims if k in ("exp", "iat", "nbf")]
        if not secret or not query or any(not k for k, _ in claims) or not all(v.isdigit() for v in times):
            raise ValueError(f"${{{name}}}: write ${{generate-jwt:SECRET_PARAMETER:claim=value&exp=SECONDS}}")
        return Generator("jwt", secret=secret, claims=claims)
    raise ValueError(f"${{{name}}}: unknown generator (generate-random-password, generate-random-bytes or generate-jwt)")


def _generator_or_none(name: str) -> Generator | None:
    try:
        return generator(name)
    except ValueError:
        return None


def jwt(secret: str, claims: tuple[tuple[str, str], ...], issued: int) -> str:
    """An HS256 JSON Web Token: numbers stay numbers, `exp` counts from `issued` (its `iat`)."""
    body: dict[str, object] = {"iat": issued}
    for key, value in claims:
        body[key] = int(value) if value.isdigit() else value
    if "exp" in body:
        body["exp"] = issued + int(body["exp"])

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = part(json.dumps(body, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{part(signature)}"


# What the caller does with a generator: generate(key, index, generator, signing secret) → the value,
# kept per deployment (`key` is the parameter, `index` counts the generators within its value).
Generate = Callable[[str, int, Generator, str], str]


class Cycle(ValueError):
    def __init__(self, path: list[str]) -> None:
        super().__init__(f"the values refer to each other in a cycle: {' → '.join(path)}")
        self.path = path


def runtime_names() -> str:
    return ", ".join(f"${{{name}}}" for name in RUNTIME)


def is_runtime(name: str) -> bool:
    return name in RUNTIME


def known_placeholder(name: str, extra: set[str] = frozenset()) -> bool:
    return name in BASE_PLACEHOLDERS or name in extra


def generates(text: str) -> bool:
    """Whether `text` holds a `${generate-…}`."""
    return any(_generator_or_none(name) for name in REFERENCE.findall(text))


def references(text: str) -> list[str]:
    """The `${…}` names in `text` that are not generators."""
    return [name for name in REFERENCE.findall(text) if not name.startswith(GENERATOR)]


def endpoint_variables(hosts: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`${<HOST>_ENDPOINT}` per host of a package → the runtime's placeholder of its URL."""
    return {host.upper().replace("-", "_") + ENDPOINT: f"endpoint.{host}" for host in hosts}


def check_text(text: str) -> list[str]:
    """Problems of the generators in a value."""
    problems = []
    for name in REFERENCE.findall(text):
        try:
            generator(name)
        except ValueError as e:
            problems.append(str(e))
    return problems


def check(templates: dict[str, str], local_names: set[str] = frozenset(), hosts: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Problems of a package's parameter defaults, as (parameter, reason)."""
    problems = []
    endpoints = endpoint_variables(hosts)
    for key, text in templates.items():
        for name in REFERENCE.findall(text):
            try:
                found = generator(name)
            except ValueError as e:
                problems.append((key, str(e)))
                continue
            if found and found.kind == "jwt" and found.secret not in templates:
                problems.append((key, f"${{{name}}}: {found.secret} is not a parameter of this package (the JWT is signed with its value)"))
            elif not found and name not in templates and not is_runtime(name) and name not in endpoints:
                names = runtime_names() + "".join(f", ${{{n}}}" for n in endpoints)
                problems.append((key, f"${{{name}}} is neither a parameter of this package nor one of {names}"))
        for name in PLACEHOLDER.findall(REFERENCE.sub("", text)):
            if not known_placeholder(name, local_names):
                problems.append((key, f"unknown placeholder {{{name}}}"))
    try:
        resolve(templates, {}, lambda key, i, g, secret: "x" * 8, endpoints)
    except Cycle as e:
        problems.append((e.path[0], str(e)))
    return problems


def resolve(
    templates: dict[str, str], overrides: dict[str, str], generate: Generate, endpoints: dict[str, str] | None = None
) -> dict[str, str]:
    """Every parameter's value: overrides replace defaults; each `${generate-…}` becomes what
    `generate` gives (the caller keeps it; a JWT gets its signing parameter's resolved value);
    `${OTHER}` is OTHER's own resolved value; runtime variables and `endpoints`
    (endpoint_variables) become placeholders. Raises Cycle."""
    raw = {**templates, **overrides}
    runtime = {**RUNTIME, **(endpoints or {})}
    done: dict[str, str] = {}

    def value(key: str, path: list[str]) -> str:
        if key in done:
            return done[key]
        if key in path:
            raise Cycle([*path[path.index(key) :], key])
        index = iter(range(1 << 16))

        def substitute(m: re.Match) -> str:
            name = m[1]
            if found := _generator_or_none(name):
                secret = value(found.secret, [*path, key]) if found.kind == "jwt" and found.secret in raw else ""
                return generate(key, next(index), found, secret)
            if name in raw:
                return value(name, [*path, key])
            if name in runtime:
                return "{" + runtime[name] + "}"
            return m[0]

        done[key] = REFERENCE.sub(substitute, raw[key])
        return done[key]

    for key in raw:
        value(key, [])
    return done


def generate_in(text: str, key: str, generate: Generate) -> str:
    """A literal value (a project file's env.include `value`) with its generators filled in."""
    index = iter(range(1 << 16))

    def substitute(m: re.Match) -> str:
        found = _generator_or_none(m[1])
        return generate(key, next(index), found, "") if found and found.kind != "jwt" else m[0]

    return REFERENCE.sub(substitute, text)


def fill(text: str, resolved: dict[str, str]) -> str:
    """A connection string or other text of the package with its parameters' values put in."""

    def substitute(m: re.Match) -> str:
        name = m[1]
        if name in resolved:
            return resolved[name]
        return "{" + RUNTIME[name] + "}" if name in RUNTIME else m[0]

    return REFERENCE.sub(substitute, text)
