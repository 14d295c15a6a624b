"""The status tree as it is stored on the deployment (`Deployment.status`) and read back: one format.

    {"colour": "green", "reason": "Running",
     "tree": {"containers": [{"name": "web", "colour": "green", "message": "running",
                              "restarts": 0, "started_at": 1764000000.0}, …], …}}

CPU and memory are not stored here (they change every tick; they are samples). The CLI prints the
same item format.
"""

from typing import Any

from deployments.runtimes.base import Colour, ItemState
from deployments.status.tree import BRANCHES, WAITING, StatusTree

FIELDS = ("name", "colour", "message", "restarts", "started_at")


def item_to_json(item: ItemState) -> dict[str, Any]:
    return {
        "name": item.name,
        "colour": item.colour.value,
        "message": item.message,
        "restarts": item.restarts,
        "started_at": item.started_at,
    }


def item_from_json(data: dict | list) -> ItemState:
    if isinstance(data, list):  # stored before the format named its fields: [name, colour, message(, restarts, started_at)]
        data = dict(zip(FIELDS, [*data, 0, None][:5], strict=True))
    return ItemState(
        data["name"], Colour(data["colour"]), data.get("message", ""), data.get("restarts", 0), started_at=data.get("started_at")
    )


def to_json(tree: StatusTree) -> dict[str, Any]:
    return {
        "colour": tree.colour.value,
        "reason": tree.reason,
        "tree": {branch: [item_to_json(i) for i in getattr(tree, branch)] for branch in BRANCHES},
    }


def from_json(status: dict | None) -> StatusTree:
    """The stored tree; before the monitor's first look, an empty pending one (not `observed`)."""
    status = status or {}
    branches = status.get("tree", {})
    colour = Colour(status["colour"]) if status.get("colour") else Colour.PENDING
    items = {branch: tuple(item_from_json(row) for row in branches.get(branch, [])) for branch in BRANCHES}
    return StatusTree(colour, status.get("reason", WAITING), **items, observed=bool(status))
