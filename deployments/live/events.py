"""Small typed events sent to the channel-layer group of a deployment (`deployment.<id>`).

Producers (tasks, the monitor) call `publish`; for a group some socket watches, the producer renders
its snapshot once and the event names it, so the web processes only fetch it (a socket renders for
itself when the snapshot is missing). Publishing never breaks the producer: with Redis away, live
updates pause and pages still render on reload.
"""

import asyncio
import logging
import os
import threading
import uuid
from concurrent.futures import TimeoutError as FutureTimeout

from channels.layers import get_channel_layer

from diploi import shared

log = logging.getLogger(__name__)

STATUS = "status"  # the status tree / colour / CPU changed: re-render the live part
BUILD = "build"  # build progress moved
STATE = "state"  # a state transition happened
MEMBERS = "members"  # the project's members changed: sockets check their access again


def group(deployment_id: int) -> str:
    return f"deployment.{deployment_id}"


def project_group(project_id: int) -> str:
    return f"project.{project_id}"


def publish(deployment_id: int, kind: str) -> bool:
    """Tell the deployment's viewers that `kind` changed; False when the channel layer is away."""
    return _send(group(deployment_id), kind)


def publish_many(deployment_ids: list[int], project_ids: list[int], kind: str = STATUS) -> bool:
    """Several events over one connection to the layer (the monitor's tick)."""
    return _send_all([(group(pk), kind) for pk in deployment_ids] + [(project_group(pk), "list") for pk in project_ids])


def publish_project(project_id: int) -> bool:
    """Tell the project page's viewers that its list (dots, CPU, states) changed."""
    return _send(project_group(project_id), "list")


def publish_members(project_id: int, deployment_ids: list[int]) -> None:
    """A membership changed: every socket on the project and its deployments checks access again."""
    _send_all([(group(pk), MEMBERS) for pk in deployment_ids] + [(project_group(project_id), MEMBERS)])


def _send(group_name: str, kind: str) -> bool:
    return _send_all([(group_name, kind)])


WATCH_TTL = 120  # seconds a socket's "someone watches this group" mark lasts unless renewed
SNAPSHOT_TTL = 60  # seconds a published snapshot waits for the web processes to pick it up


def watch(group_name: str) -> None:
    """A socket watches `group_name`: producers render its snapshot before they publish (see _prepare)."""
    shared.put(f"watch:{group_name}", 1, WATCH_TTL)


def _prepare(messages: list[tuple[str, str]]) -> list[dict]:
    """The events, each with the snapshot of what its group shows rendered here, once, when a socket
    watches the group: every web process then only fetches it (no query, no render on their side)."""
    from deployments.live.fragments import deployment_snapshot, project_snapshot

    watched = shared.get_many([f"watch:{g}" for g, _ in messages])
    events = []
    for group_name, kind in messages:
        seq = uuid.uuid4().hex  # names the event: the sockets of one process that receive it share one render
        event = {"type": "live.event", "group": group_name, "kind": kind, "seq": seq}
        if f"watch:{group_name}" in watched:
            prefix, _, ident = group_name.partition(".")
            try:
                snapshot = deployment_snapshot(int(ident), fresh=True) if prefix == "deployment" else project_snapshot(int(ident))
            except Exception:  # noqa: BLE001 - the sockets render it themselves then
                log.exception("snapshot of %s not rendered", group_name)
                snapshot = None
            if snapshot is not None and shared.put(f"snapshot:{seq}", snapshot, SNAPSHOT_TTL):
                event["snapshot"] = f"snapshot:{seq}"
        events.append(event)
    return events


SEND_TIMEOUT = 5  # seconds a producer waits for the layer (a Redis that does not answer)
_sender: asyncio.AbstractEventLoop | None = None
_sender_lock = threading.Lock()


def _sender_loop() -> asyncio.AbstractEventLoop:
    """This process's one loop for sending events, in a thread of its own. The channel layer keeps a
    connection per loop: a loop per publish (what `async_to_sync` makes) connected anew each time,
    three quarters of the cost of a publish."""
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = asyncio.new_event_loop()
            threading.Thread(target=_sender.run_forever, name="live-events", daemon=True).start()
        return _sender


def _forget_sender() -> None:  # a forked child (a worker's pool process) has the loop but not its thread
    global _sender, _sender_lock
    _sender, _sender_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_sender)


def _send_all(messages: list[tuple[str, str]]) -> bool:
    layer = get_channel_layer()
    if layer is None or not messages:
        return layer is not None
    events = _prepare(messages)

    async def send() -> None:
        for (group_name, _), event in zip(messages, events, strict=True):
            await layer.group_send(group_name, event)

    sending = asyncio.run_coroutine_threadsafe(send(), _sender_loop())
    try:
        sending.result(SEND_TIMEOUT)
        return True
    except Exception as e:  # noqa: BLE001 - Redis down must not fail a task or the monitor
        sending.cancel()
        reason = "no answer" if isinstance(e, FutureTimeout) else e
        log.warning("live updates for %s not sent: %s", ", ".join(g for g, _ in messages[:3]), reason)
        return False
