"""Deployment pages: who may see and change what, forms, and bounded queries."""

import html
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from deployments.models import Build, Deployment, EnvVar, Sample, State
from deployments.provisioning.spec import build_spec, load_stack


@pytest.fixture
def dev(cast) -> Deployment:
    return Deployment.objects.create(
        project=cast.project,
        name="Dev",
        slug="dev",
        branch="main",
        state=State.RUNNING,
        commit=cast.project.stack_commit,
        endpoints={"web": "http://localhost:40001"},
    )


def urls(d: Deployment) -> dict[str, tuple[str, dict | None, str]]:
    base = f"/projects/{d.project.slug}/d/{d.slug}"
    return {
        "overview": (f"{base}/", None, "viewer"),
        "options": (f"{base}/options/", None, "viewer"),
        "logs": (f"{base}/logs/", None, "viewer"),
        "download": (f"{base}/logs/web.log", None, "viewer"),
        "new": (f"/projects/{d.project.slug}/deployments/new/", None, "developer"),
        "create": (f"/projects/{d.project.slug}/deployments/new/", {"name": "x", "stage": "development", "branch": "main"}, "developer"),
        "enable": (f"{base}/enabled/", {}, "developer"),
        "branch": (f"{base}/branch/", {"branch": "main"}, "developer"),
        "env": (f"{base}/env/", {"key": "A", "value": "1"}, "developer"),
        "restart": (f"{base}/restart/web/", {}, "developer"),
        "delete": (f"{base}/delete/", {"confirm": "Dev"}, "owner"),
        "clone form": (f"{base}/clone/", None, "developer"),
        "clone": (f"{base}/clone/", {"name": "copy", "stage": "development", "branch": "main"}, "developer"),
        "parameters": (f"{base}/parameters/web/", {"LOG_LEVEL": "debug"}, "developer"),
    }


RANK = {"viewer": 0, "developer": 1, "owner": 2}
NAMES = [
    "overview",
    "options",
    "logs",
    "download",
    "new",
    "create",
    "enable",
    "branch",
    "env",
    "restart",
    "delete",
    "clone form",
    "clone",
    "parameters",
]


def snapshot(d: Deployment) -> tuple:
    row = Deployment.objects.filter(pk=d.pk).values_list("enabled", "branch", "state").first()
    return row, list(EnvVar.objects.values_list("key", flat=True)), Deployment.objects.count()


@pytest.mark.parametrize("name", NAMES)
def test_outsiders_get_404_and_change_nothing(cast, dev, runtime, name) -> None:
    url, data, _ = urls(dev)[name]
    before = snapshot(dev)
    client = cast.client(cast.outsider)
    assert (client.get(url) if data is None else client.post(url, data)).status_code == 404
    assert snapshot(dev) == before


WRITES = {
    "new": "developer",
    "create": "developer",
    "enable": "developer",
    "branch": "developer",
    "env": "developer",
    "restart": "developer",
    "delete": "owner",
    "clone form": "developer",
    "clone": "developer",
    "parameters": "developer",
}


@pytest.mark.parametrize("role, name", [(r, n) for n, need in WRITES.items() for r in ("viewer", "developer") if RANK[r] < RANK[need]])
def test_weaker_roles_get_403_and_change_nothing(cast, dev, runtime, role, name) -> None:
    url, data, _ = urls(dev)[name]
    before = snapshot(dev)
    client = cast.client(getattr(cast, role))
    assert (client.get(url) if data is None else client.post(url, data)).status_code == 403
    assert snapshot(dev) == before


@pytest.mark.parametrize("name", ["overview", "options", "logs"])
def test_every_member_sees_the_pages(cast, dev, runtime, name) -> None:
    url, _, _ = urls(dev)[name]
    for user in (cast.viewer, cast.developer, cast.owner):
        assert cast.client(user).get(url).status_code == 200


def test_the_overview_shows_status_hosts_and_the_ssh_command(cast, dev, runtime) -> None:
    page = cast.client(cast.developer).get("/projects/shop/d/dev/").content.decode()
    assert f'id="deployment-{dev.pk}-status"' in page and f'id="deployment-{dev.pk}-tree"' in page
    for branch in ("Storage", "Builds", "Containers", "Services"):
        assert f"<h3>{branch}</h3>" in page
    assert "http://localhost:40001" in page
    assert "Add an SSH key to connect" in page  # no key yet: a link instead of the command
    from accounts.models import SSHKey

    SSHKey.objects.create(user=cast.developer, title="k", key_type="ssh-ed25519", public_key="ssh-ed25519 AAAA", fingerprint="SHA256:x")
    page = cast.client(cast.developer).get("/projects/shop/d/dev/").content.decode()
    assert "ssh -p 2222 dev@localhost" in page
    assert 'aria-label="Copy the SSH command for web"' in page


