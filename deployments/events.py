"""Small typed events sent to the channel-layer group of a deployment (`deployment.<id>`).

Producers (tasks, the monitor) call `publish`; the websocket consumer renders the affected
fragments. Publishing never breaks the producer: with Redis away, live updates pause and pages
still render on reload.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

STATUS = "status"  # the status tree / colour / CPU changed: re-render the live part
BUILD = "build"  # build progress moved
STATE = "state"  # a state transition happened


def group(deployment_id: int) -> str:
    return f"deployment.{deployment_id}"


def publish(deployment_id: int, kind: str) -> bool:
    """Tell the deployment's viewers that `kind` changed; False when the channel layer is away."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(group(deployment_id), {"type": "deployment.event", "kind": kind})
        return True
    except Exception as e:  # noqa: BLE001 - Redis down must not fail a task or the monitor
        log.warning("live update for deployment %s not sent: %s", deployment_id, e)
        return False
