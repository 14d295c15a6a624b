import json
import textwrap
from pathlib import Path

import pytest

from projects.models import Project
from projects.sample import SAMPLE_DIR, commit_all
from projects.stack import refresh_stack
from projects.stackfile import parse_stack


class Files:
    """A repository tree given as a dict; the real Git-backed reader is exercised further down."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read(self, path: str) -> bytes | None:
        return self.files[path].encode() if path in self.files else None

    def is_folder(self, path: str) -> bool:
        return any(name.startswith(path.rstrip("/") + "/") for name in self.files)


REPO = Files(
    {
        "web/app.py": "",
        "api/main.js": "",
        "pkgs/custom/diploi-package.yaml": textwrap.dedent(
            """
            name: custom
            kind: component
            commands: {start: "./run --port {port}"}
            ports: [{name: http, port: 9000, public: true}]
            env: {CUSTOM_URL: "http://{host}:{port}"}
            """
        ),
        "pkgs/broken/diploi-package.yaml": "name: broken\nkind: component\ncommands: {start: 'x {nope}'}\n",
    }
)

GOOD = """
diploiVersion: v1.0
components:
  - name: Web
    identifier: web
    folder: /web
    package: python
  - name: API
    identifier: api
    folder: api/
    package: ./pkgs/custom
addons:
  - name: Database
    identifier: db
    package: postgres
  - name: Cache
    identifier: cache
    package: redis
env:
  include:
    - db.*
    - cache.REDIS_URL:CACHE_URL
    - api.CUSTOM_URL
    - name: GREETING
      value: hi
    - name: FEATURE_ON
      value: true
