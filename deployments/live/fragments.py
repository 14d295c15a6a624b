"""What the dashboard's pages and websockets render: context builders, and the fragments shared by
every viewer of the same state (the same partial templates as the page, once per role, with the
project's member list beside them in a `Snapshot`)."""

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.paginator import Page
from django.db.models.functions import Length
from django.template.loader import render_to_string

from accounts.models import User
from deployments.access import deployment_facts_for_user, get_deployment_for_user, project_facts_for_user
from deployments.models import Deployment, Stage, State, Usage
from deployments.provisioning.connections import stored_connections
from deployments.provisioning.spec import deployment_stack
from deployments.queries import PAGE_SIZE, RELEASES_SHOWN, SESSIONS_SHOWN, deployments_page, deployments_shown
from deployments.runtimes import get_runtime
from deployments.runtimes.local.router import trusted_root
from deployments.ssh.hostkey import host_key_fingerprint
from deployments.ssh.naming import ssh_username
from deployments.status import store
from deployments.status.tree import headline
from deployments.status.usage import DEFAULT_WINDOW, RAW, WINDOWS
from diploi import shared
from projects.access import get_project_for_user
from projects.models import WRITE_ROLES, Membership, Project, Role

LOG_LINES = 200
STALE_AFTER = 60  # seconds: an observation older than this says the monitor may not be running


def latest_point(d: Deployment, at: datetime | None) -> str:
    """The resource graphs' newest point (the monitor's raw points at `at`, per container), as the JSON the
    page's graphs append when the live part changes; "" when there is none."""
    if at is None:
        return ""
    rows = Usage.objects.filter(deployment=d, step=RAW, at=at).values_list("container", "cpu_percent", "memory_bytes")
    cpu, memory = {}, {}
    for container, c, m in rows:
        cpu[container], memory[container] = round(c, 1), m
    return json.dumps({"t": int(at.timestamp()), "step": RAW, "cpu": cpu, "memory": memory}, sort_keys=True) if cpu else ""


def components(d: Deployment) -> list[str]:
    """The component identifiers of the deployment's own stack."""
    stack = deployment_stack(d)
    return [s.identifier for s in stack.components] if stack else []


def parameters(d: Deployment) -> dict[str, list[dict]]:
    """Each service's package parameters, from the deployment's own stack."""
    stack = deployment_stack(d)
    return {s.identifier: [asdict(p) for p in s.package.parameters] for s in (stack.services if stack else []) if s.package.parameters}


@dataclass(frozen=True)
class LogStream:
    """One choice of the Logs tab: a service's output, or a package's `exec` log (a command whose
    output is the log, run for a few seconds)."""

    value: str  # "web", or "web~1" for the package's logs[1]
    label: str
    service: str
    command: tuple[str, ...] = ()


def log_streams(d: Deployment) -> list[LogStream]:
    """The packages' `logs` entries by name; a service that declares none has its output."""
    stack = deployment_stack(d)
    streams = []
    for s in stack.services if stack else []:
        declared = s.package.logs or ()
        output = next((lg.name for lg in declared if lg.type == "log"), "Output")
        streams.append(LogStream(s.identifier, f"{s.name} · {output}", s.identifier))
        streams += [
            LogStream(f"{s.identifier}~{i}", f"{s.name} · {lg.name}", s.identifier, lg.command)
            for i, lg in enumerate(declared)
            if lg.type == "exec"
        ]
    return streams


def ssh_commands(d: Deployment, user: User, names: list[str]) -> list[tuple[str, str]]:
    """The exact command per component (`names`, the deployment's); qualified with the project when
    the user reaches another deployment of the same name."""
    qualify = Deployment.objects.filter(slug=d.slug, project__memberships__user=user).exclude(pk=d.pk).exists()
    host, port = settings.DIPLOI_PUBLIC_HOST, settings.DIPLOI_SSH_PORT
    return [(c, f"ssh -p {port} {ssh_username(c, d, names[0], qualify)}@{host}") for c in names]


def promote_targets(d: Deployment) -> list[Deployment]:
    """Where a staging deployment's releases can be promoted: the project's production deployments."""
    if d.stage != Stage.STAGING:
        return []
    if not hasattr(d, "_promote_targets"):  # read once for the key and the render
        found = Deployment.objects.filter(project_id=d.project_id, stage=Stage.PRODUCTION).exclude(state=State.DELETING)
        d._promote_targets = list(found.only("slug", "name"))
    return d._promote_targets


