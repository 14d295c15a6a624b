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


def publish_project(project_id: int) -> bool:
    """Tell the project page's viewers that its list (dots, CPU, states) changed."""
    return _send(project_group(project_id), "list")


def publish_members(project_id: int, deployment_ids: list[int]) -> None:
    """A membership changed: every socket on the project and its deployments checks access again."""
    for deployment_id in deployment_ids:
        publish(deployment_id, MEMBERS)
    _send(project_group(project_id), MEMBERS)


def _send(group_name: str, kind: str) -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        # `seq` names this event: the sockets of one process that receive it share one render.
        async_to_sync(layer.group_send)(group_name, {"type": "live.event", "kind": kind, "seq": uuid.uuid4().hex})
        return True
    except Exception as e:  # noqa: BLE001 - Redis down must not fail a task or the monitor
        log.warning("live update for %s not sent: %s", group_name, e)
        return False
