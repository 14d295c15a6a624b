"""Every page a member reads: the same queries with 1 or 100 deployments, no write, no runtime call.

Pages render what the monitor and the workers stored; only the Logs tab and Describe ask the
runtime (their content is its answer), so they are not in this list.
"""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deployments.live.fragments import TOKEN
from deployments.models import Build, Deployment, Domain, EnvVar, Sample, Stage, State
from diploi import shared

GREEN = {"colour": "green", "reason": "Running", "tree": {"containers": [["web", "green", "up"]], "services": [["web", "green", "up"]]}}
PAGES = [
    "/projects/",
    "/projects/shop/",
    "/projects/shop/?page=2",
    "/projects/shop/settings/",
    "/projects/shop/push/",
    "/projects/shop/deployments/new/",
    "/projects/shop/d/prod/",
    "/projects/shop/d/prod/options/",
    "/projects/shop/d/prod/clone/",
    "/projects/shop/d/prod/releases/{release}/",
    "/account/keys/",
]


class Untouchable:
    """A runtime whose every use fails the test, but for what it found of the machine (probed once per
    process: every page's banner says whether deployments are confined)."""

    def __init__(self, found) -> None:
        self.found = found

    def confinement(self):
        return self.found

    def __getattr__(self, name: str):
        raise AssertionError(f"a page called the runtime: {name}")


@pytest.fixture
def untouchable_runtime(monkeypatch, data_dir):
    from deployments.runtimes import get_runtime
    from deployments.runtimes.local import runtime

    found = runtime.LocalRuntime().confinement()
    monkeypatch.setattr(runtime, "LocalRuntime", lambda: Untouchable(found))
    get_runtime.cache_clear()
    yield
    get_runtime.cache_clear()


def add_deployments(cast, count: int) -> None:
    start = Deployment.objects.count()
    for i in range(start, start + count):
        d = Deployment.objects.create(
            project=cast.project, name=f"d{i:03}", slug=f"d{i:03}", branch="main", state=State.RUNNING, status=GREEN, stage=Stage.STAGING
        )
        Sample.objects.create(deployment=d, cpu_percent=i, memory_bytes=1 << 20)
        Build.objects.create(deployment=d, commit="b" * 40, status="succeeded")
        EnvVar.objects.create(deployment=d, key="K", value="v")
        Domain.objects.create(deployment=d, name=f"d{i}.example.com")


@pytest.mark.parametrize("role", ["owner", "viewer"])
def test_pages_read_a_constant_number_of_queries_and_write_nothing(cast, untouchable_runtime, role) -> None:
    prod = Deployment.objects.create(
        project=cast.project, name="Prod", slug="prod", branch="main", stage=Stage.PRODUCTION, state=State.RUNNING, status=GREEN
    )
    builds = [Build.objects.create(deployment=prod, commit=f"{i:040x}", status="succeeded", message=f"change {i}") for i in range(15)]
    Deployment.objects.filter(pk=prod.pk).update(release=builds[-1], commit=builds[-1].commit)
    Sample.objects.bulk_create(Sample(deployment=prod, cpu_percent=i, memory_bytes=1 << 20) for i in range(30))
    client = cast.client(getattr(cast, role))
    pages = [p.format(release=builds[0].pk) for p in PAGES if role == "owner" or not p.endswith(("/push/", "/new/", "/clone/"))]

    def measure(cold: bool = False) -> dict[str, list[str]]:
        found = {}
        for page in pages:
            if cold:
                shared.clear()
            with CaptureQueriesContext(connection) as queries:
                response = client.get(page)
            assert response.status_code == 200, (page, response.status_code)
            found[page] = [q["sql"] for q in queries]
        return found

    def cold_and_warm() -> tuple[dict, dict]:
        """Rendered afresh (no fragment cached), then again (the fragments cached by the first look)."""
        cold = measure(cold=True)
        measure()  # every page's fragments cached
        return cold, measure()

    measure()  # warm the process: content types, the stack file's parse
    one = cold_and_warm()
    add_deployments(cast, 100)
    hundred = cold_and_warm()
    for page in pages:
        for before, after in zip(one, hundred, strict=True):
            assert len(after[page]) == len(before[page]), (page, before[page], after[page])
            writes = [q for q in after[page] if not q.lstrip().upper().startswith(("SELECT", "SAVEPOINT", "RELEASE SAVEPOINT"))]
            assert not writes, (page, writes)
            assert len(after[page]) <= 25, (page, after[page])