def test_env_vars_are_validated_masked_and_applied(cast, dev, runtime, django_capture_on_commit_callbacks) -> None:
    client = cast.client(cast.developer)
    url = "/projects/shop/d/dev/env/"
    for key, message in [("1BAD", "must be letters, digits and '_'"), ("DIPLOI_X", "set by Diploi"), ("A B", "must be letters")]:
        r = client.post(url, {"key": key, "value": "v"}, headers={"HX-Request": "true"})
        body = html.unescape(r.content.decode())
        assert message in body and 'id="options-env"' in body and "<html" not in body
    assert not EnvVar.objects.exists()

    with django_capture_on_commit_callbacks() as callbacks:
        r = client.post(url, {"key": "API_TOKEN", "value": "t0p-s3cret", "secret": "on", "service": "web"})
    assert r.status_code == 302 and len(callbacks) == 1  # the provision task is queued on commit
    var = EnvVar.objects.get()
    assert (var.service, var.key, var.value, var.secret) == ("web", "API_TOKEN", "t0p-s3cret", True)
    page = client.get("/projects/shop/d/dev/options/").content.decode()
    assert "API_TOKEN" in page and "t0p-s3cret" not in page and "(secret)" in page

    r = client.post(url, {"key": "X", "value": "1", "service": "nope"})
    assert "Select a valid choice" in r.content.decode()


def test_delete_asks_for_the_name_then_goes_to_deleting(cast, dev, runtime, django_capture_on_commit_callbacks) -> None:
    client = cast.client(cast.owner)
    page = client.get("/projects/shop/d/dev/options/").content.decode()
    assert "permanently deletes its storage" in page
    r = client.post("/projects/shop/d/dev/delete/", {"confirm": "dev"})
    assert "Type “Dev” exactly" in r.content.decode()
    assert Deployment.objects.get(pk=dev.pk).state == State.RUNNING
    with django_capture_on_commit_callbacks() as callbacks:
        r = client.post("/projects/shop/d/dev/delete/", {"confirm": "Dev"})
    assert r.status_code == 302 and r["Location"] == "/projects/shop/"
    assert Deployment.objects.get(pk=dev.pk).state == State.DELETING
    assert sum("tasks.destroy" in repr(c) for c in callbacks) == 1  # queued on commit (beside the live-update event)
    assert ">Deleting<" in client.get("/projects/shop/").content.decode()


def test_the_new_deployment_form_explains_problems(cast, runtime) -> None:
    client = cast.client(cast.developer)
    page = client.get("/projects/shop/deployments/new/").content.decode()
    assert '<option value="main" selected>main</option>' in page  # branches come from the repository
    r = client.post(
        "/projects/shop/deployments/new/", {"name": "!!", "stage": "development", "branch": "main"}, headers={"HX-Request": "true"}
    )
    assert "must contain at least one letter or digit" in r.content.decode()
    r = client.post("/projects/shop/deployments/new/", {"name": "x", "stage": "development", "branch": "bad..name"})
    assert "not a valid branch name" in html.unescape(r.content.decode())
    assert not Deployment.objects.exists()
    r = client.post("/projects/shop/deployments/new/", {"name": "Feature", "stage": "staging", "branch": "main", "enabled": "on"})
    d = Deployment.objects.get()
    assert r.status_code == 302 and r["Location"] == "/projects/shop/d/feature/"
    assert (d.stage, d.created_by) == ("staging", cast.developer)


@pytest.mark.parametrize("count", [1, 50])
def test_the_project_page_has_bounded_queries(cast, runtime, count) -> None:
    for i in range(count):
        green = {"colour": "green", "reason": "", "tree": {"containers": [["web", "green", "up"]]}}
        d = Deployment.objects.create(project=cast.project, name=f"d{i}", slug=f"d{i}", branch="main", state=State.RUNNING, status=green)
        Sample.objects.create(deployment=d, cpu_percent=i, memory_bytes=1)
        Build.objects.create(deployment=d, commit="a" * 40, status="succeeded")
    client = cast.client(cast.viewer)
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/projects/shop/").content.decode()
    assert (
        page.count('<span class="dot green" aria-hidden="true"></span><span title="Every process runs and answers">Running</span>') == count
    )
    assert f"{count - 1}.0%" in page and "succeeded" in page
    assert len(queries) <= 8, [q["sql"] for q in queries]


