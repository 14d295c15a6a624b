"""What happened lately to the platform's own processes (`up` writes DATA_DIR/platform/events.json),
for the operator: every page shows it to staff accounts for a quarter of an hour."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest

RECENT = timedelta(minutes=15)
_read: dict[Path, tuple[float, list[dict]]] = {}  # path → (mtime, events): read again only when it changed


def events_file() -> Path:
    return settings.DATA_DIR / "platform" / "events.json"


def recent_events(now: datetime | None = None) -> list[str]:
    """The latest event of each platform process within RECENT, unless it says all is well again."""
    path = events_file()
    try:
        mtime = path.stat().st_mtime
        if _read.get(path, (None,))[0] != mtime:
            _read[path] = (mtime, json.loads(path.read_text()))
    except (OSError, ValueError):
        return []
    now = now or datetime.now(UTC)
    latest: dict[str, dict] = {}
    for event in _read[path][1]:
        latest[event["process"]] = event
    lines = []
    for process, event in sorted(latest.items()):
        at = datetime.fromisoformat(event["at"])
        if not event.get("ok") and now - at < RECENT:
            lines.append(f"Platform process “{process}” {event['message']} ({at:%H:%M:%S} UTC).")
    return lines


def platform_events(request: HttpRequest) -> dict[str, list[str]]:
    """Context processor: recent platform events, for staff only."""
    user = getattr(request, "user", None)
    if user is None or not user.is_staff:
        return {"platform_events": []}
    return {"platform_events": recent_events()}