def test_the_overview_shows_the_stored_state_and_how_old_it_is(cast, untouchable_runtime) -> None:
    prod = Deployment.objects.create(
        project=cast.project,
        name="Prod",
        slug="prod",
        branch="main",
        stage=Stage.PRODUCTION,
        state=State.RUNNING,
        status={"colour": "red", "reason": "web: exited", "tree": {"containers": [["web", "red", "exited"]]}},
    )
    client = cast.client(cast.viewer)
    page = client.get("/projects/shop/d/prod/").content.decode()
    assert "<strong>Failed</strong> — web: exited" in page and "As observed <time" not in page  # nothing sampled yet
    sample = Sample.objects.create(deployment=prod, cpu_percent=3.5, memory_bytes=1 << 20)
    page = client.get("/projects/shop/d/prod/").content.decode()
    assert f'datetime="{sample.at.isoformat()}"' in page
    assert "3.5%" in page and "is the monitor" in page  # the note the page shows once the sample is old
    assert Sample.objects.filter(deployment=prod).count() == 1  # reading kept no sample of its own


UNHEALTHY = {**GREEN, "tree": {"containers": [["web", "green", "up"]], "services": [["web", "red", "no answer on /"]]}}
WORD_CASES = [  # (word, state, enabled, state reason, stored tree)
    ("Running", State.RUNNING, True, "", GREEN),
    ("Starting", State.RUNNING, True, "", None),  # before the monitor's first look
    ("Starting", State.PROVISIONING, True, "", None),
    ("Updating", State.PROVISIONING, True, "", GREEN),
    ("Building", State.BUILDING, True, "", GREEN),
    ("Unhealthy", State.RUNNING, True, "", UNHEALTHY),
    ("Stopped", State.RUNNING, False, "", GREEN),
    ("Stopped", State.STOPPED, True, "", None),
    ("Failed", State.FAILED, True, "stack file broken", GREEN),
    ("Deleting", State.DELETING, True, "", GREEN),
]


def test_every_surface_says_the_same_word_for_each_state(cast, untouchable_runtime) -> None:
    """The Overview, the project page and the command line (list) say the same word, colour and reason."""
    import html
    import json
    from io import StringIO

    from django.core.management import call_command

    from deployments.status.tree import VOCABULARY

    client = cast.client(cast.viewer)
    for i, (word, state, enabled, reason, status) in enumerate(WORD_CASES):
        slug = f"d{i}"
        Deployment.objects.create(
            project=cast.project,
            name=slug,
            slug=slug,
            branch="main",
            state=state,
            enabled=enabled,
            state_reason=reason,
            status=status or {},
        )
        overview = client.get(f"/projects/shop/d/{slug}/").content.decode()
        said = re.search(
            r'<p class="overall"><span class="dot (\w+)" aria-hidden="true"></span><strong>(\w+)</strong> — ([^<]+)</p>', overview
        )
        listed = client.get("/projects/shop/").content.decode()
        row = re.search(
            rf'>{slug}</a></td>.*?<span class="dot (\w+)" aria-hidden="true"></span><span title="([^"]+)">(\w+)</span>', listed, re.S
        )
        out = StringIO()
        call_command("deployments", "--user", "viewer", "list", "--json", stdout=out)
        cli = next(r for r in json.loads(out.getvalue()) if r["slug"] == slug)
        colour = {"pending": "grey"}.get(VOCABULARY[word][0].value, VOCABULARY[word][0].value)
        assert (said[2], said[1]) == (word, colour), (word, state)
        assert (row[3], row[1], row[2]) == (word, colour, said[3])
        assert (cli["status"], cli["colour"], cli["reason"]) == (word, VOCABULARY[word][0].value, html.unescape(said[3]))
    assert {case[0] for case in WORD_CASES} == set(VOCABULARY)  # every word of the table is shown somewhere


