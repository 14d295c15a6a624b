"""Websockets: live fragments of the Overview and the project list, and the log stream.

Every socket of a process that waits on the same event shares one render (`Renders`): the
fragment is rendered once per role, with the project's member list beside it, so each socket
only looks its user up in that list — a thousand viewers cost one render, not a thousand.
Access is checked on connect and on every event; a member removed meanwhile is disconnected.
"""

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import PermissionDenied
from django.db.models.functions import Length
from django.http import Http404
from django.template.loader import render_to_string
from django.utils.html import escape

from deployments import events
from deployments.access import get_deployment_by_id_for_user
from deployments.models import Deployment
from deployments.queries import deployments_page
from deployments.runtimes import get_runtime
from deployments.runtimes.base import RuntimeFailure
from deployments.spec import current_spec
from deployments.views import LOG_LINES, overview_context
from projects.access import get_project_for_user
from projects.models import WRITE_ROLES, Membership, Project, Role

log = logging.getLogger(__name__)
NOT_FOUND, GONE = 4404, 4403  # close codes: never had access / lost it (or the object is gone)


@dataclass(frozen=True)
class Snapshot:
    members: dict[int, str]  # user id → role
    html: dict[bool, str]  # can write → fragment

    def fragment_for(self, user) -> str | None:
        role = self.members.get(user.pk)
        return None if role is None else self.html[role in WRITE_ROLES]


class Renders:
    """Snapshots per (group, event), shared by every socket of this process waiting for them."""

    def __init__(self, size: int = 512) -> None:
        self._futures: OrderedDict[Hashable, asyncio.Future] = OrderedDict()
        self.size = size

    async def get(self, key: Hashable, produce: Callable[[], Snapshot | None]) -> Snapshot | None:
        future = self._futures.get(key)
        if future is None or future.get_loop() is not asyncio.get_running_loop():
            future = self._futures[key] = asyncio.ensure_future(off_thread(produce)())
            while len(self._futures) > self.size:
                self._futures.popitem(last=False)
        return await asyncio.shield(future)


def off_thread(produce: Callable[[], Snapshot | None]):
    """Renders run in the thread pool, beside (not queued behind) the page views' one sync thread."""
    return database_sync_to_async(produce, thread_sensitive=False)


renders = Renders()
_rendered: dict[tuple, str] = {}


def render_live(d: Deployment) -> str:
    """The live part of the Overview for `d.project.role`; the same state renders once per process."""
    latest = d.samples.order_by("-at").values_list("pk", flat=True).first()
    build = d.builds.annotate(log_size=Length("log")).values_list("pk", "status", "progress", "log_size").first()
    domains = tuple(d.domains.values_list("name", "verified"))
    key = (d.pk, d.state, d.state_reason, d.enabled, d.commit, d.release_id, json.dumps(d.status, sort_keys=True),
           json.dumps(d.endpoints, sort_keys=True), latest, build, domains, d.project.can_write)  # fmt: skip
    if key not in _rendered:
        if len(_rendered) > 1000:
            _rendered.clear()
        _rendered[key] = render_to_string("deployments/detail.html#live", overview_context(d, observe=False))
    return _rendered[key]


def members_of(project_id: int) -> dict[int, str]:
    return dict(Membership.objects.filter(project_id=project_id).values_list("user_id", "role"))


def per_role(project: Project, render: Callable[[], str]) -> dict[bool, str]:
    html = {}
    for can_write, role in ((False, Role.VIEWER), (True, Role.DEVELOPER)):
        project.role = role
        html[can_write] = render()
    return html


def deployment_snapshot(deployment_id: int) -> Snapshot | None:
    d = Deployment.objects.select_related("project", "release").filter(pk=deployment_id).first()
    if d is None:
        return None
    return Snapshot(members_of(d.project_id), per_role(d.project, lambda: render_live(d)))


def project_snapshot(project_id: int, page_number: str | None = None) -> Snapshot | None:
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return None
    page = deployments_page(project, page_number)
    page.object_list = list(page.object_list)
    ctx = {"project": project, "page": page}
    return Snapshot(members_of(project_id), per_role(project, lambda: render_to_string("projects/detail.html#deployments", ctx)))


