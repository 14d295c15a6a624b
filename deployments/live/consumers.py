"""Websockets: live fragments of the Overview and the project list, and the log stream.

An event reaches each web process once (its `Hub`), and all the process's sockets on that group share
one snapshot: the fragment once per role, with the project's member list beside it, so each socket
only looks its user up in that list — a thousand viewers cost one render, not a thousand.
Access is checked on connect and on every event; a member removed meanwhile is disconnected.
"""

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Hashable
from functools import partial
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils.html import escape

from deployments.access import get_deployment_by_id_for_user
from deployments.live import events
from deployments.live.fragments import LOG_LINES, Snapshot, deployment_snapshot, off_thread, project_snapshot
from deployments.provisioning.spec import current_spec
from deployments.runtimes import get_runtime
from deployments.runtimes.base import RuntimeFailure
from diploi import shared
from diploi.webserver import Broadcast
from projects.access import get_project_for_user

log = logging.getLogger(__name__)
NOT_FOUND, GONE = 4404, 4403  # close codes: never had access / lost it (or the object is gone)


class Consumer(AsyncWebsocketConsumer):
    """A websocket consumer whose database work all runs in `database_sync_to_async` (which closes
    stale connections in its own thread).

    Channels' own dispatch also sweeps the connections of the one sync thread before every message.
    That is a hop to the thread the page views run on, once per socket per event: with 500 sockets on
    one deployment, one event queued 500 hops behind each other and behind the pages."""

    async def dispatch(self, message: dict) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class Hub:
    """This process's one member of every group its live sockets watch.

    An event reaches the process once; the hub fetches (or renders) its snapshot once per variant and
    hands it to each socket of the group in turn. Going through the channel layer per socket instead
    (a queue, a task wake-up and a dispatch each) was most of the cost with 500 sockets on one
    deployment. Events of one group are delivered in order; different groups' events do not wait
    for each other."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.sockets: dict[str, set[LiveConsumer]] = {}
        self.order: dict[str, asyncio.Lock] = {}
        self.watched: dict[str, float] = {}
        self.channel = ""
        self.starting = asyncio.Lock()  # the first sockets arrive together: one channel, one listener
        self.listener: asyncio.Task | None = None
        self.deliveries: set[asyncio.Task] = set()  # held until done (the loop keeps only weak references)

    async def join(self, socket: "LiveConsumer") -> None:
        async with self.starting:
            if not self.channel:
                self.channel = await self.layer.new_channel("hub.")
                self.listener = asyncio.create_task(self.listen())
        members = self.sockets.setdefault(socket.group, set())
        if not members:
            await self.layer.group_add(socket.group, self.channel)
            self.watched[socket.group] = time.monotonic()
        members.add(socket)

    async def leave(self, socket: "LiveConsumer") -> None:
        members = self.sockets.get(socket.group, set())
        members.discard(socket)
        if not members and self.sockets.pop(socket.group, None) is not None:
            self.order.pop(socket.group, None)
            self.watched.pop(socket.group, None)
            await self.layer.group_discard(socket.group, self.channel)
            if self.sockets.get(socket.group):  # a socket joined the group meanwhile: stay in it
                await self.layer.group_add(socket.group, self.channel)

    async def listen(self) -> None:
        while True:
            try:
                event = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the layer reconnects; the hub keeps listening
                log.exception("live events: receive failed")
                await asyncio.sleep(1)
                continue
            if event.get("group") in self.sockets:
                delivery = asyncio.create_task(self.deliver(event))
                self.deliveries.add(delivery)
                delivery.add_done_callback(self.deliveries.discard)

    async def deliver(self, event: dict) -> None:
        group_name = event["group"]
        async with self.order.setdefault(group_name, asyncio.Lock()):
            by_variant: dict[Hashable, list[LiveConsumer]] = {}
            for socket in self.sockets.get(group_name, ()):
                by_variant.setdefault(socket.variant(), []).append(socket)
            renew = time.monotonic() - self.watched.get(group_name, 0) > events.WATCH_TTL / 2
            if renew:
                self.watched[group_name] = time.monotonic()
            for variant, sockets in by_variant.items():
                published = event.get("snapshot") if variant == sockets[0].published_variant else None
                snapshot = await off_thread(partial(sockets[0].event_snapshot, published, renew))()
                renew = False
                messages: dict[str, Broadcast] = {}  # each fragment framed once for all the sockets it goes to
                for socket in sockets:
                    try:
                        await socket.push(snapshot, messages)
                    except Exception:  # noqa: BLE001 - one broken socket does not keep the event from the others
                        log.exception("live event not delivered to one socket of %s", group_name)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub_for(layer) -> Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = Hub(layer)
    return hub


class LiveConsumer(Consumer):
    """Sends its fragment on connect (a reconnect never shows a stale colour) and again on every
    event of its group (through this process's `Hub`), when it changed for this socket."""

    group = ""
    last = ""
    taken = 0  # the number of the snapshot it shows

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
        self.user_id = self.scope["user"].pk  # read once: the scope's user is a lazy object, slow to ask per event
        self.hub = hub_for(self.channel_layer)
        await self.hub.join(self)
        await self.accept()
        await self.push(await off_thread(self.first_snapshot)())

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.hub.leave(self)

    def first_snapshot(self) -> Snapshot | None:
        events.watch(self.group)
        return self.snapshot()

    def event_snapshot(self, published: str | None, renew: bool) -> Snapshot | None:
        """The snapshot a producer stored for the event, else rendered here (shared by this variant's sockets)."""
        if renew:
            events.watch(self.group)
        return (published and shared.get(published)) or self.snapshot()

    published_variant: Hashable = None  # the variant producers render (other ones render here)

    def variant(self) -> Hashable:
        """What else than the group the fragment depends on (sockets that share it share a snapshot)."""
        return None

    async def push(self, snapshot: Snapshot | None, messages: dict[str, Broadcast] | None = None) -> None:
        """Sends the user's fragment of `snapshot` if it changed and is not older than the one shown
        (`messages`: the event's, shared by its sockets)."""
        if snapshot is not None and snapshot.taken:
            if snapshot.taken < self.taken:
                return  # read before what the socket shows: a later event already brought newer
            self.taken = snapshot.taken
        fragment = snapshot.fragment_for(self.user_id) if snapshot else None
        if fragment is None:
            await self.close(code=GONE)
        elif fragment != self.last:
            self.last = fragment
            message = messages.setdefault(fragment, Broadcast(fragment)) if messages is not None else Broadcast(fragment)
            if not message.send_to(self.scope):
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

    published_variant = "1"

    def variant(self) -> Hashable:
        return parse_qs(self.scope.get("query_string", b"").decode()).get("page", ["1"])[0]

    def snapshot(self) -> Snapshot | None:
        return project_snapshot(self.ident, self.variant())


class LogConsumer(Consumer):
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
            swap = "innerHTML" if first else "beforeend"  # the page's <pre> keeps its own attributes
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