def live_context(d: Deployment) -> dict:
    """What the live part of the Overview shows, from what is stored (the monitor's status tree and
    samples): no runtime call, no write, however many look."""
    tree = store.from_json(d.status)
    cpu, memory, observed = d.samples.order_by("-at").values_list("cpu_percent", "memory_bytes", "at").first() or (0, 0, None)
    return {
        "d": d,
        "project": d.project,
        "tree": tree,
        "status": headline(tree, d.state, d.enabled, d.state_reason),
        "observed": observed if d.state in (State.RUNNING, State.STOPPED) else None,
        "stale_after": STALE_AFTER,
        "cpu": cpu,
        "memory": memory,
        "point": latest_point(d, observed),
        "windows": WINDOWS,  # the graphs' buttons (the graphs themselves stay as they are when the part is replaced)
        "default_window": DEFAULT_WINDOW,
        "build": d.builds.first(),
        "releases": list(d.builds.select_related("source__deployment")[:RELEASES_SHOWN]) if d.builds_releases else [],
        "promote_targets": promote_targets(d),
        "domains": list(d.domains.all()),
        "component_names": components(d),
        "own_ca": trusted_root(),  # the hosts' certificates come from the router's own CA: say how to trust it
    }


def overview_context(d: Deployment, user: User) -> dict:
    """The Overview page: the live part as every viewer of the same role shares it, and what is the
    user's own (SSH commands) or only shown on the page (connections, sessions, history)."""
    return {
        "d": d,
        "project": d.project,
        "tab": "overview",
        "live": live_fragment(d),
        "ssh": ssh_commands(d, user, components(d)),
        "ssh_host_key": host_key_fingerprint(),
        "ssh_sessions": list(d.ssh_sessions.select_related("user")[:SESSIONS_SHOWN]),
        "has_keys": user.ssh_keys.exists(),
        "transitions": list(d.transitions.order_by("-at", "-pk")[:8]),
        "connections": stored_connections(d),
    }


@dataclass(frozen=True)
class Snapshot:
    members: dict[int, str]  # user id → role
    html: dict[bool, str]  # can write → fragment
    taken: int = 0  # when it was read, in the order every process shares (`taken_now`); 0: unknown

    def fragment_for(self, user_id: int) -> str | None:
        role = self.members.get(user_id)
        return None if role is None else self.html[role in WRITE_ROLES]


def off_thread(produce: Callable[[], Snapshot | None]):
    """Renders run in the thread pool, beside (not queued behind) the page views' one sync thread."""
    return database_sync_to_async(produce, thread_sensitive=False)


FRAGMENT_TTL = 600  # seconds a rendered fragment is kept for the next viewer with the same state