def test_ages_in_a_shared_fragment_are_kept_current_by_the_page(cast, untouchable_runtime) -> None:
    """A release's age is part of the live fragment, which is shared for minutes: it is rendered as a
    `<time>` the page updates, so a fragment from the cache never shows the age it had when rendered."""
    prod = Deployment.objects.create(
        project=cast.project, name="Prod", slug="prod", branch="main", stage=Stage.PRODUCTION, state=State.RUNNING
    )
    build = Build.objects.create(deployment=prod, commit="a" * 40, status="succeeded")
    Build.objects.filter(pk=build.pk).update(created=timezone.now() - timedelta(hours=3))
    page = cast.client(cast.viewer).get("/projects/shop/d/prod/").content.decode()
    created = Build.objects.get(pk=build.pk).created
    assert f'<time datetime="{created.isoformat()}" data-ago title="{created:%Y-%m-%d %H:%M}' in page
    assert "3\xa0hours ago</time>" in page  # the words are right for a browser without JavaScript too


def test_pages_and_sign_in_work_with_the_shared_cache_away(cast, settings, monkeypatch) -> None:
    """Redis gone: the fragments render without the cache (not looked up again for a while), and
    signing in (whose rate limits use the default, per-process cache) still works."""
    from diploi import settings as configured
    from tests.conftest import free_port

    assert configured.CACHES["default"]["BACKEND"].endswith("LocMemCache")  # never Redis: it must answer with Redis away

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {**settings.CACHES, "shared": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": dead}}
    monkeypatch.setattr(shared, "_away_until", 0.0)
    Deployment.objects.create(project=cast.project, name="Prod", slug="prod", branch="main", state=State.RUNNING, status=GREEN)
    client = cast.client(None)
    response = client.post("/accounts/login/", {"login": "viewer", "password": "pw-viewer"})
    assert response.status_code == 302 and response["Location"] == "/projects/"
    assert "<strong>Running</strong>" in client.get("/projects/shop/d/prod/").content.decode()
    assert shared._away_until > 0  # it noticed, and leaves the cache alone for a while
    assert client.get("/projects/shop/").status_code == 200


def without_tokens(response) -> str:
    """A page as every view of it shows it: the viewer's CSRF token (masked anew each time) left out."""
    assert response.status_code == 200
    return re.sub(r'"X-CSRFToken": "\w+"|name="csrfmiddlewaretoken" value="\w+"', "token", response.content.decode())


def each_change_shows(page, changes) -> str:
    """Make each (what, change, shown) in turn: the cached page shows it at once, then is cached again."""
    before = page()
    for what, change, shown in changes:
        assert shown not in before, what
        change()
        after = page()
        assert shown in after, what
        assert page() == after
        before = after
    return before


def test_a_cached_overview_changes_with_every_fact_it_shows(cast, untouchable_runtime) -> None:
    """The Overview is served from the shared cache under the facts it shows (one statement): each
    kind of change below must reach the page at once, whoever made it and however it was written."""
    from accounts.models import SSHKey
    from deployments.models import SSHSession, StateTransition
    from projects.models import Membership, Project, Role

    staging = Deployment.objects.create(
        project=cast.project,
        name="Stage",
        slug="stage",
        branch="main",
        stage=Stage.STAGING,
        state=State.RUNNING,
        commit=cast.project.stack_commit,
    )
    build = Build.objects.create(deployment=staging, commit="b" * 40, status="running", progress=10)
    client = cast.client(cast.viewer)

    def page() -> str:
        return without_tokens(client.get("/projects/shop/d/stage/"))

    other = Project.objects.create(name="Other", slug="other", repository=cast.project.repository, default_branch="main")
    changes = [
        (
            "the user's role",
            lambda: Membership.objects.filter(project=cast.project, user=cast.viewer).update(role=Role.DEVELOPER),
            "Deploy latest",
        ),
        ("a new sample", lambda: Sample.objects.create(deployment=staging, cpu_percent=42.5, memory_bytes=1 << 20), "42.5%"),
        ("the row", lambda: Deployment.objects.filter(pk=staging.pk).update(state_reason="cooling down"), "cooling down"),
        ("build progress", lambda: Build.objects.filter(pk=build.pk).update(progress=64), "running · 64%"),
        ("a release's status", lambda: Build.objects.filter(pk=build.pk).update(status="succeeded", progress=100), "Roll back"),
        (
            "a production deployment",
            lambda: Deployment.objects.create(project=cast.project, name="Live", slug="live", stage=Stage.PRODUCTION),
            "Promote to Live",
        ),
        ("a domain", lambda: Domain.objects.create(deployment=staging, name="shop.example.com"), "shop.example.com"),
        (
            "a transition",
            lambda: StateTransition.objects.create(
                deployment=staging, from_state="running", to_state="stopped", actor="cli", reason="maintenance window"
            ),
            "maintenance window",
        ),
        (
            "an SSH key of the user",
            lambda: SSHKey.objects.create(
                user=cast.viewer, title="laptop", key_type="ssh-ed25519", public_key="AAAA", fingerprint="SHA256:x"
            ),
            "ssh -p",
        ),
        (
            "an SSH session",
            lambda: SSHSession.objects.create(
                deployment=staging,
                user=cast.developer,
                key_fingerprint="SHA256:y",
                component="web",
                kind="exec",
                command="make migrate",
                source="10.0.0.9:5000",
            ),
            "make migrate",
        ),
        ("how a session ended", lambda: SSHSession.objects.filter(deployment=staging).update(ended=timezone.now(), exit_status=3), ">3<"),
        (
            "the connections",
            lambda: Deployment.objects.filter(pk=staging.pk).update(
                connections='[{"name": "Dashboard URL", "service": "web", "value": "v", "masked": "v"}]'
            ),
            "Dashboard URL",
        ),
        ("the project", lambda: Project.objects.filter(pk=cast.project.pk).update(name="Shop Renamed"), "Shop Renamed"),
        (
            "another deployment of the same name",
            lambda: (
                Deployment.objects.create(project=other, name="Stage", slug="stage"),
                Membership.objects.create(project=other, user=cast.viewer, role=Role.VIEWER),
            ),
            "stage.shop@",
        ),
    ]
    each_change_shows(page, changes)


def test_a_cached_project_page_changes_with_every_fact_it_shows(cast, untouchable_runtime) -> None:
    from accounts.models import User
    from projects.models import Membership, Project, Role

    first = Deployment.objects.create(project=cast.project, name="Alpha", slug="alpha", branch="main", state=State.RUNNING, status=GREEN)
    client = cast.client(cast.viewer)

    def page(number: str = "") -> str:
        return without_tokens(client.get(f"/projects/shop/{'?page=' + number if number else ''}"))

    changes = [
        (
            "the user's role",
            lambda: Membership.objects.filter(project=cast.project, user=cast.viewer).update(role=Role.DEVELOPER),
            "Check again",
        ),
        ("a sample", lambda: Sample.objects.create(deployment=first, cpu_percent=37.5, memory_bytes=1), "37.5%"),
        ("a build", lambda: Build.objects.create(deployment=first, commit="c" * 40, status="failed"), ">failed<"),
        ("a row", lambda: Deployment.objects.filter(pk=first.pk).update(branch="feature/cache"), "feature/cache"),
        (
            "the stored tree",
            lambda: Deployment.objects.filter(pk=first.pk).update(status={**GREEN, "tree": {"containers": [["web", "red", "exited"]]}}),
            '"dot red"',
        ),
        (
            "an endpoint",
            lambda: Deployment.objects.filter(pk=first.pk).update(endpoints={"web": "http://alpha.example"}),
            "http://alpha.example",
        ),
        ("a new deployment", lambda: Deployment.objects.create(project=cast.project, name="Beta", slug="beta", branch="main"), "Beta"),
        (
            "a member",
            lambda: Membership.objects.create(project=cast.project, user=User.objects.create_user("newcomer"), role=Role.VIEWER),
            "newcomer",
        ),
        ("the project", lambda: Project.objects.filter(pk=cast.project.pk).update(default_branch="trunk"), "trunk"),
    ]
    before = each_change_shows(page, changes)
    # numbered as the paginator does: out of range or not a number, the last or the first page
    assert page("7") == page("-1") == page("0") == page("abc") == page("1") == before


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the pool is PostgreSQL's (the PostgreSQL pass runs it)")
def test_a_web_process_serves_many_requests_at_once_from_a_small_pool(cast, data_dir, settings) -> None:
    """A web process as `up` starts it, with a pool of 2 connections: 24 page views at once all
    answer (each borrows a connection and gives it back), and it opens no more than the pool holds."""
    import os
    import subprocess
    import sys
    import urllib.parse
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import BASE_DIR, free_port, http_get, wait_until

    Deployment.objects.create(project=cast.project, name="Prod", slug="prod", branch="main", stage=Stage.PRODUCTION, state=State.RUNNING)
    cookie = f"sessionid={cast.client(cast.developer).cookies['sessionid'].value}"
    database = urllib.parse.urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + connection.settings_dict["NAME"]).geturl()

    def sessions_opened() -> int:
        """Connections ever opened to the test database (PostgreSQL counts them as its backends start)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return cursor.fetchone()[0]

    before = sessions_opened()
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database, DIPLOI_DB_POOL="2", DIPLOI_DATA_DIR=str(data_dir), DIPLOI_SECRET_KEY=settings.SECRET_KEY)
    web = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "diploi.asgi:application"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz"), what="the web process")

        def view(i: int) -> int:
            path = "/projects/shop/d/prod/" if i % 2 else "/projects/shop/"
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Cookie": cookie})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert "Sign in" not in response.read().decode()
                return response.status

        with ThreadPoolExecutor(24) as pool:
            assert list(pool.map(view, range(96))) == [200] * 96
    finally:
        web.terminate()
        web.wait(timeout=15)
    # the pool's connections (at least its first one, once the statistics have it), none per request
    opened = wait_until(lambda: sessions_opened() - before or None, timeout=10, what="the statistics")
    assert opened <= 2, opened


def test_the_page_around_a_cached_page_is_each_viewers_own(cast, untouchable_runtime, settings, monkeypatch) -> None:
    """The whole page is cached too; what is not the content still shows at once: the viewer's name, a
    message waiting for them (once), and the banners."""
    import time

    from django.contrib.messages import INFO
    from django.contrib.messages.storage.base import Message
    from django.contrib.messages.storage.cookie import CookieStorage
    from django.http import HttpRequest

    from deployments.web import health

    Deployment.objects.create(project=cast.project, name="Prod", slug="prod", branch="main", state=State.RUNNING, status=GREEN)
    page = "/projects/shop/d/prod/"
    owner, developer = cast.client(cast.owner), cast.client(cast.developer)
    assert ">owner</a>" in without_tokens(owner.get(page)) and ">developer</a>" in without_tokens(developer.get(page))
    assert ">developer</a>" in without_tokens(developer.get(page))  # from the cache, with its own name

    owner.cookies["messages"] = CookieStorage(HttpRequest())._encode([Message(INFO, "Something to say once")])
    assert "Something to say once" in without_tokens(owner.get(page))
    assert "Something to say once" not in without_tokens(owner.get(page))

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    monkeypatch.setattr(health, "_queue", {"at": time.monotonic(), "down": True})
    assert health.QUEUE_DOWN in without_tokens(owner.get(page))
    monkeypatch.setattr(health, "_queue", {"at": time.monotonic(), "down": False})
    assert health.QUEUE_DOWN not in without_tokens(owner.get(page))

    response = owner.get(page).content.decode()
    assert TOKEN not in response and re.search(r'"X-CSRFToken": "\w{64}"', response)  # the viewer's own token
