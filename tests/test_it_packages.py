"""Packages named by Git URL#ref, served by a real `git daemon` on loopback: fetched, locked to a
commit, moved only when a user asks, their problems told on the project page — and a Diploi starter
made of such a package and Diploi's official add-on URL runs on the local runtime."""

import base64
import html
import json
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from deployments import actions
from deployments.actions import do_create_deployment
from deployments.models import Deployment, State
from deployments.provisioning import tasks
from deployments.provisioning.spec import build_spec, load_stack
from deployments.runtimes.base import Colour
from deployments.runtimes.kubernetes.manifests import environment
from deployments.runtimes.local.observe import probe
from deployments.runtimes.statusitems import status_items
from projects.models import Membership, Project, Role
from projects.sample import commit_all
from projects.stack import refresh_stack
from tests.conftest import git, http_get, publish, wait_until

APP = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMES = ["CACHE_SECRET", "REDIS_HOST", "REDIS_PORT", "SECRET_KEY", "GREETING", "MODE", "SITE_URL", "REDIS_URL"]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/status":
            if not os.path.exists("status.json"):
                self.send_error(404)
                return
            body = open("status.json", "rb").read()
        else:
            body = json.dumps({name: os.environ.get(name) for name in NAMES}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

PACKAGE = """
diploiVersion: v1.0
type: component
name: Env echo
description: Prints the env it was given
hosts:
  - name: Web
    identifier: web
    port: 8000
  - name: Admin
    identifier: admin
    port: 8001
parameterGroups:
  - name: App
    identifier: app
    parameters:
      - {name: Secret key, identifier: SECRET_KEY, defaultValue: '${generate-random-password:40}', type: secret}
      - {name: Mode, identifier: MODE, defaultValue: '__MODE__', type: string}
      - {name: Site, identifier: SITE_URL, defaultValue: 'http://${DIPLOI_HOST}:${DIPLOI_PORT}/${MODE}', type: string}
logs:
  - {name: App log, type: log, labelSelector: app=web}
  - {name: Clock, type: exec, command: [sh, -c, "while true; do echo tick; sleep 1; done"]}
local:
  start: python3 -u app.py
  development: python3 -u app.py
  health: {http: /}
  status: /status
"""


def project_with(tmp_path: Path, stack: str, owner) -> Project:
    repo = tmp_path / "project-repo"
    repo.mkdir()
    (repo / "diploi.yaml").write_text(stack)
    (repo / "web").mkdir()
    (repo / "web" / "app.py").write_text(APP)
    git("init", "--quiet", "--initial-branch", "main", cwd=repo)
    commit_all(repo, "A Diploi starter")
    project = Project.objects.create(name="Echo", slug="echo", repository=str(repo), default_branch="main")
    Membership.objects.create(project=project, user=owner, role=Role.OWNER)
    return project


STARTER = """
diploiVersion: v1.0
type: starter
name: Echo starter
description: One component from a package repository, Redis from Diploi's own URL
components:
  - name: Web
    identifier: web
    package: {url}#{ref}
    env:
      include:
        - redis.REDIS_PASSWORD:CACHE_SECRET
        - redis.REDIS_P*
        - {{path: redis.REDIS_HOST}}
        - name: GREETING
          value: hello
addons:
  - name: Redis
    identifier: redis
    package: https://github.com/diploi/addon-redis#main
"""


def test_a_package_by_url_is_locked_and_moves_only_when_asked(db, cast, git_daemon, tmp_path: Path, local_repositories) -> None:
    base, server = git_daemon
    first = publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "one")}, tag="v1")
    project = project_with(tmp_path, STARTER.format(url=f"{server}/echo.git", ref="main"), cast.owner)
    assert refresh_stack(project) == {f"{server}/echo.git#main": ("", first)}
    assert project.stack_errors == [] and project.package_locks == {f"{server}/echo.git#main": first}
    web = project.stack["components"][0]
    assert web["package"]["commit"] == first and web["package"]["name"] == "Env echo"

    second = publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "two")})
    refresh_stack(project)  # a new commit of the package's branch is not picked up by itself
    assert project.stack["components"][0]["package"]["commit"] == first

    client = cast.client(cast.owner)
    page = client.get(f"/projects/{project.slug}/").content.decode()
    assert "Echo starter" in page and first[:10] in page and "Check for package updates" in page
    assert "built-in redis" in page and "its own local recipe" in page
    r = client.post(f"/projects/{project.slug}/packages/update/", follow=True)
    assert f"{server}/echo.git#main: {first[:10]} → {second[:10]}" in r.content.decode()
    project.refresh_from_db()
    assert project.package_locks[f"{server}/echo.git#main"] == second
    # Viewers see the page but cannot move the lock; outsiders do not see the project at all.
    Membership.objects.create(project=project, user=cast.viewer, role=Role.VIEWER)
    assert cast.client(cast.viewer).post(f"/projects/{project.slug}/packages/update/").status_code == 403
    assert cast.client(cast.outsider).post(f"/projects/{project.slug}/packages/update/").status_code == 404