def digest(parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def live_state(d: Deployment) -> tuple:
    """Everything the live part shows, as a key (a few small queries, once per deployment object)."""
    if not hasattr(d, "_live_state"):
        latest = d.samples.order_by("-at").values_list("pk", flat=True).first()
        build = d.builds.annotate(log_size=Length("log")).values_list("pk", "status", "progress", "log_size").first()
        history = tuple(d.builds.values_list("pk", "status", "pruned", "commit")[:RELEASES_SHOWN])
        domains = tuple(d.domains.values_list("name", "verified"))
        targets = tuple((t.pk, t.slug, t.name) for t in promote_targets(d))  # a query only for staging
        d._live_state = (
            d.pk,
            d.project.slug,
            d.slug,
            d.name,
            d.stage,
            d.branch,
            d.state,
            d.state_reason,
            d.enabled,
            d.commit,
            d.release_id,
            json.dumps(d.status, sort_keys=True),
            json.dumps(d.endpoints, sort_keys=True),
            latest,
            build,
            history,
            d.auto_deploy,
            d.pinned_at,
            d.pinned_by_id,
            json.dumps(d.code_behind, sort_keys=True),
            domains,
            targets,
        )
    return d._live_state


def live_fragment(d: Deployment, fresh: bool = False) -> str:
    """The live part of the Overview for `d.project.role`: looked up by everything it shows, so the
    same state renders once for every viewer of that role in every process. `fresh`: rendered without
    looking it up (a producer that just changed it: its key would cost more than it saves)."""
    key = None if fresh else "live:" + digest((live_state(d), d.project.can_write))

    def render() -> str:
        if not hasattr(d, "_live_context"):  # read once for every role (the template asks d.project for the role)
            d._live_context = live_context(d)
        return render_to_string("deployments/detail.html#live", d._live_context)

    return shared.rendered(key, FRAGMENT_TTL, render)


Rendered = TypeVar("Rendered")
PAGE_TTL = 300  # seconds a rendered page is kept for the next view of the same facts
TOKEN = "csrf-token-of-the-request-7d1c"  # stands for the viewer's CSRF token in a cached page


@functools.cache
def templates_version() -> str:
    """Changes when the templates do (an upgrade never serves pages rendered by the old ones)."""
    folders = [Path(settings.BASE_DIR) / "templates" / name for name in ("", "includes", "deployments", "projects")]
    return digest(sorted((str(p), p.stat().st_mtime_ns) for folder in folders for p in folder.glob("*.html")))


def cached_page(kind: str, facts: tuple, render: Callable[[], Rendered]) -> Rendered:
    """A page (or its title and content), looked up by the facts it shows; `render` runs only when one of
    them changed. What it renders has TOKEN where each viewer's CSRF token goes."""
    return shared.rendered(page_key(kind, facts), PAGE_TTL, render)


def page_key(kind: str, facts: tuple) -> str:
    return f"{kind}:" + digest((templates_version(), facts))


@dataclass(frozen=True)
class PageContent:
    """A page's title and content, named by the facts they show (`key`) before either is fetched: the
    whole page around them is looked up by that name, and the content is read only to render it."""

    key: str
    render: Callable[[], tuple[str, str]]

    def get(self) -> tuple[str, str]:
        return shared.rendered(self.key, PAGE_TTL, self.render)


def overview_page(user: User, project_slug: str, slug: str) -> PageContent:
    """The Overview's title and content for `user` (one statement reads its facts and checks the
    membership: outsiders get 404)."""
    facts = deployment_facts_for_user(user, project_slug, slug)
    setting = (settings.DIPLOI_PUBLIC_HOST, settings.DIPLOI_SSH_PORT, host_key_fingerprint())

    def render() -> tuple[str, str]:
        d = get_deployment_for_user(user, project_slug, slug)
        context = {**overview_context(d, user), "csrf_token": TOKEN}
        return f"{d.name} · {d.project.name}", render_to_string("deployments/detail.html#overview", context)

    return PageContent(page_key("overview", (setting, user.pk, facts)), render)


def project_page(user: User, project_slug: str, requested: str | None) -> PageContent:
    """The project page's title and content for `user` at the requested page of its list (outsiders get
    404), numbered as the paginator would (not a number: the first page; out of range: the last)."""
    try:
        number = int(requested) if requested else 1
    except ValueError:
        number = 1
    if number != 1:  # one more query, for any page but the first, to know the last one
        last = max(1, -(-Deployment.objects.filter(project__slug=project_slug).count() // PAGE_SIZE))
        number = last if number < 1 else min(number, last)
    facts = project_facts_for_user(user, project_slug, number)

    def render() -> tuple[str, str]:
        project = get_project_for_user(user, project_slug)
        page = deployments_page(project, number)
        context = {
            "project": project,
            "page": page,
            "deployments": list_fragment(project, page),
            "members": project.memberships.select_related("user"),
            "csrf_token": TOKEN,
        }
        if any(s.get("package", {}).get("container") for s in project.stack_services):
            context["containers_problem"] = get_runtime().containers_problem()
        return project.name, render_to_string("projects/detail.html#overview", context)

    return PageContent(page_key("project", (user.pk, number, facts)), render)


def members_of(project_id: int) -> dict[int, str]:
    return dict(Membership.objects.filter(project_id=project_id).values_list("user_id", "role"))


def per_role(project: Project, render: Callable[[], str]) -> dict[bool, str]:
    html = {}
    for can_write, role in ((False, Role.VIEWER), (True, Role.DEVELOPER)):
        project.role = role
        html[can_write] = render()
    return html


def taken_now() -> int:
    """A number for a snapshot about to be read: a later read gets a larger one, whichever process reads.
    Producers' events can arrive out of the order they were read in (the monitor reads a tick's
    deployments, then sends them all); a socket shows none older than the one it shows."""
    return shared.next_number("live:taken")


def deployment_snapshot(deployment_id: int, fresh: bool = False) -> Snapshot | None:
    taken = taken_now()
    # secrets decrypt on load; the project's parsed stack is not shown here
    live = deployments_shown().select_related("project").defer("credentials", "connections", "project__stack", "project__stack_errors")
    d = next(iter(live.filter(pk=deployment_id)), None)
    if d is None:
        return None
    return Snapshot(members_of(d.project_id), per_role(d.project, lambda: live_fragment(d, fresh)), taken)


LIST_KEY_FIELDS = ("pk", "name", "slug", "stage", "branch", "state", "enabled", "state_reason", "status", "endpoints")


def list_fragment(project: Project, page: Page) -> str:
    """One page of the project's deployment list for `project.role`, looked up by the rows it shows
    (read as plain values: the models are built only when it must be rendered)."""
    if not hasattr(page, "key_rows"):  # read once for every role
        page.key_rows = tuple(page.object_list.values_list(*LIST_KEY_FIELDS, "cpu", "last_build_status"))
    key = "list:" + digest((project.pk, project.slug, project.can_write, page.number, page.paginator.count, page.key_rows))

    def render() -> str:
        if not isinstance(page.object_list, list):
            page.object_list = list(page.object_list)
        return render_to_string("projects/detail.html#deployments", {"project": project, "page": page})

    return shared.rendered(key, FRAGMENT_TTL, render)


def project_snapshot(project_id: int, page_number: str | None = None) -> Snapshot | None:
    taken = taken_now()
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return None
    page = deployments_page(project, page_number)
    return Snapshot(members_of(project_id), per_role(project, lambda: list_fragment(project, page)), taken)
