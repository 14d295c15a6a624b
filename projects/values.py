"""Values in Diploi's package files: `${PARAMETER}`, `${generate-random-password:N}` and the runtime's
own variables (`${DIPLOI_NAMESPACE}`, …), and the `{placeholder}` templates the runtimes fill in.

A parameter's value is resolved per deployment: overrides (the deployment's saved parameters) replace
defaults, generated passwords come from the deployment's stored secrets, references to other
parameters of the same package are substituted in dependency order (a cycle is an error naming it),
and runtime variables become `{placeholders}` that each runtime fills with its own addresses
(deployments/runtimes/placeholders.py; tests/test_it_architecture.py keeps the two patterns equal).
"""

import re
from collections.abc import Callable

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")
REFERENCE = re.compile(r"\$\{([^}]*)\}")
_GENERATE = re.compile(r"^generate-random-password:(\d+)$")
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


def password_length(name: str) -> int | None:
    m = _GENERATE.match(name)
    return int(m[1]) if m else None


def generates_password(text: str) -> bool:
    """Whether `text` holds a `${generate-random-password:N}`."""
    return any(password_length(name) is not None for name in REFERENCE.findall(text))


def references(text: str) -> list[str]:
    """The `${…}` names in `text` that are neither generators nor runtime variables' syntax errors."""
    return [name for name in REFERENCE.findall(text) if password_length(name) is None]


def check(templates: dict[str, str], local_names: set[str] = frozenset()) -> list[tuple[str, str]]:
    """Problems of a package's parameter defaults, as (parameter, reason)."""
    problems = []
    for key, text in templates.items():
        for name in REFERENCE.findall(text):
            n = password_length(name)
            if name.startswith("generate-random-password") and (n is None or not MIN_PASSWORD <= n <= MAX_PASSWORD):
                problems.append((key, f"${{{name}}}: write ${{generate-random-password:N}} with N from {MIN_PASSWORD} to {MAX_PASSWORD}"))
            elif n is None and name not in templates and not is_runtime(name):
                problems.append((key, f"${{{name}}} is neither a parameter of this package nor one of {runtime_names()}"))
        for name in PLACEHOLDER.findall(REFERENCE.sub("", text)):
            if not known_placeholder(name, local_names):
                problems.append((key, f"unknown placeholder {{{name}}}"))
    try:
        resolve(templates, {}, lambda key, n: "x" * n)
    except Cycle as e:
        problems.append((e.path[0], str(e)))
    return problems


def resolve(templates: dict[str, str], overrides: dict[str, str], password: Callable[[str, int], str]) -> dict[str, str]:
    """Every parameter's value: overrides replace defaults; `${generate-random-password:N}` becomes
    `password(key, N)` (the caller keeps it); `${OTHER}` is OTHER's own resolved value; runtime
    variables become placeholders. Raises Cycle."""
    raw = {**templates, **overrides}
    done: dict[str, str] = {}

    def value(key: str, path: list[str]) -> str:
        if key in done:
            return done[key]
        if key in path:
            raise Cycle([*path[path.index(key) :], key])

        def substitute(m: re.Match) -> str:
            name = m[1]
            if (n := password_length(name)) is not None:
                return password(key, n)
            if name in raw:
                return value(name, [*path, key])
            if name in RUNTIME:
                return "{" + RUNTIME[name] + "}"
            return m[0]

        done[key] = REFERENCE.sub(substitute, raw[key])
        return done[key]

    for key in raw:
        value(key, [])
    return done


def fill(text: str, resolved: dict[str, str]) -> str:
    """A connection string or other text of the package with its parameters' values put in."""

    def substitute(m: re.Match) -> str:
        name = m[1]
        if name in resolved:
            return resolved[name]
        return "{" + RUNTIME[name] + "}" if name in RUNTIME else m[0]

    return REFERENCE.sub(substitute, text)