@pytest.mark.parametrize(
    "package, message",
    [
        ("{server}/echo.git#v9", "“v9” is neither a branch, a tag nor a commit of the package's repository"),
        ("{server}/nothing.git#main", "Could not read the repository"),
        ("{server}/empty.git#main", "its repository has no diploi.yaml at main"),
        ("git://127.0.0.1:1/echo.git#main", "Could not read the repository"),
    ],
)
def test_a_package_that_cannot_be_fetched_is_a_problem_on_the_project_page(
    db, cast, git_daemon, tmp_path: Path, local_repositories, package: str, message: str
) -> None:
    base, server = git_daemon
    publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "one")}, tag="v1")
    publish(base, "empty", {"README.md": "no package here"})
    url, _, ref = package.format(server=server).partition("#")
    project = project_with(tmp_path, STARTER.format(url=url, ref=ref), cast.owner)
    refresh_stack(project)
    assert project.stack is None and project.package_locks == {}  # nothing half-recorded
    page = cast.client(cast.owner).get(f"/projects/{project.slug}/").content.decode()
    assert "diploi.yaml · components[0].package" in page and html.escape(message) in page, [str(e) for e in project.errors]


def test_a_token_in_a_package_address_is_not_shown(db, cast, git_daemon, tmp_path: Path, local_repositories) -> None:
    project = project_with(tmp_path, STARTER.format(url="https://builder:s3cr3t-token@git.example/echo.git", ref="main"), cast.owner)
    project.stack = {
        "components": [
            {
                "name": "Web",
                "identifier": "web",
                "kind": "component",
                "folder": ".",
                "package_ref": "https://builder:s3cr3t-token@git.example/echo.git#main",
                "package": {"source": "", "commit": "", "recipe": "", "commands": {}},
            }
        ],
        "addons": [],
    }
    project.save()
    page = cast.client(cast.owner).get(f"/projects/{project.slug}/").content.decode()
    assert "s3cr3t-token" not in page and "https://…@git.example/echo.git#main" in page


def test_a_private_address_is_refused_unless_allowed(db, cast, git_daemon, tmp_path: Path, local_repositories, settings) -> None:
    _, server = git_daemon
    project = project_with(tmp_path, STARTER.format(url=f"{server}/echo.git", ref="v1"), cast.owner)
    settings.DIPLOI_ALLOW_PRIVATE_REPOSITORIES = False
    refresh_stack(project)
    assert "the package's address is refused: 127.0.0.1 is on this machine or a private network" in project.errors[0].message


