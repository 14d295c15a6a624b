"""What every page says of the platform's health: that the task queue is unreachable or that no worker
has been heard of lately (to everyone signed in, while it is so), and what happened lately to the
platform's own processes (`up` writes DATA_DIR/platform/events.json; to staff accounts, for a quarter
of an hour)."""

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from django.conf import settings
from django.http import HttpRequest

from deployments.provisioning import heartbeat

RECENT = timedelta(minutes=15)
QUEUE_DOWN = "The task queue (Redis) is unreachable: changes are saved, and carried out when it is back."
QUEUE_CHECK_EVERY = 10.0  # seconds a web process trusts its last look at the queue
_queue: dict[str, float | bool | None] = {"at": float("-inf"), "down": False, "seen": None}
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


def _look() -> dict:
    """The queue as last seen — whether Redis answered, and when a worker last said it was alive
    (heartbeat.py) — from one look, one connection, per QUEUE_CHECK_EVERY (0.3 s at most)."""
    now = time.monotonic()
    if settings.REDIS_URL and now - _queue["at"] >= QUEUE_CHECK_EVERY:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=0.3, socket_timeout=0.3)
        try:
            seen = client.get(heartbeat.key())
            _queue.update(down=False, seen=float(seen) if seen else None)
        except (redis.RedisError, OSError):
            _queue.update(down=True, seen=None)
        except ValueError:  # (not a time: as if never heard of)
            _queue.update(down=False, seen=None)
        finally:
            client.close()
        _queue["at"] = now
    return _queue


def queue_down() -> bool:
    """Whether Redis did not answer at the last look."""
    return bool(settings.REDIS_URL) and bool(_look()["down"])


WORKER_SILENT = "No worker has answered for {seconds} s: changes are saved, and carried out when one is back."


def worker_silent_for() -> float | None:
    """Seconds since a worker was last heard of, when that is more than heartbeat.SILENT (None otherwise,
    and when none ever was)."""
    seen = _look().get("seen") if settings.REDIS_URL else None
    silent = time.time() - seen if seen is not None else 0.0
    return silent if silent > heartbeat.SILENT else None


def platform_events(request: HttpRequest) -> dict[str, list[str]]:
    """Context processor: the queue's and the workers' state for whoever is signed in; recent platform
    events for staff."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"platform_events": []}
    lines = [QUEUE_DOWN] if queue_down() else []
    if not lines and (silent := worker_silent_for()) is not None:
        lines.append(WORKER_SILENT.format(seconds=round(silent)))
    return {"platform_events": lines + (recent_events() if user.is_staff else [])}
