"""Diploi's project and package files: what parses, what each malformed variant says (file, field,
reason), the bounds a file reachable by any project creator must respect, and the first format's
files still read with a deprecation notice."""

import textwrap
from pathlib import Path

import pytest

from projects import values
from projects.legacy import parse_legacy_package
from projects.models import Project
from projects.package import load_builtin, parse_package
from projects.sample import SAMPLE_DIR, commit_all
from projects.stack import refresh_stack
from projects.stackerrors import TooLarge
from projects.stackfile import parse_stack


class Files:
    """A repository tree given as a dict; the real Git-backed reader is exercised in test_it_packages."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read(self, path: str, limit: int) -> bytes | None:
        if path not in self.files:
            return None
        if len(self.files[path]) > limit:
            raise TooLarge(len(self.files[path]))
        return self.files[path].encode()

    def is_folder(self, path: str) -> bool:
        return any(name.startswith(path.rstrip("/") + "/") for name in self.files)


WEB_PACKAGE = """
diploiVersion: v1.0
type: component
name: Shop web
description: The shop's storefront
hosts:
  - name: Storefront
    identifier: app
    port: 9000
parameterGroups:
  - name: Secrets
    identifier: secrets
    description: Keys of the application
    parameters:
      - name: Secret key
        identifier: SECRET_KEY
        defaultValue: '${generate-random-password:50}'
        type: secret
      - name: Workers
        identifier: WORKERS
        defaultValue: 2
        type: integer
images:
  - identifier: app
    prebuildImage: registry.example/shop/web:[tag]
local:
  start: ./run --port {port}
"""

CACHE_PACKAGE = """
diploiVersion: v1.0
type: addon
name: Cache
parameterGroups:
  - name: Connection
    identifier: cache
    parameters:
      - {name: Host, identifier: CACHE_HOST, defaultValue: '${DIPLOI_HOST}', type: string}
      - {name: Port, identifier: CACHE_PORT, defaultValue: 7000, type: integer}
      - {name: Password, identifier: CACHE_PASSWORD, defaultValue: '${generate-random-password:24}', type: secret, readOnly: true}
      - {name: URL, identifier: CACHE_URL, defaultValue: 'cache://:${CACHE_PASSWORD}@${CACHE_HOST}:${CACHE_PORT}', type: secret}
connectionStrings:
  - name: Connection URI
    value: cache://:${CACHE_PASSWORD}@${CACHE_HOST}:${CACHE_PORT}/${DIPLOI_NAMESPACE}
    description: Inside the deployment only
logs:
  - name: Server log
    type: log
    labelSelector: app=cache
  - name: Clock
    type: exec
    command: [sh, -c, date]
storage:
  - identifier: data
    sizeMiB: 2048
local:
  start: cache-server --port {port} --dir {storage.data}
  ports: [{name: cache, port: 7000}]
  storage: {data: /var/lib/cache}
  health: {tcp: true}
"""

REPO = Files(
    {
        "web/app.py": "",
        "api/main.js": "",
        "pkgs/web/diploi.yaml": WEB_PACKAGE,
        "pkgs/cache/diploi.yaml": CACHE_PACKAGE,
        "pkgs/old/diploi-package.yaml": textwrap.dedent(
            """
            name: old
            kind: component
            commands: {start: "./run --port {port}"}
            ports: [{name: http, port: 9000, public: true}]
            env: {OLD_URL: "http://{host}:{port}"}
            """
        ),
        "pkgs/broken/diploi.yaml": "diploiVersion: v1.0\ntype: component\nname: broken\nlocal: {start: 'x {nope}'}\n",
    }
)

GOOD = """
diploiVersion: v1.0
type: starter
name: Shop
description: A shop with a storefront, an API, PostgreSQL and a cache
previewImageUrls: [preview-1.jpg, preview-2.jpg]
components:
  - name: Web
    identifier: web
    folder: /web
    package: ./pkgs/web
    env:
      include:
        - postgres.POSTGRES_USER:DB_USER
        - cache.*
        - {path: postgres.POSTGRES_DB, name: DB_NAME}
        - name: FEATURE_ON
          value: true
  - name: API
    identifier: api
    folder: api/
    package: https://github.com/diploi/component-nodejs#main
    prebuildImage: ghcr.io/example/shop/api:[tag]
    env:
      include: '*'