@pytest.mark.slow
def test_a_diploi_starter_runs_on_the_local_runtime(db, cast, git_daemon, tmp_path: Path, local_repositories, runtime) -> None:
    base, server = git_daemon
    publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "one")}, tag="v1")
    project = project_with(tmp_path, STARTER.format(url=f"{server}/echo.git", ref="v1"), cast.owner)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors
    d = do_create_deployment(project, "Dev", "development", "main", actor=cast.owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, d.state_reason
    seen = wait_until(lambda: json.loads(http_get(d.endpoints["web"])), what="the component's page")
    spec = build_spec(d, load_stack(d, d.commit), d.commit)
    web, redis = spec.services
    password = redis.exports["REDIS_PASSWORD"]
    port = urlparse(d.endpoints["web"]).port
    assert urlparse(d.endpoints["web/admin"]).port not in (None, port)  # each of the package's hosts is an endpoint
    assert seen["CACHE_SECRET"] == password and len(password) == 32  # a rename, generated once for the deployment
    assert seen["REDIS_PORT"] and seen["REDIS_HOST"] == "127.0.0.1"  # `redis.REDIS_P*` and {path: redis.REDIS_HOST}
    assert seen["REDIS_URL"] is None  # not included
    assert seen["GREETING"] == "hello" and seen["MODE"] == "one"
    assert len(seen["SECRET_KEY"]) == 40 and seen["SITE_URL"] == f"http://127.0.0.1:{port}/one"
    # The add-on's own process got its password from the same parameter: a client with it gets in.
    with socket.create_connection(("127.0.0.1", int(seen["REDIS_PORT"])), timeout=5) as s:
        s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
        wait_until(lambda: b"+PONG" in s.recv(100), what="redis to answer")
    # The add-on's connection string on the Overview: the password masked, revealed only to who may write.
    Membership.objects.create(project=project, user=cast.viewer, role=Role.VIEWER)
    overview = f"/projects/{project.slug}/d/{d.slug}/"
    shown = cast.client(cast.viewer).get(overview).content.decode()
    assert f"redis://:••••••@127.0.0.1:{seen['REDIS_PORT']}/0" in shown and password not in shown
    assert cast.client(cast.viewer).get(overview + "connections/").status_code == 403
    assert cast.client(cast.outsider).get(overview + "connections/").status_code == 404
    revealed = cast.client(cast.owner).get(overview + "connections/").content.decode()
    assert f"redis://:{password}@127.0.0.1:{seen['REDIS_PORT']}/0" in revealed and "Copy" in revealed
    # The package's exec log runs its command for a few seconds for who may write; viewers are told.
    logs = f"{overview}logs/?service=web~1"
    assert "<span>tick\n</span>" in cast.client(cast.owner).get(logs).content.decode()
    told = cast.client(cast.viewer).get(logs).content.decode()
    assert "<span>tick" not in told and "developers and owners can run it" in told
    # Describe: how the container was started, its env's names and never their values; writers only.
    described = cast.client(cast.owner).get(f"{overview}describe/web/").content.decode()
    assert "python3 -u app.py" in described and "CACHE_SECRET" in described and password not in described
    assert "RUNNING" in described and "restarted 0×" in described
    assert cast.client(cast.viewer).get(f"{overview}describe/web/").status_code == 403
    assert cast.client(cast.outsider).get(f"{overview}describe/web/").status_code == 404
    assert cast.client(cast.owner).get(f"{overview}describe/nope/").status_code == 404
    from deployments.status.monitor import Monitor

    Monitor().tick()  # the page shows what the monitor stored
    page = cast.client(cast.owner).get(overview).content.decode()
    assert f'href="{overview}describe/web/"' in page and 'href="#ssh-web"' in page and 'href="#ssh-redis"' not in page
    # Items the component reports in Diploi's status format, under Services; red while young is pending.
    status = runtime.home(spec) / "code" / "web" / "status.json"
    items = [
        {"identifier": "db", "name": "Database", "status": "green", "message": "migrated"},
        {"identifier": "queue", "name": "Queue", "status": "red", "message": "no worker"},
    ]
    status.write_text(json.dumps({"diploiStatusVersion": 1, "items": items}))
    observed = runtime.observe([spec])[d.pk]
    assert next(v for v in observed.storage if v.name == "redis/data").message.endswith(" used of 1024 MiB")  # sizeMiB
    services = {i.name: i for i in observed.services}
    assert services["web/db"].colour == Colour.GREEN and services["web/db"].message == "Database — migrated"
    assert services["web/queue"].colour == Colour.PENDING  # the component started less than 30 s ago
    address = f"127.0.0.1:{port}"
    assert status_items(web, probe([(address, "/status", True)])[0], time.time() - 60)[1].colour == Colour.RED
    status.write_text("not json")
    services = {i.name: i for i in runtime.observe([spec])[d.pk].services}
    assert services["web/status"].colour == Colour.YELLOW and services["web/status"].message == "its status at /status is not JSON"
    status.write_text(json.dumps({"diploiStatusVersion": 1, "items": [{"identifier": "x", "status": "blue"}]}))
    message = status_items(web, probe([(address, "/status", True)])[0], 0)[0].message
    assert message == "its status at /status item x: status must be green, yellow or red"
    # The same spec for Kubernetes: the cluster's addresses, the same names and secrets.
    env = environment(spec, web)
    assert env["CACHE_SECRET"] == password and env["REDIS_HOST"] == "redis" and env["REDIS_PORT"] == "6379"
    assert env["SITE_URL"] == "http://web:8000/one"


SUPABASE_LIKE = """
diploiVersion: v1.0
type: component
name: Auth server
hosts:
  - {name: API, identifier: app, port: 8000}
parameterGroups:
  - name: Keys
    identifier: admin
    parameters:
      - {name: JWT secret, identifier: JWT_SECRET, defaultValue: '${generate-random-password:32}', type: secret}
      - name: Anon key
        identifier: ANON_KEY
        defaultValue: '${generate-jwt:JWT_SECRET:role=anon&iss=supabase&exp=126144000}'
        type: string
      - {name: App key, identifier: APP_KEY, defaultValue: 'base64:${generate-random-bytes:32}', type: secret}
local:
  start: python3 -u app.py
"""

WEB_APP_STARTER = """
diploiVersion: v1.0
type: starter
name: Web app
components:
  - name: React
    identifier: react
    package: {url}#v1
    env:
      include:
        - supabase.APP_ENDPOINT:SUPABASE_URL
        - supabase.ANON_KEY:SUPABASE_ANON_KEY
        - name: LOGIN_SECRET
          value: "base64:${{generate-random-bytes:32}}"
  - name: Supabase
    identifier: supabase
    package: {auth}#v1
addons: []
"""


def test_diploi_generators_and_host_endpoints_reach_the_components(db, cast, git_daemon, tmp_path: Path, local_repositories) -> None:
    """starter-web-app's shape: a JWT signed with another generated parameter, random bytes behind
    `base64:` (in a package and in the project file's literal), another component's APP_ENDPOINT —
    generated per deployment, kept, never the literal text."""
    import hashlib
    import hmac

    base, server = git_daemon
    publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "one")}, tag="v1")
    publish(base, "auth", {"diploi.yaml": SUPABASE_LIKE}, tag="v1")
    project = project_with(tmp_path, WEB_APP_STARTER.format(url=f"{server}/echo.git", auth=f"{server}/auth.git"), cast.owner)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors

    def envs(d) -> tuple[dict[str, str], dict[str, str]]:
        spec = build_spec(d, load_stack(d, project.stack_commit), project.stack_commit)
        return environment(spec, spec.service("react")), environment(spec, spec.service("supabase"))

    dev = do_create_deployment(project, "Dev", "development", "main", actor=cast.owner)
    prod = do_create_deployment(project, "Prod", "production", "main", actor=cast.owner)
    react, supabase = envs(dev)
    assert react["SUPABASE_URL"] == supabase["APP_ENDPOINT"] == "https://supabase--dev--echo.localhost"
    assert react["SUPABASE_ANON_KEY"] == supabase["ANON_KEY"]
    head, body, signature = supabase["ANON_KEY"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert claims["role"] == "anon" and claims["iss"] == "supabase" and claims["exp"] - claims["iat"] == 126144000
    signed = hmac.new(supabase["JWT_SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=") == signed
    for value in (supabase["APP_KEY"], react["LOGIN_SECRET"]):
        assert value.startswith("base64:") and len(base64.b64decode(value.removeprefix("base64:"))) == 32
    assert envs(Deployment.objects.get(pk=dev.pk)) == (react, supabase)  # kept
    other_react, other_supabase = envs(prod)
    for key in ("JWT_SECRET", "ANON_KEY", "APP_KEY"):
        assert other_supabase[key] != supabase[key], key
    assert other_react["LOGIN_SECRET"] != react["LOGIN_SECRET"]
    # Regenerating the secret from Options signs the anon key again with the new one.
    from deployments.actions import do_regenerate

    do_regenerate(dev, "supabase", ["JWT_SECRET"], actor=cast.owner)
    _, renewed = envs(Deployment.objects.get(pk=dev.pk))
    assert renewed["JWT_SECRET"] != supabase["JWT_SECRET"] and renewed["ANON_KEY"] != supabase["ANON_KEY"]
    assert renewed["APP_KEY"] == supabase["APP_KEY"]


GHOST_LIKE = """
diploiVersion: v1.0
type: component
name: Blog
hosts:
  - {name: Blog, identifier: app, port: 2368}
environmentVariables:
  - {identifier: database__client, defaultValue: mysql}
dependencies:
  - identifier: db
    package: {db}#v1
    env:
      include:
        - DB_HOST:database__connection__host
        - DB_PASSWORD:database__connection__password
local:
  start: python3 -u app.py
"""

DB_ADDON = """
diploiVersion: v1.0
type: addon
name: Database
parameterGroups:
  - name: Connection
    identifier: connection
    parameters:
      - {name: Host, identifier: DB_HOST, defaultValue: '${DIPLOI_HOST}', type: string}
      - {name: Password, identifier: DB_PASSWORD, defaultValue: '${generate-random-password:16}', type: secret}
storage:
  - {identifier: data, sizeMiB: 100, stages: [production]}
local:
  start: sleep infinity
  storage: {data: /var/lib/db}
"""


def test_a_components_dependencies_come_with_it(db, cast, git_daemon, tmp_path: Path, local_repositories) -> None:
    """component-ghost's shape: its package brings an add-on, whose variables the component gets under
    its own names; storage only in the stages it names."""
    base, server = git_daemon
    publish(base, "db", {"diploi.yaml": DB_ADDON}, tag="v1")
    publish(base, "blog", {"diploi.yaml": GHOST_LIKE.replace("{db}", f"{server}/db.git")}, tag="v1")
    stack = f"diploiVersion: v1.0\ncomponents:\n  - {{name: Blog, identifier: blog, package: {server}/blog.git#v1}}\n"
    project = project_with(tmp_path, stack, cast.owner)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors
    for stage, volumes in (("development", ()), ("production", ("data",))):
        d = do_create_deployment(project, stage.title(), stage, "main", actor=cast.owner)
        spec = build_spec(d, load_stack(d, project.stack_commit), project.stack_commit)
        assert [(s.identifier, s.kind) for s in spec.services] == [("blog", "component"), ("db", "addon")]
        env = environment(spec, spec.service("blog"))
        assert env["database__connection__host"] == "db" and env["database__client"] == "mysql"
        assert env["database__connection__password"] == spec.service("db").exports["DB_PASSWORD"]
        assert tuple(v.name for v in spec.service("db").volumes) == volumes
    # a dependency that cannot be used is said where it is written
    publish(base, "blog", {"diploi.yaml": GHOST_LIKE.replace("{db}", f"{server}/blog.git")}, tag="v1")
    project.package_locks = {}
    project.save()
    refresh_stack(project)
    assert any("dependencies[0]" in e["field"] and "not an add-on" in e["message"] for e in project.stack_errors), project.stack_errors


def test_cycles_in_a_deployments_own_values_are_refused_with_the_cycle(db, cast, git_daemon, tmp_path: Path, local_repositories) -> None:
    from deployments.models import EnvVar
    from deployments.provisioning.spec import StackInvalid

    base, server = git_daemon
    publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "one")}, tag="v1")
    project = project_with(tmp_path, STARTER.format(url=f"{server}/echo.git", ref="v1"), cast.owner)
    refresh_stack(project)
    d = do_create_deployment(project, "Dev", "development", "main", actor=cast.owner)
    EnvVar.objects.create(deployment=d, service="web", key="MODE", value="${SITE_URL}")
    with pytest.raises(StackInvalid, match="MODE → SITE_URL → MODE"):
        build_spec(d, load_stack(d, project.stack_commit), project.stack_commit)