def test_a_long_project_list_is_paged_and_its_socket_follows_the_page(cast, runtime) -> None:
    Deployment.objects.bulk_create(Deployment(project=cast.project, name=f"d{i:03}", slug=f"d{i:03}", branch="main") for i in range(120))
    client = cast.client(cast.viewer)
    first = client.get("/projects/shop/").content.decode()
    assert (
        first.count('<td><a href="/projects/shop/d/') == 50 and first.count("1–50 of 120") == 1 and "d049" in first and "d050" not in first
    )
    last = client.get("/projects/shop/?page=3").content.decode()
    assert (
        last.count('<td><a href="/projects/shop/d/') == 20 and "101–120 of 120" in last and 'ws-connect="/ws/projects/shop/?page=3"' in last
    )
    assert "1–50 of 120" in client.get("/projects/shop/?page=nonsense").content.decode()

    from deployments.live.fragments import project_snapshot

    fragment = project_snapshot(cast.project.pk, "3").html[False]
    assert "d119" in fragment and "d000" not in fragment


def test_parameters_are_typed_locked_and_secrets_stay_hidden(cast, dev, runtime) -> None:
    client = cast.client(cast.developer)
    page = client.get("/projects/shop/d/dev/options/").content.decode()
    assert 'name="PYTHON_VERSION"' in page and "disabled" in page.split('name="PYTHON_VERSION"')[1].split(">")[0]
    assert 'type="number" name="WEB_CONCURRENCY"' in page and 'type="password" name="SECRET_KEY"' in page
    assert "<legend>Application</legend>" in page and "<legend>Connection</legend>" in page  # the packages' parameterGroups
    assert "Generated for this deployment" in page

    r = client.post("/projects/shop/d/dev/parameters/web/", {"WEB_CONCURRENCY": "many", "LOG_LEVEL": "debug"})
    assert "Enter a whole number." in r.content.decode() and not EnvVar.objects.exists()

    data = {"WEB_CONCURRENCY": "4", "LOG_LEVEL": "debug", "DEBUG": "on", "SECRET_KEY": "hunter2", "PYTHON_VERSION": "2"}
    assert client.post("/projects/shop/d/dev/parameters/web/", data).status_code == 302
    stored = {v.key: (v.value, v.secret, v.service) for v in EnvVar.objects.all()}
    assert stored == {
        "WEB_CONCURRENCY": ("4", False, "web"),
        "LOG_LEVEL": ("debug", False, "web"),
        "DEBUG": ("true", False, "web"),
        "SECRET_KEY": ("hunter2", True, "web"),
    }
    page = client.get("/projects/shop/d/dev/options/").content.decode()
    assert "hunter2" not in page and 'value="4"' in page
    d = Deployment.objects.get(slug="dev")
    assert build_spec(d, load_stack(d, d.commit), d.commit).services[0].exports["SECRET_KEY"] == "hunter2"  # the saved value wins

    data["SECRET_KEY"] = ""  # an empty secret keeps the stored one
    client.post("/projects/shop/d/dev/parameters/web/", data)
    assert EnvVar.objects.get(key="SECRET_KEY").value == "hunter2"
    assert client.post("/projects/shop/d/dev/parameters/nope/", data).status_code == 404

    # A generated secret is generated again on purpose (the saved value goes too); read-only ones cannot be.
    assert 'name="SECRET_KEY__regenerate"' in page and "REDIS_PASSWORD__regenerate" not in page

    def secret_key() -> str:
        d.refresh_from_db()
        return build_spec(d, load_stack(d, d.commit), d.commit).services[0].exports["SECRET_KEY"]

    client.post("/projects/shop/d/dev/parameters/web/", {**data, "SECRET_KEY__regenerate": "on"})
    generated = secret_key()
    assert not EnvVar.objects.filter(key="SECRET_KEY").exists() and len(generated) == 50 and generated != "hunter2"
    assert secret_key() == generated == json.loads(d.credentials)["web/SECRET_KEY"]  # kept
    client.post("/projects/shop/d/dev/parameters/web/", {**data, "SECRET_KEY": "", "SECRET_KEY__regenerate": "on"})
    assert secret_key() not in (generated, "hunter2")


