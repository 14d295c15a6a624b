"""Small typed events sent to the channel-layer group of a deployment (`deployment.<id>`).

Producers (tasks, the monitor) call `publish`; the websocket consumer renders the affected
fragments. Publishing never breaks the producer: with Redis away, live updates pause and pages
still render on reload.
"""

import logging
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

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


def _send_all(messages: list[tuple[str, str]]) -> bool:
    layer = get_channel_layer()
    if layer is None or not messages:
        return layer is not None

    async def send() -> None:
        # `seq` names each event: the sockets of one process that receive it share one render.
        for group_name, kind in messages:
            await layer.group_send(group_name, {"type": "live.event", "kind": kind, "seq": uuid.uuid4().hex})

    try:
        async_to_sync(send)()
        return True
    except Exception as e:  # noqa: BLE001 - Redis down must not fail a task or the monitor
        log.warning("live updates for %s not sent: %s", ", ".join(g for g, _ in messages[:3]), e)
        return False
