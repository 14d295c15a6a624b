"""Diploi's status items: a document a component serves at its status path (`local.status`), each item
a line of the status tree. Both runtimes read it; this is how.

The document: `{"diploiStatusVersion": 1, "items": [{"identifier", "name", "status": green|yellow|red,
"message", "isPending"}]}`.
"""

import json
import time
from dataclasses import dataclass

from deployments.runtimes.base import Colour, ItemState, ServiceSpec


@dataclass(frozen=True)
class Answer:
    """What a look at an address found: a connection accepted, an HTTP status and the start of the body, or
    why there was none (`error`)."""

    status: int = 0
    body: bytes = b""
    error: str = ""


STATUS_GRACE = 30.0  # red items of a component this young are shown as pending, as Diploi does
MAX_STATUS_BYTES = 64 * 1024
MAX_STATUS_ITEMS = 50
_STATUS_COLOURS = {"green": Colour.GREEN, "yellow": Colour.YELLOW, "red": Colour.RED}


def status_items(service: ServiceSpec, answer: Answer, started: float) -> list[ItemState]:
    """The items the component serves in Diploi's status format at its status path; a malformed or
    missing answer is one yellow item saying what was wrong."""
    name = f"{service.identifier}/status"
    if answer.error:
        return [ItemState(name, Colour.YELLOW, f"its status at {service.status_path} did not answer ({answer.error})")]
    if answer.status >= 400:
        return [ItemState(name, Colour.YELLOW, f"its status at {service.status_path} answered HTTP {answer.status}")]
    items, problem = parse_status(answer.body)
    if problem:
        return [ItemState(name, Colour.YELLOW, f"its status at {service.status_path} {problem}")]
    young = started and time.time() - started < STATUS_GRACE
    states = []
    for item in items:
        colour = _STATUS_COLOURS[item["status"]]
        if item.get("isPending") or (colour == Colour.RED and young):
            colour = Colour.PENDING
        message = " — ".join(str(item[k]) for k in ("name", "message") if item.get(k)) or item["status"]
        states.append(ItemState(f"{service.identifier}/{item['identifier']}", colour, message[:300]))
    return states


def parse_status(body: bytes) -> tuple[list[dict], str]:
    """Diploi's status document → (items, "") or ([], what is wrong with it)."""
    if len(body) > MAX_STATUS_BYTES:
        return [], f"is larger than {MAX_STATUS_BYTES // 1024} KiB"
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [], "is not JSON"
    if not isinstance(doc, dict) or doc.get("diploiStatusVersion") != 1:
        return [], "has no diploiStatusVersion: 1"
    items = doc.get("items")
    if not isinstance(items, list) or len(items) > MAX_STATUS_ITEMS:
        return [], f"has no items list (of at most {MAX_STATUS_ITEMS})"
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("identifier"), str) or not item["identifier"]:
            return [], f"item {i} has no identifier"
        if item.get("status") not in _STATUS_COLOURS:
            return [], f"item {item['identifier'][:50]}: status must be green, yellow or red"
    return items, ""
