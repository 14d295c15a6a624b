"""The shape of the code: which package may import which. Imports are read with `ast` (those inside
functions too), so an upward import fails here before it tangles the layers."""

import ast
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
PACKAGES = ("accounts", "projects", "deployments", "diploi")
APPS = ("accounts", "projects", "deployments")

# The dashboard, the websockets, the SSH gateway, the CI API and the commands sit on top; they write
# through actions, which enqueue provisioning, which drives the runtimes.
TOP = (
    "deployments.web",
    "deployments.live.consumers",
    "deployments.live.fragments",
    "deployments.live.routing",
    "deployments.ssh",
    "deployments.ci.api",
    "deployments.management",
)
BELOW_ACTIONS = (
    "deployments.models",
    "deployments.access",
    "deployments.queries",
    "deployments.domains",
    "deployments.crypto",
    "deployments.provisioning",
    "deployments.status",
    "deployments.ci.reports",
    "deployments.runtimes",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(BASE_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of ours → the modules it imports (absolute names)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (BASE_DIR / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                    names.update(f"{node.module}.{alias.name}" for alias in node.names)
            found[module_name(path)] = names
    return found


def under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def edges(source: tuple[str, ...] | str, target: tuple[str, ...] | str, allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in imports().items()
        if under(module, source)
        for name in names
        if under(name, target) and not under(name, allowed)
    )


def test_the_walker_sees_imports_inside_functions() -> None:
    # deployments/runtimes/__init__.py imports each runtime inside get_runtime()
    assert "deployments.runtimes.local.runtime" in imports()["deployments.runtimes"]


def test_projects_and_accounts_never_import_deployments() -> None:
    assert edges(("projects", "accounts"), "deployments") == []


def test_the_runtime_seam_imports_no_app() -> None:
    # the runtimes know only their plain types: no models, no projects, no platform settings module
    assert edges("deployments.runtimes", (*APPS, "diploi"), allowed=("deployments.runtimes",)) == []


def test_nothing_below_the_actions_imports_what_sits_on_top() -> None:
    assert edges(BELOW_ACTIONS, (*TOP, "deployments.actions")) == []
    assert edges("deployments.actions", TOP) == []


def test_websockets_do_not_import_views_and_the_web_does_not_import_the_ssh_server() -> None:
    assert edges("deployments.live", "deployments.web") == []
    assert (
        edges(("deployments.web", "deployments.live"), "deployments.ssh", allowed=("deployments.ssh.naming", "deployments.ssh.hostkey"))
        == []
    )
    assert edges(("deployments.ssh.naming", "deployments.ssh.hostkey"), "asyncssh") == []


def test_the_config_package_imports_no_app_but_to_route() -> None:
    routing = ("diploi.urls", "diploi.asgi")
    assert [e for e in edges("diploi", APPS) if not under(e.split()[0], routing)] == []


@pytest.mark.parametrize("text", ["{port}", "{port.http}", "{storage.data}", "{a_b}", "{x-y}", "{{host}}", "{}", "{ host }"])
def test_packages_and_runtimes_agree_on_placeholders(text: str) -> None:
    from deployments.runtimes.placeholders import PLACEHOLDER as RENDERED
    from projects.values import PLACEHOLDER as CHECKED

    assert CHECKED.pattern == RENDERED.pattern
    assert CHECKED.findall(text) == RENDERED.findall(text)