@pytest.mark.parametrize(
    "raw, message",
    [
        ("*.example.com", "Wildcard domains are not supported"),
        ("https://example.com/x", "only the host name"),
        ("example", "is not a valid domain name"),
        ("-bad-.example.com", "is not a valid domain name"),
        ("10.0.0.1", "not an IP address"),
        ("shop.localhost", "are Diploi's own"),
        ("", "Enter a domain name."),
    ],
)
def test_bad_domains_are_refused(cast, dev, runtime, raw, message) -> None:
    r = cast.client(cast.developer).post("/projects/shop/d/dev/domains/", {"name": raw}, headers={"HX-Request": "true"})
    body = html.unescape(r.content.decode())
    assert message in body and 'id="options-domains"' in body
    assert f'value="{raw}"' in body  # what was typed stays
    from deployments.models import Domain

    assert not Domain.objects.exists()


def test_domains_are_idna_unique_and_verified_by_dns(cast, dev, runtime, dns_server, django_capture_on_commit_callbacks) -> None:
    from deployments.domains import challenge_value
    from deployments.models import Domain
    from deployments.provisioning.spec import current_spec

    client = cast.client(cast.developer)
    client.post("/projects/shop/d/dev/domains/", {"name": "Bücher.Example.com."})
    domain = Domain.objects.get()
    assert domain.name == "xn--bcher-kva.example.com" and domain.display_name == "bücher.example.com"
    page = html.unescape(client.get("/projects/shop/d/dev/options/").content.decode())
    token = challenge_value(dev)
    assert "xn--bcher-kva.example.com. CNAME dev--shop.localhost." in page
    assert f'_diploi-challenge.xn--bcher-kva.example.com. TXT "{token}"' in page

    other = Deployment.objects.create(project=cast.project, name="Other", slug="other", branch="main")
    r = client.post(f"/projects/shop/d/{other.slug}/domains/", {"name": "bücher.example.com"})
    assert "is already in use by a deployment." in r.content.decode()  # not which project holds it
    assert current_spec(dev).hosts == ()  # not routed before DNS shows it is theirs

    def verify() -> tuple[Domain, int]:
        with django_capture_on_commit_callbacks() as queued:
            client.post(f"/projects/shop/d/dev/domains/{domain.pk}/verify/")
        domain.refresh_from_db()
        return domain, len(queued)

    dns_server[(domain.name, "CNAME")] = ["elsewhere.example.net."]
    dns_server[(f"_diploi-challenge.{domain.name}", "TXT")] = ['"diploi-verify=someone-elses-token"']
    checked, queued = verify()
    assert not checked.verified and queued == 0
    assert checked.check_result.startswith("CNAME points to elsewhere.example.net, not dev--shop.localhost, and no TXT record")
    dns_server[(f"_diploi-challenge.{domain.name}", "TXT")] = [f'"{token}"']  # e.g. an apex, which cannot be a CNAME
    checked, queued = verify()
    assert checked.verified and checked.check_result == f"TXT record _diploi-challenge.{domain.name} holds this deployment's token"
    assert queued == 1 and current_spec(dev).hosts == (domain.name,)  # routed now
    del dns_server[(f"_diploi-challenge.{domain.name}", "TXT")]
    dns_server[(domain.name, "CNAME")] = ["dev--shop.localhost."]
    checked, queued = verify()
    assert checked.verified and checked.check_result == "CNAME points to dev--shop.localhost" and queued == 0

    assert cast.client(cast.viewer).post(f"/projects/shop/d/dev/domains/{domain.pk}/remove/").status_code == 403
    client.post(f"/projects/shop/d/dev/domains/{domain.pk}/remove/")
    assert not Domain.objects.exists()


def test_a_real_dns_failure_is_reported_not_raised(cast, dev, runtime) -> None:
    from deployments.actions import do_verify_domain
    from deployments.models import Domain

    domain = do_verify_domain(Domain.objects.create(deployment=dev, name="diploi-test.invalid"), actor=cast.developer)
    assert not domain.verified and domain.check_result  # NXDOMAIN or no resolver here: either way a message


@pytest.mark.parametrize("page", ["", "options/", "logs/"])
def test_deployment_pages_have_the_same_queries_with_1_or_50_deployments(cast, dev, runtime, page) -> None:
    client = cast.client(cast.developer)
    url = f"/projects/shop/d/dev/{page}"
    client.get(url)  # warm caches (sessions, content types)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return len(queries)

    one = count()
    for i in range(49):
        d = Deployment.objects.create(project=cast.project, name=f"x{i}", slug=f"x{i}", branch="main")
        EnvVar.objects.create(deployment=d, key="K", value="v")
    assert count() == one
    assert one <= 25