class LiveConsumer(AsyncWebsocketConsumer):
    """Joins one group, sends its fragment on connect (a reconnect never shows a stale colour) and
    again on every event of the group, when it changed for this socket."""

    group = ""
    last = ""

    def authorise(self) -> int:
        """The id of what the socket watches; Http404/PermissionDenied when the user may not."""
        raise NotImplementedError

    def group_name(self, ident: int) -> str:
        raise NotImplementedError

    def snapshot(self) -> Snapshot | None:
        raise NotImplementedError

    async def connect(self) -> None:
        try:
            self.ident = await database_sync_to_async(self.authorise)()
        except (Http404, PermissionDenied):
            await self.close(code=NOT_FOUND)  # anonymous users and outsiders alike: nothing to see here
            return
        self.group = self.group_name(self.ident)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.push(await off_thread(self.snapshot)())

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def live_event(self, event: dict) -> None:
        await self.push(await renders.get((self.group, self.variant(), event.get("seq")), self.snapshot))

    def variant(self) -> Hashable:
        """What else than the group the fragment depends on (sockets that share it share a render)."""
        return None

    async def push(self, snapshot: Snapshot | None) -> None:
        fragment = snapshot.fragment_for(self.scope["user"]) if snapshot else None
        if fragment is None:
            await self.close(code=GONE)
        elif fragment != self.last:
            self.last = fragment
            await self.send(text_data=fragment)


class DeploymentConsumer(LiveConsumer):
    """`/ws/deployments/<id>/`: the Overview's live part (colour, status tree, CPU, build progress)."""

    def authorise(self) -> int:
        return get_deployment_by_id_for_user(self.scope.get("user"), int(self.scope["url_route"]["kwargs"]["pk"])).pk

    def group_name(self, ident: int) -> str:
        return events.group(ident)

    def snapshot(self) -> Snapshot | None:
        return deployment_snapshot(self.ident)


class ProjectConsumer(LiveConsumer):
    """`/ws/projects/<slug>/`: the project page's list of deployments (dots, CPU figures, states)."""

    def authorise(self) -> int:
        return get_project_for_user(self.scope.get("user"), self.scope["url_route"]["kwargs"]["slug"]).pk

    def group_name(self, ident: int) -> str:
        return events.project_group(ident)

    def variant(self) -> Hashable:
        return parse_qs(self.scope.get("query_string", b"").decode()).get("page", ["1"])[0]

    def snapshot(self) -> Snapshot | None:
        return project_snapshot(self.ident, self.variant())


class LogConsumer(AsyncWebsocketConsumer):
    """`/ws/deployments/<id>/logs/<service>/`: the last lines, then every new line as it is written.

    The first message replaces the log element; later ones append to it (the page keeps the last
    LOG_LINES lines). Lines are read in a thread that stops when the socket closes."""

    group = ""

    async def connect(self) -> None:
        kwargs = self.scope["url_route"]["kwargs"]
        try:
            self.deployment_id, self.spec = await database_sync_to_async(self.authorise)(int(kwargs["pk"]), kwargs["service"])
        except (Http404, PermissionDenied, RuntimeFailure):
            await self.close(code=NOT_FOUND)
            return
        self.service = kwargs["service"]
        self.group = events.group(self.deployment_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.stop = threading.Event()
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self.read, args=(loop,), daemon=True, name=f"logs-{self.deployment_id}-{self.service}").start()
        self.sender = asyncio.create_task(self.send_lines())

    def authorise(self, pk: int, service: str):
        d = get_deployment_by_id_for_user(self.scope.get("user"), pk)
        spec = current_spec(d)
        spec.service(service)  # RuntimeFailure when the stack has no such component
        return d.pk, spec

    def read(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for line in get_runtime().logs(self.spec, self.service, follow=True, tail=LOG_LINES, stop=self.stop):
                if loop.is_closed():
                    return
                loop.call_soon_threadsafe(self.lines.put_nowait, line)
        except Exception:  # noqa: BLE001 - a vanished log ends the stream, not the server
            log.exception("log stream of %s/%s ended", self.deployment_id, self.service)

    async def send_lines(self) -> None:
        first = True
        while True:
            batch = [await self.lines.get()]
            await asyncio.sleep(0.05)  # gather what arrived together into one message
            while not self.lines.empty():
                batch.append(self.lines.get_nowait())
            swap = "true" if first else "beforeend"
            body = "".join(f"<span>{escape(line)}\n</span>" for line in batch[-LOG_LINES:])
            await self.send(text_data=f'<pre class="log" id="deployment-{self.deployment_id}-log" hx-swap-oob="{swap}">{body}</pre>')
            first = False

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "stop"):
            self.stop.set()
            self.sender.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def live_event(self, event: dict) -> None:
        if event.get("kind") == events.MEMBERS:
            try:
                await database_sync_to_async(get_deployment_by_id_for_user)(self.scope["user"], self.deployment_id)
            except (Http404, PermissionDenied):
                await self.close(code=GONE)