def test_a_generated_secret_survives_a_clone(db, cast) -> None:
    d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    first = build_spec(d, load_stack(d, cast.project.stack_commit), cast.project.stack_commit)
    clone = do_create_deployment(cast.project, "Copy", "development", "main", actor=cast.developer, clone_of=d)
    again = build_spec(clone, load_stack(clone, cast.project.stack_commit), cast.project.stack_commit)
    assert again.services[1].exports["REDIS_PASSWORD"] == first.services[1].exports["REDIS_PASSWORD"]
    assert again.services[0].exports["SECRET_KEY"] == first.services[0].exports["SECRET_KEY"]


def test_the_stack_check_command_reads_a_folder_offline(tmp_path: Path) -> None:
    folder = tmp_path / "repo"
    (folder / "web").mkdir(parents=True)
    (folder / "pkg").mkdir()
    (folder / "pkg" / "diploi.yaml").write_text(PACKAGE.replace("__MODE__", "x"))
    (folder / "diploi.yaml").write_text(
        textwrap.dedent(
            """
            diploiVersion: v1.0
            components:
              - {name: Web, identifier: web, package: ./pkg, env: {include: [db.NOPE]}}
            addons:
              - {name: DB, identifier: db, package: 'https://github.com/diploi/addon-postgres#main'}
            """
        )
    )
    ok = subprocess.run(["uv", "run", "manage.py", "stack", "check", str(folder)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "diploi.yaml: web.env.include: warning: “db.NOPE”: db does not provide NOPE" in ok.stdout
    (folder / "pkg" / "diploi.yaml").write_text(PACKAGE.replace("type: string}", "type: text}", 1))
    bad = subprocess.run(["uv", "run", "manage.py", "stack", "check", str(folder)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "pkg/diploi.yaml: parameterGroups[0].parameters[1].type: must be one of: string, integer, secret, boolean" in bad.stdout
    single = subprocess.run(
        ["uv", "run", "manage.py", "stack", "check", str(folder / "pkg" / "diploi.yaml")], capture_output=True, text=True
    )
    assert single.returncode == 1 and "parameters[1].type" in single.stdout


IMAGE_ONLY = """
diploiVersion: v1.0
type: component
name: Image only
hosts:
  - {name: Web, identifier: web, port: 8080}
parameterGroups:
  - name: App
    identifier: app
    parameters:
      - {name: Token, identifier: TOKEN, defaultValue: '${generate-random-password:20}', type: secret}
images:
  - identifier: web
    prebuildImage: registry.example/echo:[tag]
storage:
  - {identifier: files, sizeMiB: 300}
"""


def test_a_package_without_a_local_recipe_runs_its_image_on_kubernetes_only(
    db, cast, git_daemon, tmp_path: Path, local_repositories, settings
) -> None:
    from deployments.runtimes.kubernetes.manifests import manifests
    from deployments.runtimes.local.programs import requirement_problem

    base, server = git_daemon
    publish(base, "image-only", {"diploi.yaml": IMAGE_ONLY}, tag="v2")
    project = project_with(tmp_path, STARTER.format(url=f"{server}/image-only.git", ref="v2"), cast.owner)
    refresh_stack(project)
    assert project.stack_errors == [] and project.stack["components"][0]["package"]["commands"] == {}
    page = cast.client(cast.owner).get(f"/projects/{project.slug}/").content.decode()
    assert "Kubernetes only (no local recipe)" in page
    d = do_create_deployment(project, "Prod", "production", "main", actor=cast.owner)
    spec = build_spec(d, load_stack(d, project.stack_commit), project.stack_commit)
    web = spec.service("web")
    assert not web.built and web.image == "registry.example/echo:v2"  # [tag]: the package's ref
    assert "runs on the Kubernetes runtime" in requirement_problem(None, spec, web, None)
    objects = {(o["kind"], o["metadata"]["name"]): o for o in manifests(spec)}
    container = objects["Deployment", "web"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/echo:v2" and "command" not in container  # the image's own entrypoint
    assert objects["Service", "web"]["spec"]["ports"][0]["port"] == 8080
    claims = {
        o["metadata"]["name"]: o["spec"]["resources"]["requests"]["storage"]
        for (kind, _), o in objects.items()
        if kind == "PersistentVolumeClaim"
    }
    assert claims == {"data.web.files": "300Mi", "data.redis.data": "1024Mi"}  # sizeMiB; an image has no code claim
    secret = next(o for (kind, name), o in objects.items() if kind == "Secret" and o["metadata"]["name"].startswith("env"))
    assert len(base64.b64decode(secret["data"]["TOKEN"])) == 20
    import kubernetes_validate

    for version in ("1.30.0", "1.37.0"):
        for obj in objects.values():
            kubernetes_validate.validate(obj, version, strict=True)  # raises on any unknown or wrong field


@pytest.mark.slow
def test_a_release_keeps_the_package_commits_it_was_built_with(db, cast, git_daemon, tmp_path: Path, local_repositories, runtime) -> None:
    from deployments.provisioning.spec import current_spec

    base, server = git_daemon
    first = publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "one")})
    project = project_with(tmp_path, STARTER.format(url=f"{server}/echo.git", ref="main"), cast.owner)
    refresh_stack(project)
    d = do_create_deployment(project, "Prod", "production", "main", actor=cast.owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, d.state_reason
    assert d.release.package_locks == {f"{server}/echo.git#main": first}

    publish(base, "echo", {"diploi.yaml": PACKAGE.replace("__MODE__", "two")})
    cast.client(cast.owner).post(f"/projects/{project.slug}/packages/update/")
    d = type(d).objects.get(pk=d.pk)
    assert current_spec(d).service("web").exports["MODE"] == "one"  # the running release: its own package commit
    tasks.provision(d.pk)  # the same commit again: no build, and still the release's packages
    d = type(d).objects.get(pk=d.pk)
    assert current_spec(d).service("web").exports["MODE"] == "one"
    assert wait_until(lambda: json.loads(http_get(d.endpoints["web"]))["MODE"], what="the page") == "one"
    actions.do_rebuild(d, actor=cast.owner)  # a new release takes the packages the project is locked to now
    tasks.provision(d.pk)
    d = type(d).objects.get(pk=d.pk)
    assert current_spec(d).service("web").exports["MODE"] == "two"
    assert wait_until(lambda: json.loads(http_get(d.endpoints["web"]))["MODE"] == "two" and "two", what="the new release") == "two"


def development_of(git_daemon, tmp_path: Path, owner, package: str, env: dict[str, str] | None = None) -> tuple[Deployment, object]:
    """A project whose one component, web, is `package` served by the git daemon: a development
    deployment of it, provisioned, and its spec."""
    base, server = git_daemon
    publish(base, "web", {"diploi.yaml": package})
    stack = f"diploiVersion: v1.0\ncomponents:\n  - {{name: Web, identifier: web, package: '{server}/web.git#main'}}\n"
    project = project_with(tmp_path, stack, owner)
    refresh_stack(project)
    assert project.stack_errors == [], project.stack_errors
    d = do_create_deployment(project, "Dev", "development", "main", actor=owner)
    if env:
        actions.do_save_env(d, "web", {k: (v, False) for k, v in env.items()}, actor=owner)
    tasks.provision(d.pk)
    d.refresh_from_db()
    return d, build_spec(d, load_stack(d, d.commit), d.commit)


def container(runtime, d: Deployment, spec, name: str = "web"):
    return next(c for c in runtime.observe([spec])[d.pk].containers if c.name == name)


TWO_SERVERS = """
diploiVersion: v1.0
type: component
name: Two servers
hosts:
  - {name: Web, identifier: web, port: 8000}
local:
  ports:
    - {name: vite, port: 5173, protocol: http}
  start: python3 -u app.py
  development: >-
    node -e "require('net').createServer().listen(5173, '127.0.0.1')";
    exec python3 -u -c "$SERVER"
"""

SERVER = """
import asyncio, json, os

async def main():
    said = {}
    for name, port in (("undeclared", 5173), ("declared", int(os.environ["PORT_VITE"]))):
        try:
            await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
            said[name] = "listening"
        except OSError as e:
            print(e, flush=True)
            said[name] = "refused"
    body = json.dumps(said).encode()

    async def answer(reader, writer):
        await reader.readline()
        writer.write(b"HTTP/1.0 200 OK\\r\\nContent-Type: application/json\\r\\n\\r\\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_port_its_package_does_not_declare_is_refused_with_a_line_that_says_how_to_declare_it(
    db, cast, git_daemon, tmp_path: Path, local_repositories, runtime
) -> None:
    d, spec = development_of(git_daemon, tmp_path, cast.owner, TWO_SERVERS, env={"SERVER": SERVER})
    seen = wait_until(lambda: json.loads(http_get(d.endpoints["web"])), what="the component")
    # Vite's own port, declared in the package, is given as $PORT_VITE; 5173 itself is not this machine's to give.
    assert seen == {"undeclared": "refused", "declared": "listening"}
    log = (runtime.home(spec) / "logs" / "web.log").read_text()
    note = "diploi: port 5173 is not one of this component's ports, so it may not listen on it"
    assert log.count(note) == 1, log  # once, though both Node and Python were refused it
    assert "declare this one in the package: a host with a port, or local.ports" in log
    assert "listen EACCES: permission denied 127.0.0.1:5173" in log


SLOW_INSTALL = """
diploiVersion: v1.0
type: component
name: Slow install
hosts:
  - {name: Web, identifier: web, port: 8000}
local:
  install: echo installing; while [ ! -f installed ]; do sleep 0.1; done; echo installed
  start: python3 -u app.py
  development: python3 -u app.py
  health: {http: /}
"""


@pytest.mark.slow
def test_a_development_install_shows_on_the_overview_while_it_runs(
    db, cast, git_daemon, tmp_path: Path, local_repositories, runtime, settings
) -> None:
    settings.DIPLOI_READY_TIMEOUT = 1  # it does not answer until its install is let through
    d, spec = development_of(git_daemon, tmp_path, cast.owner, SLOW_INSTALL)

    def web():
        return container(runtime, d, spec)

    installing = wait_until(lambda: "installing dependencies" in web().message and web(), what="the install to show")
    assert installing.colour == Colour.PENDING and installing.message == "installing dependencies… (its log shows the output)"
    (runtime.home(spec) / "code" / "web" / "installed").touch()
    wait_until(lambda: json.loads(http_get(d.endpoints["web"])), what="the app after its install")
    assert web().colour == Colour.GREEN and web().message == "running"
    log = (runtime.home(spec) / "logs" / "web.log").read_text()
    assert log.index("installing\n") < log.index("installed\n")


FAILING_INSTALL = SLOW_INSTALL.replace(
    "install: echo installing; while [ ! -f installed ]; do sleep 0.1; done; echo installed",
    "install: grep -q ok package-lock.json || { echo 'npm error 404 Not Found - left-pad@9.9.9'; exit 3; }",
)


@pytest.mark.slow
def test_a_failed_development_install_is_red_with_its_error_and_runs_again_when_the_lockfile_changes(
    db, cast, git_daemon, tmp_path: Path, local_repositories, runtime, settings
) -> None:
    settings.DIPLOI_READY_TIMEOUT = 1
    d, spec = development_of(git_daemon, tmp_path, cast.owner, FAILING_INSTALL)

    def web():
        return container(runtime, d, spec)

    failed = wait_until(lambda: web().colour == Colour.RED and web(), what="the failed install to show")
    assert failed.message.startswith("installing dependencies failed (exit code 3); it runs again when a lockfile changes, or on Restart")
    assert "npm error 404 Not Found - left-pad@9.9.9" in failed.message  # what the install said last
    time.sleep(3)
    log = (runtime.home(spec) / "logs" / "web.log").read_text()
    assert log.count("npm error 404") == 1 and web().restarts == 0  # not retried in a loop (each try would fetch again)
    (runtime.home(spec) / "code" / "web" / "package-lock.json").write_text("ok")  # the developer fixes the lockfile
    wait_until(lambda: json.loads(http_get(d.endpoints["web"])), what="the app after the install ran again")
    assert web().colour == Colour.GREEN


@pytest.mark.parametrize(
    "template, want",
    [
        ("kv.{namespace}", "{host}"),
        ("6000", "{port.kv}"),
        ("http://kv.{namespace}:6000/", "http://{host}:{port.kv}/"),
        ("kv.{namespace}.svc.cluster.local:6000", "{host}:{port.kv}"),
        ("other.{namespace}", "other.{namespace}"),  # not one of its Services
        ("60001", "60001"),
    ],
)
def test_kubernetes_addresses_of_a_chart_become_this_machines(template: str, want: str) -> None:
    """A package that is only an image and a chart, on this machine: what it tells others of its Service."""
    from deployments.runtimes.local.charted import _addressed

    assert _addressed(template, [("kv", "kv", 6000, 6000)]) == want
