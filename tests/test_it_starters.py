"""Two projects written for Diploi, served by a real git daemon and started as a team moving from
Diploi would: a Next.js app with Diploi's PostgreSQL and Redis add-ons (npm, a lockfile, `next build`)
and a uv-managed FastAPI app (pyproject.toml + uv.lock, src/main.py). Each reaches Running from a fresh
checkout with no hand work, in development and in production; their generated secrets differ per
deployment. npm's registry and PyPI are reached over the network (a proxy on CI's machines)."""

import json
import shutil
from pathlib import Path

import pytest

from deployments.actions import do_create_deployment
from deployments.models import Build, Deployment, State
from deployments.provisioning import tasks
from projects.models import Membership, Project, Role
from projects.stack import refresh_stack
from tests.conftest import http_get, publish, wait_until

STARTERS = Path(__file__).with_name("starters")
pytestmark = pytest.mark.skipif(not shutil.which("npm") or not shutil.which("node"), reason="Node.js and npm are needed")


def import_starter(base: Path, server: str, name: str, owner) -> Project:
    """The starter's files as one commit of a repository on the git daemon, and a project made from its URL."""
    root = STARTERS / name
    publish(base, name, {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()})
    project = Project.objects.create(name=name, slug=name, repository=f"{server}/{name}.git", default_branch="main")
    Membership.objects.create(project=project, user=owner, role=Role.OWNER)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors
    return project


def started(project: Project, stage: str, owner, runtime) -> Deployment:
    d = do_create_deployment(project, stage.title(), stage, "main", actor=owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, f"{stage}: {d.state} — {d.state_reason}\n{told(d, runtime)}"
    return d


def told(d: Deployment, runtime) -> str:
    """What a failure shows: the deployment's build logs and the ends of its processes' logs."""
    builds = "".join(b.log[-3000:] for b in Build.objects.filter(deployment=d))
    logs = runtime.layout.deployments.glob(f"{d.project.slug}.{d.slug}/logs/*.log")
    return builds + "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


def reached(d: Deployment, component: str, path: str, runtime, timeout: float) -> dict:
    try:
        return wait_until(lambda: answer(d, component, path), timeout=timeout, what=f"{component}{path}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{told(d, runtime)}") from None


def answer(d: Deployment, component: str, path: str = "/") -> dict:
    return json.loads(http_get(d.endpoints[component].rstrip("/") + path, timeout=30))


@pytest.fixture
def starter_runtime(runtime, settings, git_daemon):
    settings.DIPLOI_ALLOW_PRIVATE_REPOSITORIES = True
    return runtime


def test_a_nextjs_starter_with_postgres_and_redis_runs_in_development_and_production(db, cast, git_daemon, starter_runtime) -> None:
    base, server = git_daemon
    project = import_starter(base, server, "next-postgres-redis", cast.owner)
    names = {s["identifier"]: s["package"]["recipe"] for s in project.stack["components"] + project.stack["addons"]}
    assert names == {"next": "node", "postgres": "postgres", "redis": "redis"}  # Diploi's URLs, served by recipes
    seen = {}
    for stage in ("development", "production"):
        d = started(project, stage, cast.owner, starter_runtime)
        # The add-ons answer through the values Diploi's packages export (POSTGRES_*), and the app
        # keeps what it wrote: a second request sees the first visit.
        first = reached(d, "next", "/api/status", starter_runtime, timeout=120)
        again = answer(d, "next", "/api/status")
        assert first["database"] == "app" and again["visits"] == first["visits"] + 1 and again["hits"] == first["hits"] + 1
        assert first["nodeEnv"] == stage  # next dev in development, next start (built) in production
        assert "Hello from Next.js" in http_get(d.endpoints["next"], timeout=30)
        seen[stage] = first["secret"]
    # A literal ${generate-random-password:40} in the starter is generated per deployment, never passed on.
    assert all(len(s) == 40 and "generate" not in s for s in seen.values()) and seen["development"] != seen["production"]


def test_a_uv_fastapi_starter_runs_in_development_and_production(db, cast, git_daemon, starter_runtime) -> None:
    base, server = git_daemon
    project = import_starter(base, server, "fastapi", cast.owner)
    assert project.stack["components"][0]["package"]["recipe"] == "fastapi"
    secrets = []
    for stage in ("development", "production"):
        d = started(project, stage, cast.owner, starter_runtime)
        seen = reached(d, "fastapi", "/", starter_runtime, timeout=60)
        assert seen["hello"] == "Diploi" and seen["stage"] == stage
        assert answer(d, "fastapi", "/items/7?q=x") == {"item_id": 7, "q": "x"}
        secrets.append(seen["secret"])
    # `base64:${generate-random-bytes:32}`: the prefix kept, 32 random bytes after it, per deployment.
    assert all(s.startswith("base64:") and len(s) == len("base64:") + 44 for s in secrets) and secrets[0] != secrets[1]


def test_flask_django_react_vite_and_static_components_run_as_diploi_runs_them(db, cast, git_daemon, starter_runtime) -> None:
    base, server = git_daemon
    project = import_starter(base, server, "many-frameworks", cast.owner)
    recipes = {s["identifier"]: s["package"]["recipe"] for s in project.stack["components"]}
    assert recipes == {"flask": "flask", "django": "django", "vite": "react-vite", "site": "static"}
    for stage in ("development", "production"):
        d = started(project, stage, cast.owner, starter_runtime)
        flask = reached(d, "flask", "/", starter_runtime, timeout=60)
        assert flask == {"hello": "Flask", "server": "werkzeug" if stage == "development" else "gunicorn"}
        django = reached(d, "django", "/", starter_runtime, timeout=60)
        assert django == {"hello": "Django", "debug": stage == "development", "secret_length": 50}
        page = wait_until(lambda d=d: http_get(d.endpoints["vite"], timeout=30), what="the Vite app")
        # development: Vite's server, which injects its client; production: the built bundle
        assert ("/@vite/client" in page) == (stage == "development") and ("/assets/index-" in page) == (stage != "development")
        assert "Hello from a static site" in http_get(d.endpoints["site"].rstrip("/") + "/index.html", timeout=30)