"""


def test_it_parses_a_good_stack() -> None:
    stack, errors = parse_stack(GOOD, REPO)
    assert errors == []
    assert [c.identifier for c in stack.components] == ["web", "api"]
    assert [a.identifier for a in stack.addons] == ["db", "cache"]
    assert stack.components[0].folder == "web" and stack.components[1].folder == "api"
    assert stack.components[1].package.name == "custom"
    assert stack.addons[0].package.kind == "addon"
    includes = {(e.identifier, e.name, e.alias, e.value) for e in stack.env_include}
    assert ("db", "*", "", None) in includes
    assert ("cache", "REDIS_URL", "CACHE_URL", None) in includes
    assert ("", "FEATURE_ON", "", "true") in includes


def test_it_accepts_the_sample_projects_stack_file() -> None:
    stack, errors = parse_stack((SAMPLE_DIR / "diploi.yaml").read_text(), Files({"web/app.py": ""}))
    assert errors == []
    assert [s.identifier for s in stack.services] == ["web", "redis"]


def replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


MALFORMED = [
    ("diploiVersion: v1.0\ncomponents: [\n", "line", "is not valid YAML"),
    ("- just\n- a list\n", "", "must be a mapping, not a list"),
    ("", "", "must be a mapping, not empty"),
    (replace("diploiVersion: v1.0", "diploiVersion: v9"), "diploiVersion", "“v9” is not supported"),
    (replace("diploiVersion: v1.0\n", ""), "diploiVersion", "is required"),
    (replace("diploiVersion: v1.0", "diploiVersion: v1.0\nservices: []"), "services", "unknown field"),
    ("diploiVersion: v1.0\ncomponents: web\n", "components", "must be a list"),
    ("diploiVersion: v1.0\naddons: []\n", "components", "at least one component is required"),
    (replace("    identifier: web\n", ""), "components[0].identifier", "is required"),
    (replace("identifier: web", "identifier: Web_1"), "components[0].identifier", "may contain only lowercase"),
    (replace("identifier: web", "identifier: " + "a" * 64), "components[0].identifier", "at most 63 characters"),
    (replace("identifier: api", "identifier: web"), "components[1].identifier", "“web” is already used by components[0]"),
    (replace("identifier: cache", "identifier: db"), "addons[1].identifier", "already used by addons[0]"),
    (replace("package: python", "package: rails"), "components[0].package", "unknown package “rails”"),
    (replace("package: python", "package: redis"), "components[0].package", "is an add-on package and cannot be used as a component"),
    (replace("package: postgres", "package: node"), "addons[0].package", "is a component package and cannot be used as an add-on"),
    (
        replace("package: ./pkgs/custom", "package: ./pkgs/missing"),
        "components[1].package",
        "the repository has no pkgs/missing/diploi-package.yaml",
    ),
    (replace("package: ./pkgs/custom", "package: ./pkgs/broken"), "commands.start", "unknown placeholder {nope}"),
    (replace("package: ./pkgs/custom", "package: ./../etc"), "components[1].package", "must name a folder inside the repository"),
    (replace("folder: /web", "folder: ../../etc"), "components[0].folder", "points outside the repository"),
    (replace("folder: /web", "folder: /frontend"), "components[0].folder", "does not exist in the repository"),
    (replace("    package: postgres", "    package: postgres\n    folder: /db"), "addons[0].folder", "unknown field"),
    (replace("    - db.*", "    - shop.*"), "env.include[0]", "“shop” is not the identifier of a component or add-on"),
    (replace("    - db.*", "    - db.NOPE"), "env.include[0]", "“db” does not provide NOPE"),
    (replace("    - db.*", "    - db.DATABASE_URL:1BAD"), "env.include[0]", "alias “1BAD” must be letters"),
    (replace("    - db.*", "    - db.*:ALL"), "env.include[0]", "cannot be renamed"),
    (replace("    - db.*", "    - just-text"), "env.include[0]", "must be “*”"),
    (replace("    - db.*", "    - 42"), "env.include[0]", "must be “*”"),
    (replace("      value: hi\n", ""), "env.include[3].value", "is required"),
    (replace("    - name: GREETING", "    - name: BAD-NAME"), "env.include[3].name", "must be letters, digits and '_'"),
    (replace("env:\n  include:", "env:\n  exclude: []\n  include:"), "env.exclude", "unknown field"),
    ("diploiVersion: v1.0\ncomponents: []\n" + "# padding\n" * 8000, "", "larger than 64 KiB"),
]


@pytest.mark.parametrize("text, field, message", MALFORMED)
def test_it_explains_what_is_wrong(text: str, field: str, message: str) -> None:
    stack, errors = parse_stack(text, REPO)
    assert stack is None
    assert any(e.field.startswith(field) and message in e.message for e in errors), [str(e) for e in errors]


def test_it_names_the_package_file_in_package_errors() -> None:
    _, errors = parse_stack(replace("package: ./pkgs/custom", "package: ./pkgs/broken"), REPO)
    assert [(e.file, e.field) for e in errors] == [
        ("diploi.yaml", "components[1].package"),
        ("pkgs/broken/diploi-package.yaml", "commands.start"),
    ]
    assert "is not a valid package" in errors[0].message


@pytest.mark.parametrize(
    "path, message",
    [
        ("data", "must be an absolute path"),
        ("/", "must be an absolute path"),
        ("/data/../etc", "must not contain . or .. parts"),
        ("/data/\nx", "without control characters"),
    ],
)
def test_it_checks_where_package_storage_is_mounted(path: str, message: str) -> None:
    from projects.package import parse_package

    text = f"name: p\nkind: addon\ncommands:\n  start: run\nstorage:\n  - name: data\n    path: {json.dumps(path)}\n"
    _, errors = parse_package(text, "test package", "p")
    assert any(e.field == "storage[0].path" and message in e.message for e in errors), errors
    package, errors = parse_package(text.replace(json.dumps(path), json.dumps('/srv/it\'s "my" data')), "test package", "p")
    assert not errors and package.storage[0].path == '/srv/it\'s "my" data'


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
    assert "Valid at commit" in page and "redis" in page


def test_it_shows_file_field_and_reason_on_the_project_page(cast, sample_repo: Path) -> None:
    stack_file = sample_repo / "diploi.yaml"
    stack_file.write_text(stack_file.read_text().replace("package: redis", "package: mongo"))
    commit_all(sample_repo, "Use an unknown package")

    r = cast.client(cast.developer).post(f"/projects/{cast.project.slug}/refresh/")
    assert r.status_code == 302
    page = cast.client(cast.developer).get(f"/projects/{cast.project.slug}/").content.decode()
    assert "1 problem" in page
    assert "diploi.yaml · addons[0].package" in page
    assert "unknown package “mongo”" in page


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