addons:
  - name: PostgreSQL
    identifier: postgres
    package: https://github.com/diploi/addon-postgres#main
  - name: Cache
    identifier: cache
    package: ./pkgs/cache
"""


def test_it_parses_a_diploi_starter() -> None:
    stack, errors = parse_stack(GOOD, REPO)
    assert errors == [] and stack.warnings == []
    assert (stack.kind, stack.name, stack.preview_images) == ("starter", "Shop", ["preview-1.jpg", "preview-2.jpg"])
    web, api = stack.components
    postgres, cache = stack.addons
    assert (web.folder, api.folder) == ("web", "api")
    # Diploi's official packages are served by the built-in recipe of the same kind, with Diploi's parameter names.
    assert (api.package.recipe, postgres.package.recipe) == ("node", "postgres")
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(postgres.package.env)
    assert api.prebuild_image == "ghcr.io/example/shop/api:[tag]" and api.package_ref.endswith("#main")
    includes = [(e.identifier, e.name, e.alias, e.value) for e in web.env_include]
    assert includes == [
        ("postgres", "POSTGRES_USER", "DB_USER", None),
        ("cache", "*", "", None),
        ("postgres", "POSTGRES_DB", "DB_NAME", None),
        ("", "FEATURE_ON", "", "true"),
    ]
    assert [(e.identifier, e.name) for e in api.env_include] == [("*", "*")]  # `include: '*'`
    # The component package: hosts (its public port), a generated secret, an integer, an image.
    assert [(h.identifier, h.port) for h in web.package.hosts] == [("app", 9000)]
    assert [(p.name, p.port, p.public) for p in web.package.ports] == [("app", 9000, True)]
    secret = web.package.parameters[0]
    assert (secret.key, secret.type, secret.group, secret.default) == ("SECRET_KEY", "secret", "Secrets", "${generate-random-password:50}")
    assert web.package.images[0].prebuild == "registry.example/shop/web:[tag]"
    # The add-on package: interpolated parameters, connection strings, logs, storage sized in MiB.
    assert [c.name for c in cache.package.connection_strings] == ["Connection URI"]
    assert [(lg.name, lg.type) for lg in cache.package.logs] == [("Server log", "log"), ("Clock", "exec")]
    assert [(s.name, s.path, s.size) for s in cache.package.storage] == [("data", "/var/lib/cache", "2048Mi")]


def test_values_resolve_in_dependency_order_and_generate_passwords_once() -> None:
    stack, _ = parse_stack(GOOD, REPO)
    cache = stack.addons[1].package
    asked = []
    resolved = values.resolve(cache.env, {}, lambda key, i, g, secret: asked.append((key, i, g.kind, g.size)) or "p" * g.size)
    assert asked == [("CACHE_PASSWORD", 0, "password", 24)]
    assert resolved["CACHE_URL"] == f"cache://:{'p' * 24}@{{host}}:7000"  # {host}: filled by each runtime
    # A deployment's own value replaces the default, and what refers to it follows.
    assert values.resolve(cache.env, {"CACHE_PORT": "7100"}, lambda *_: "x")["CACHE_URL"] == "cache://:x@{host}:7100"
    uri = values.fill(cache.connection_strings[0].value, resolved)
    assert uri == f"cache://:{'p' * 24}@{{host}}:7000/{{namespace}}"
    with pytest.raises(values.Cycle, match="A → B → A"):
        values.resolve({"A": "${B}", "B": "${A}"}, {}, lambda *_: "")


def test_every_generator_of_diploi_files_and_host_endpoints() -> None:
    """What Diploi's published files use: random passwords and bytes (Laravel's `base64:` key), JWTs
    signed with another parameter (Supabase's anon and service keys), `${<HOST>_ENDPOINT}`."""
    import base64
    import hashlib
    import hmac
    import json

    templates = {
        "APP_KEY": "base64:${generate-random-bytes:32}",
        "JWT_SECRET": "${generate-random-password:32}",
        "ANON_KEY": "${generate-jwt:JWT_SECRET:role=anon&iss=supabase&exp=126144000}",
        "SITE": "${APP_ENDPOINT}/auth",
    }
    assert values.check(templates, hosts=("app",)) == []
    asked = []

    def generate(key: str, index: int, found: values.Generator, secret: str) -> str:
        asked.append((key, found.kind, secret))
        if found.kind == "jwt":
            return values.jwt(secret, found.claims, 1_700_000_000)
        return "s3cret-value-of-32-characters-xx" if found.kind == "password" else "Ynl0ZXM="

    resolved = values.resolve(templates, {}, generate, values.endpoint_variables(["app"]))
    assert resolved["APP_KEY"] == "base64:Ynl0ZXM=" and resolved["SITE"] == "{endpoint.app}/auth"
    assert ("ANON_KEY", "jwt", "s3cret-value-of-32-characters-xx") in asked  # signed with the secret's own value
    head, body, signature = resolved["ANON_KEY"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert claims == {"iat": 1_700_000_000, "role": "anon", "iss": "supabase", "exp": 1_700_000_000 + 126144000}
    expected = hmac.new(b"s3cret-value-of-32-characters-xx", f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=") == expected
    # a user's own secret: the JWT follows it
    again = values.resolve(templates, {"JWT_SECRET": "mine"}, generate)
    assert again["ANON_KEY"].split(".")[2] != signature


@pytest.mark.parametrize(
    "value, message",
    [
        ("${generate-random-bytes:2}", "generate-random-bytes:N} with N from 8 to 1024"),
        ("${generate-random-bytes:many}", "generate-random-bytes:N} with N from 8 to 1024"),
        ("${generate-jwt:MISSING:role=anon}", "MISSING is not a parameter of this package"),
        ("${generate-jwt:SECRET_KEY}", "write ${generate-jwt:SECRET_PARAMETER:claim=value&exp=SECONDS}"),
        ("${generate-jwt:SECRET_KEY:exp=soon}", "write ${generate-jwt:SECRET_PARAMETER:claim=value&exp=SECONDS}"),
        ("${generate-uuid}", "unknown generator"),
        ("${WEB_ENDPOINT}", "neither a parameter of this package nor one of"),
    ],
)
def test_a_malformed_generator_names_file_field_and_reason(value: str, message: str) -> None:
    text = replace("        defaultValue: 2", f"        defaultValue: '{value}'", WEB_PACKAGE)
    package, errors = parse_package(text, "pkgs/web/diploi.yaml", "./pkgs/web")
    assert package is None
    found = [(e.file, e.field, e.message) for e in errors]
    assert any((f, w) == ("pkgs/web/diploi.yaml", "parameterGroups.WORKERS") and message in m for f, w, m in found), found


def test_a_generator_in_a_project_files_literal_is_checked() -> None:
    text = replace("          value: true\n", "          value: 'base64:${generate-random-bytes:4}'\n")
    stack, errors = parse_stack(text, REPO)
    assert stack is None
    found = [(e.field, e.message) for e in errors]
    assert any(f == "components[0].env.include[3].value" and "N from 8 to 1024" in m for f, m in found), found


def test_the_built_in_packages_and_the_sample_are_in_diploi_format() -> None:
    for name in ("python", "node", "postgres", "redis"):
        package, problems = load_builtin(name)
        assert package and not package.legacy and package.runs_locally and problems == [], (name, problems)
    stack, errors = parse_stack((SAMPLE_DIR / "diploi.yaml").read_text(), Files({"web/app.py": ""}))
    assert errors == [] and stack.warnings == []
    assert [s.identifier for s in stack.services] == ["web", "redis"] and stack.addons[0].package.recipe == "redis"


def test_diploi_published_shapes_load() -> None:
    """Shapes Diploi's own repositories use: the docs site's `include: '*'` with no add-ons, a starter
    whose component has no folder (it defaults to its identifier's folder), fields this platform
    does not read (a warning each, never a refusal)."""
    docs = "diploiVersion: v1.0\ncomponents:\n  - name: Site\n    identifier: docs\n    package: node\n"
    docs += "    env:\n      include: '*'\naddons: []\n"
    stack, errors = parse_stack(docs, Files({"docs/package.json": "{}"}))
    assert errors == [] and stack.components[0].folder == "docs"
    package = WEB_PACKAGE + "contexts:\n  - {name: app, identifier: app}\nsupportsAdditionalHosts: {serviceName: app}\nfutureField: 1\n"
    parsed, problems = parse_package(package, "pkg/diploi.yaml", "./pkg")
    assert parsed is not None
    assert [(w.field, w.severity) for w in problems] == [("futureField", "warning")]


def test_the_first_format_still_loads_with_a_deprecation_notice() -> None:
    old = GOOD.replace("package: ./pkgs/web", "package: ./pkgs/old") + "env:\n  include:\n    - cache.CACHE_URL\n"
    stack, errors = parse_stack(old, REPO)
    assert errors == []
    notices = {(w.file, w.field): w.message for w in stack.warnings}
    assert "deprecated" in notices[("diploi.yaml", "env")]
    assert "write it as pkgs/old/diploi.yaml" in notices[("pkgs/old/diploi-package.yaml", "")]
    web = stack.components[0]
    assert web.package.legacy and web.package.env == {"OLD_URL": "http://{host}:{port}"}
    assert ("cache", "CACHE_URL") in [(e.identifier, e.name) for e in web.env_include]  # the top-level include applies to each component
    _, errors = parse_legacy_package("name: p\nkind: addon\ncommands: {start: run}\nstorage: [{name: d, path: data}]\n", "p", "p")
    assert errors[0].field == "storage[0].path" and "absolute path" in errors[0].message


def replace(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


WITH_START = replace("    folder: /web\n", "    folder: /web\n    containerCommands: {developmentStart: './dev --port 9000'}\n")


def test_a_components_own_start_commands_replace_its_packages() -> None:
    """Diploi's `containerCommands`: the project's start command in development (and production) runs
    instead of its package's; what a chart reads keeps them as written."""
    from deployments.provisioning.spec import _commands

    stack, errors = parse_stack(WITH_START, REPO)
    assert errors == [], errors
    web, api = stack.components[:2]
    assert web.start_commands == (("developmentStart", "./dev --port 9000"),)
    assert _commands(web)["development"] == "./dev --port 9000"
    assert _commands(web)["start"] == web.package.commands["start"]  # productionStart not given: the package's
    assert _commands(api) == api.package.commands


MALFORMED = [
    ("diploiVersion: v1.0\ncomponents: [\n", "diploi.yaml", "line", "is not valid YAML"),
    ("- just\n- a list\n", "diploi.yaml", "", "must be a mapping, not a list"),
    ("", "diploi.yaml", "", "must be a mapping, not empty"),
    (replace("diploiVersion: v1.0", "diploiVersion: v9"), "diploi.yaml", "diploiVersion", "“v9” is not supported"),
    (replace("diploiVersion: v1.0\n", ""), "diploi.yaml", "diploiVersion", "is required"),
    (replace("type: starter", "type: component"), "diploi.yaml", "type", "package's file, not a project's"),
    (replace("type: starter", "type: library"), "diploi.yaml", "type", "must be starter"),
    (replace("[preview-1.jpg, preview-2.jpg]", "3"), "diploi.yaml", "previewImageUrls", "must be a list"),
    ("diploiVersion: v1.0\ncomponents: web\n", "diploi.yaml", "components", "must be a list"),
    ("diploiVersion: v1.0\naddons: []\n", "diploi.yaml", "components", "at least one component is required"),
    (replace("    identifier: web\n", ""), "diploi.yaml", "components[0].identifier", "is required"),
    (replace("identifier: web", "identifier: Web_1"), "diploi.yaml", "components[0].identifier", "may contain only lowercase"),
    (replace("identifier: web", "identifier: " + "a" * 64), "diploi.yaml", "components[0].identifier", "at most 63 characters"),
    (replace("identifier: api", "identifier: web"), "diploi.yaml", "components[1].identifier", "“web” is already used by components[0]"),
    (replace("identifier: cache", "identifier: postgres"), "diploi.yaml", "addons[1].identifier", "already used by addons[0]"),
    (replace("package: ./pkgs/web", "package: rails"), "diploi.yaml", "components[0].package", "unknown package “rails”"),
    (replace("package: ./pkgs/web", "package: ./pkgs/cache"), "diploi.yaml", "components[0].package", "is an add-on package and cannot"),
    (replace("package: ./pkgs/cache", "package: ./pkgs/web"), "diploi.yaml", "addons[1].package", "is a component package and cannot"),
    (replace("package: ./pkgs/web", "package: ./pkgs/missing"), "diploi.yaml", "components[0].package", "has no pkgs/missing/diploi.yaml"),
    (replace("package: ./pkgs/web", "package: ./pkgs/broken"), "pkgs/broken/diploi.yaml", "local.start", "unknown placeholder {nope}"),
    (replace("package: ./pkgs/web", "package: ./../etc"), "diploi.yaml", "components[0].package", "must name a folder inside"),
    (replace("folder: /web", "folder: ../../etc"), "diploi.yaml", "components[0].folder", "points outside the repository"),
    (replace("folder: /web", "folder: /frontend"), "diploi.yaml", "components[0].folder", "does not exist in the repository"),
    (replace("        - cache.*", "        - cache.*:ALL"), "diploi.yaml", "components[0].env.include[1]", "only a single variable"),
    (replace("        - cache.*", "        - post*.USER"), "diploi.yaml", "components[0].env.include[1]", "a pattern of identifiers"),
    (replace("        - cache.*", "        - just text"), "diploi.yaml", "components[0].env.include[1]", "must be “*”"),
    (replace("        - cache.*", "        - 42"), "diploi.yaml", "components[0].env.include[1]", "must be “*”"),
    (
        replace("postgres.POSTGRES_USER:DB_USER", "postgres.POSTGRES_USER:1BAD"),
        "diploi.yaml",
        "components[0].env.include[0]",
        "alias “1BAD” must be letters",
    ),
    (replace("          value: true\n", ""), "diploi.yaml", "components[0].env.include[3].value", "is required"),
    (replace("- name: FEATURE_ON", "- name: BAD-NAME"), "diploi.yaml", "components[0].env.include[3].name", "must be letters"),
    (replace("      include: '*'", "      include: 5"), "diploi.yaml", "components[1].env.include", "must be a list, or '*'"),
    # Diploi's own docs page writes `- *`, which YAML reads as an alias with no name.
    (replace("        - cache.*", "        - *"), "diploi.yaml", "line 15", "a lone * must be quoted: '*'"),
    ("diploiVersion: v1.0\ncomponents: []\n" + "# padding\n" * 8000, "diploi.yaml", "", "larger than 64 KiB"),
    (WITH_START.replace("developmentStart", "devStart"), "diploi.yaml", "components[0].containerCommands.devStart", "unknown field"),
    (
        WITH_START.replace("'./dev --port 9000'", "'  '"),
        "diploi.yaml",
        "components[0].containerCommands.developmentStart",
        "a shell command",
    ),
    (WITH_START.replace("{developmentStart: './dev --port 9000'}", "[x]"), "diploi.yaml", "components[0].containerCommands", "mapping"),
]


@pytest.mark.parametrize("text, file, field, message", MALFORMED)
def test_it_explains_what_is_wrong(text: str, file: str, field: str, message: str) -> None:
    stack, errors = parse_stack(text, REPO)
    assert stack is None
    assert any(e.file == file and e.field.startswith(field) and message in e.message for e in errors), [str(e) for e in errors]


PACKAGE_MALFORMED = [
    ("type: component", "type: starter", "type", "must be component or addon"),
    ("        type: secret", "        type: password", "parameterGroups[0].parameters[0].type", "must be one of"),
    ("        defaultValue: 2", "        defaultValue: two", "parameterGroups[0].parameters[1].defaultValue", "is not an integer"),
    ("generate-random-password:50", "generate-random-password:4", "parameterGroups.SECRET_KEY", "N from 8 to 256"),
    ("generate-random-password:50", "NOT_A_PARAMETER", "parameterGroups.SECRET_KEY", "neither a parameter of this package"),
    ("        defaultValue: 2", "        defaultValue: '${SECRET_KEY}${WORKERS}'", "parameterGroups.WORKERS", "cycle: WORKERS → WORKERS"),
    ("    port: 9000", "    port: 99999", "hosts[0].port", "port number"),
    ("    identifier: app\n    port", "    identifier: App_1\n    port", "hosts[0].identifier", "may contain only lowercase"),
    ("\n    prebuildImage: registry.example/shop/web:[tag]", "", "images[0]", "needs image or prebuildImage"),
    ("  start: ./run --port {port}", "  start: ./run {secret}", "local.start", "unknown placeholder {secret}"),
    ("  start: ./run --port {port}", "  build: make", "local.start", "is required"),
]


@pytest.mark.parametrize("old, new, field, message", PACKAGE_MALFORMED)
def test_a_malformed_package_names_file_field_and_reason(old: str, new: str, field: str, message: str) -> None:
    package, errors = parse_package(replace(old, new, WEB_PACKAGE), "pkgs/web/diploi.yaml", "./pkgs/web")
    assert package is None
    assert any(e.file == "pkgs/web/diploi.yaml" and e.field == field and message in e.message for e in errors), [str(e) for e in errors]


def test_the_add_on_package_checks_its_own_fields() -> None:
    for old, new, field, message in [
        ("    sizeMiB: 2048", "    sizeMiB: 2Gi", "storage[0].sizeMiB", "whole number of MiB"),
        ("  storage: {data: /var/lib/cache}", "  storage: {data: relative}", "local.storage.data", "absolute path"),
        ("  storage: {data: /var/lib/cache}", "  storage: {other: /x}", "local.storage.other", "names no storage entry"),
        ("    type: exec", "    type: metrics", "logs[1].type", "must be log or exec"),
    ]:
        package, errors = parse_package(replace(old, new, CACHE_PACKAGE), "c.yaml", "./c")
        assert package is None and any(e.field == field and message in e.message for e in errors), (field, [str(e) for e in errors])


MARIADB_LIKE = """
diploiVersion: v1.0
type: addon
name: MariaDB
parameterGroups:
  - name: Connection
    identifier: CONNECTION
    parameters:
      - {name: User, identifier: MARIADB_USER, defaultValue: mariadb, type: string}
      - {name: Password, identifier: MARIADB_PASSWORD, defaultValue: '${generate-random-password:16}', type: secret}
environmentVariables:
  - {identifier: MARIADB_USER, defaultValue: mariadb, type: string}
  - {identifier: MARIADB_EXTRA, defaultValue: root}
  - {identifier: MARIADB_EXTRA, defaultValue: other}
connectionStrings:
  - name: Connection URI
    value: mysql://${MARIADB_USER}:${MARIADB_PASSWORD}@${DIPLOI_HOST}/${MARIADB_DB}
storage:
  - {identifier: mariadb, sizeMiB: 6144, stages: [staging, production], uid: 999, gid: 999}
defaultContainer: mariadb
local:
  start: sleep infinity
  storage: {mariadb: /var/lib/mysql}
"""


def test_offline_a_package_by_url_is_not_checked_and_the_rest_is() -> None:
    text = replace("package: ./pkgs/web", "package: https://git.example/shop/web#v1")
    stack, problems = parse_stack(text, REPO)
    assert stack is not None and [s.identifier for s in stack.components] == ["api"]
    said = [(w.field, w.message) for w in stack.warnings]
    assert ("components[0].package", "not checked: a package by Git URL is fetched only when asked (stack check --fetch)") in said
    assert not any("web" in m and "does not provide" in m for _, m in said), said  # (what it provides is unknown)
    stack, problems = parse_stack(text.replace("folder: /web", "folder: /frontend"), REPO)
    assert stack is None and any(e.field == "components[0].folder" and e.severity == "error" for e in problems)
    assert any(e.severity == "warning" and e.message.startswith("not checked") for e in problems)


def test_what_diploi_s_own_files_do_loads_with_warnings() -> None:
    """A key declared twice (once with another default), a connection string naming no parameter:
    Diploi's MariaDB add-on does both; it loads, each said as a warning. Storage per stage and owner."""
    package, problems = parse_package(MARIADB_LIKE, "m.yaml", "./m")
    assert package is not None
    said = [f"{e.field}: {e.message}" for e in problems if e.severity == "warning"]
    assert any("MARIADB_USER is declared more than once with the same default" in m for m in said), said
    assert any("MARIADB_EXTRA is declared more than once (default “root” is used, not “other”)" in m for m in said), said
    assert any(m.startswith("connectionStrings[0].value: ${MARIADB_DB} is neither") for m in said), said
    assert [q.key for q in package.parameters] == ["MARIADB_USER", "MARIADB_PASSWORD", "MARIADB_EXTRA"]
    assert package.env["MARIADB_EXTRA"] == "root"
    volume = package.storage[0]
    assert (volume.stages, volume.uid, volume.gid) == (("staging", "production"), 999, 999)
    for old, new, field in [
        ("stages: [staging, production]", "stages: [preview]", "storage[0].stages"),
        ("uid: 999", "uid: -1", "storage[0].uid"),
    ]:
        refused, problems = parse_package(MARIADB_LIKE.replace(old, new), "m.yaml", "./m")
        assert refused is None and any(e.field == field and e.severity == "error" for e in problems), problems
        # a refused file's warnings are said too
        assert any(e.severity == "warning" and "declared more than once" in e.message for e in problems)


def test_bounds_hold_for_hostile_files() -> None:
    """Aliases multiply a file (18 KB became 90,300 parameters); sizes are checked before reading;
    lists are capped."""
    bomb = "diploiVersion: v1.0\nx: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\ny: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\ncomponents: []\n"
    _, errors = parse_stack(bomb, REPO)
    assert "aliases are not allowed" in errors[0].message and errors[0].field == "line 3"
    many = "diploiVersion: v1.0\nx: [" + ", ".join(["1"] * 5_001) + "]\n"
    assert "more than 5000 values" in parse_stack(many, REPO)[1][0].message
    services = "".join(f"  - {{name: c{i}, identifier: c{i}, package: python}}\n" for i in range(51))
    assert "at most 50 are allowed" in parse_stack(f"diploiVersion: v1.0\ncomponents:\n{services}", REPO)[1][0].message
    huge = Files({**REPO.files, "pkgs/web/diploi.yaml": WEB_PACKAGE + "#" * 70_000})
    _, errors = parse_stack(GOOD, huge)
    assert any(e.file == "pkgs/web/diploi.yaml" and "a package file may be at most 64 KiB" in e.message for e in errors), errors
    params = "".join(f"      - {{identifier: P{i}}}\n" for i in range(201))
    _, errors = parse_package(f"type: addon\nname: p\nparameterGroups:\n  - name: g\n    parameters:\n{params}", "p.yaml", "p")
    assert any("at most 200" in e.message for e in errors)


def test_reading_a_stack_has_a_time_budget(monkeypatch) -> None:
    """Packages are read (and fetched) until the budget is spent; the rest is refused, each saying why."""
    import projects.stackfile

    monkeypatch.setattr(projects.stackfile, "READ_BUDGET", 0.0)
    _, errors = parse_stack(GOOD, REPO)
    assert {e.field for e in errors} == {"components[0].package", "components[1].package", "addons[0].package", "addons[1].package"}
    assert all("took more than 0 s" in e.message for e in errors)


def test_an_include_naming_nothing_is_a_warning_not_a_refusal() -> None:
    stack, errors = parse_stack(replace("        - cache.*", "        - shop.*\n        - postgres.NOPE"), REPO)
    assert errors == []
    assert [(w.field, w.message) for w in stack.warnings] == [
        ("web.env.include", "“shop” names no component or add-on of this project; it includes nothing"),
        (
            "web.env.include",
            f"“postgres.NOPE”: postgres does not provide NOPE (it provides: {', '.join(sorted(stack.addons[0].package.env))})",
        ),
    ]


def test_it_reports_a_missing_stack_file() -> None:
    _, errors = parse_stack(None, REPO)
    assert str(errors[0]) == "diploi.yaml: not found at the root of the branch"


# The same checks through real Git: what the project page shows.


def test_it_reads_the_stack_of_the_default_branch(cast) -> None:
    project = cast.project
    assert project.stack_errors == []
    assert [c["identifier"] for c in project.stack["components"]] == ["web"]
    assert len(project.stack_commit) == 40
    page = cast.client(cast.viewer).get(f"/projects/{project.slug}/").content.decode()
    assert "Valid at commit" in page and "Visit counter" in page
    assert "https://github.com/diploi/addon-redis#main" in page and "built-in redis" in page


def test_it_shows_file_field_and_reason_on_the_project_page(cast, sample_repo: Path) -> None:
    stack_file = sample_repo / "diploi.yaml"
    stack_file.write_text(stack_file.read_text().replace("package: python", "package: mongo"))
    commit_all(sample_repo, "Use an unknown package")

    r = cast.client(cast.developer).post(f"/projects/{cast.project.slug}/refresh/")
    assert r.status_code == 302
    page = cast.client(cast.developer).get(f"/projects/{cast.project.slug}/").content.decode()
    assert "1 problem" in page
    assert "diploi.yaml · components[0].package" in page
    assert "unknown package “mongo”" in page


def test_the_project_page_shows_deprecations_and_warnings(cast, sample_repo: Path) -> None:
    stack_file = sample_repo / "diploi.yaml"
    stack_file.write_text(stack_file.read_text().replace("        - redis.REDIS_URL\n", "        - redis.REDIS_URL\n        - shop.*\n"))
    commit_all(sample_repo, "Include from a service that does not exist")
    refresh_stack(cast.project)
    page = cast.client(cast.viewer).get(f"/projects/{cast.project.slug}/").content.decode()
    assert "Valid at commit" in page and "1 warning" in page
    assert "web.env.include" in page and "“shop” names no component or add-on" in page


def test_it_reports_an_unreadable_repository(db, cast, tmp_path: Path) -> None:
    project = cast.project
    project.repository = str(tmp_path / "nowhere")
    project.save()
    refresh_stack(project)
    assert project.stack is None
    assert project.errors[0].file == "repository"
    assert "Could not read the repository" in project.errors[0].message
    r = cast.client(cast.owner).get(f"/projects/{project.slug}/")
    assert r.status_code == 200 and "Could not read the repository" in r.content.decode()


def test_it_reports_a_missing_branch(cast) -> None:
    project = cast.project
    project.default_branch = "release"
    project.save()
    refresh_stack(project)
    assert [str(e) for e in project.errors] == ["repository: Branch “release” does not exist in the repository."]


def test_it_follows_new_commits(cast, sample_repo: Path) -> None:
    first = cast.project.stack_commit
    (sample_repo / "web" / "extra.py").write_text("x = 1\n")
    second = commit_all(sample_repo, "More")
    refresh_stack(cast.project)
    assert cast.project.stack_commit == second != first
    assert Project.objects.get(pk=cast.project.pk).stack_commit == second


def test_a_starters_preview_images_are_served_from_its_diploi_folder(cast, sample_repo: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    (sample_repo / ".diploi").mkdir()
    (sample_repo / ".diploi" / "preview-1.png").write_bytes(png)
    (sample_repo / "secret.png").write_bytes(b"not for you")
    stack_file = sample_repo / "diploi.yaml"
    previews = "previewImageUrls: [preview-1.png, ../secret.png, 'https://images.example/p.jpg', notes.txt]\n"
    stack_file.write_text(stack_file.read_text().replace("components:\n", previews + "components:\n", 1))
    commit_all(sample_repo, "Previews")
    refresh_stack(cast.project)
    viewer = cast.client(cast.viewer)
    page = viewer.get("/projects/shop/").content.decode()
    assert 'src="/projects/shop/preview/0/"' in page and 'alt="Preview 1 of Visit counter"' in page
    r = viewer.get("/projects/shop/preview/0/")
    assert r.status_code == 200 and r["Content-Type"] == "image/png" and r.content == png
    assert viewer.get("/projects/shop/preview/1/").status_code == 404  # outside .diploi/
    assert viewer.get("/projects/shop/preview/2/")["Location"] == "https://images.example/p.jpg"
    assert viewer.get("/projects/shop/preview/3/").status_code == 404  # not an image
    assert viewer.get("/projects/shop/preview/9/").status_code == 404
    assert cast.client(cast.outsider).get("/projects/shop/preview/0/").status_code == 404


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("        - name: FEATURE_ON\n", "        - name: DIPLOI_HOST\n", "components[0].env.include[3].name"),
        ("postgres.POSTGRES_USER:DB_USER", "postgres.POSTGRES_USER:DIPLOI_STAGE", "components[0].env.include[0]"),
        ("{path: postgres.POSTGRES_DB, name: DB_NAME}", "{path: postgres.POSTGRES_DB, name: diploi_port}", "components[0].env.include[2]"),
    ],
)
def test_a_project_file_may_not_set_diploi_own_variables(old: str, new: str, field: str) -> None:
    stack, errors = parse_stack(replace(old, new), REPO)
    assert stack is None
    found = [(e.field, e.message) for e in errors]
    assert any(f == field and "starts with DIPLOI_: those names are set by Diploi" in m for f, m in found), found