def test_logs_show_follow_and_download(cast, runtime) -> None:
    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks
    from tests.conftest import http_get, wait_until

    d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    tasks.provision(d.pk)
    d.refresh_from_db()
    wait_until(lambda: http_get(d.endpoints["web"]), what="the page")
    client = cast.client(cast.viewer)
    page = wait_until(
        lambda: (p := client.get("/projects/shop/d/dev/logs/?service=web").content.decode()) and "Listening on port" in p and p,
        what="log lines",
    )
    assert "ws-connect" not in page
    assert ">Web · Application log</option>" in page and ">Redis · Server log</option>" in page  # the packages' logs by name
    followed = client.get("/projects/shop/d/dev/logs/?service=web&follow=1").content.decode()
    assert f'ws-connect="/ws/deployments/{d.pk}/logs/web/"' in followed and "Listening on port" in followed
    r = client.get("/projects/shop/d/dev/logs/web.log")
    body = b"".join(r.streaming_content).decode()
    assert r["Content-Disposition"] == 'attachment; filename="shop-dev-web.log"' and "Listening on port" in body
    assert client.get("/projects/shop/d/dev/logs/nope.log").status_code == 404


def test_pages_show_the_deployments_own_stack_not_the_default_branchs(cast, runtime, sample_repo) -> None:
    """A deployment following another branch is shown that branch's components and parameters, as
    the SSH gateway resolves them."""
    from accounts.models import SSHKey
    from projects.git import run_git
    from projects.sample import commit_all

    run_git("checkout", "--quiet", "-b", "two-services", cwd=sample_repo)
    stack = sample_repo / "diploi.yaml"
    stack.write_text(
        stack.read_text().replace("addons:\n", "  - name: API\n    identifier: api\n    folder: /web\n    package: python\naddons:\n")
    )
    commit = commit_all(sample_repo, "An API next to the web component")
    run_git("checkout", "--quiet", "main", cwd=sample_repo)
    from deployments.provisioning.spec import fetch_branch

    d = Deployment.objects.create(project=cast.project, name="Feature", slug="feature", branch="two-services", state=State.RUNNING)
    assert fetch_branch(d) == commit
    Deployment.objects.filter(pk=d.pk).update(commit=commit)
    main = Deployment.objects.create(
        project=cast.project, name="Dev", slug="dev", branch="main", state=State.RUNNING, commit=cast.project.stack_commit
    )
    SSHKey.objects.create(user=cast.developer, title="k", key_type="ssh-ed25519", public_key="ssh-ed25519 AAAA", fingerprint="SHA256:x")
    client = cast.client(cast.developer)

    assert [c["identifier"] for c in cast.project.stack["components"]] == ["web"]  # the default branch has one
    page = client.get("/projects/shop/d/feature/").content.decode()
    assert "ssh -p 2222 feature@localhost" in page and "ssh -p 2222 api-feature@localhost" in page
    options = client.get("/projects/shop/d/feature/options/").content.decode()
    assert '<option value="api">api</option>' in options and "/projects/shop/d/feature/parameters/api/" in options
    assert client.post("/projects/shop/d/feature/parameters/api/", {"LOG_LEVEL": "debug"}).status_code == 302
    assert EnvVar.objects.get(deployment=d, service="api", key="LOG_LEVEL").value == "debug"

    assert "api-dev@" not in client.get("/projects/shop/d/dev/").content.decode()
    assert client.post("/projects/shop/d/dev/parameters/api/", {"LOG_LEVEL": "debug"}).status_code == 404
    assert main.env_vars.count() == 0


def test_viewers_are_not_asked_for_an_ssh_key_they_could_not_use(cast, dev) -> None:
    overview = f"/projects/{cast.project.slug}/d/{dev.slug}/"
    seen = cast.client(cast.viewer).get(overview).content.decode()
    assert "Add an SSH key to connect" not in seen and "Viewers cannot connect" in seen
    assert "Add an SSH key to connect" in cast.client(cast.developer).get(overview).content.decode()


def test_the_favicon_browsers_ask_for_is_the_pages_icon(client) -> None:
    r = client.get("/favicon.ico")
    assert r.status_code == 301 and r["Location"].endswith("/img/favicon.svg")
