import signal
import threading
import time
from collections.abc import Callable

import redis
from django.conf import settings
from django.core.management.base import BaseCommand

from deployments.runtimes.local.events import CHANNEL
from deployments.status.monitor import Monitor
from deployments.triggers import polling


class RuntimeChanges:
    """Announcements from the runtime's event listener (Redis pub/sub); inactive without Redis."""

    def __init__(self, url: str) -> None:
        self.pubsub = None
        if url:
            try:
                self.pubsub = redis.Redis.from_url(url, socket_connect_timeout=2).pubsub(ignore_subscribe_messages=True)
                self.pubsub.subscribe(CHANNEL)
            except redis.RedisError:
                self.pubsub = None

    @property
    def active(self) -> bool:
        return self.pubsub is not None

    def wait(self, timeout: float) -> bool:
        """True when a change was announced within `timeout` seconds (and drains the others)."""
        if self.pubsub is None:
            time.sleep(timeout)
            return False
        try:
            if self.pubsub.get_message(timeout=timeout) is None:
                return False
            while self.pubsub.get_message(timeout=0.05) is not None:
                pass
            return True
        except redis.RedisError:
            time.sleep(timeout)
            return False

    def close(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()


class Changed:
    """Deployments the runtime said changed (from its watch threads), until the monitor takes them."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.event = threading.Event()

    def add(self, ids: set[int]) -> None:
        with self.lock:
            self.ids |= ids
        self.event.set()

    def take(self, timeout: float) -> set[int]:
        """The ids announced within `timeout` seconds (those of a burst together); empty if none."""
        if not self.event.wait(timeout):
            return set()
        if timeout:
            time.sleep(BURST)
        with self.lock:
            self.event.clear()
            taken, self.ids = self.ids, set()
        return taken


BURST = 0.02  # seconds of a burst of changes gathered into one look


def follow(
    monitor: Monitor,
    interval: float,
    stopped: Callable[[], bool],
    changed: Changed | None,
    changes: RuntimeChanges,
    report: Callable[[str], object],
) -> None:
    """Full ticks every `interval` seconds (at least one), and in between: with watches (`changed`),
    each deployment they announce is looked at alone at once, also between a full tick's chunks;
    without, a change the runtime's listener announces (a crash, a restart) brings the next tick on."""

    def look(ids: set[int]) -> None:
        if ids:
            try:
                monitor.tick(only=ids)
            except Exception as e:  # noqa: BLE001 - as a tick's
                report(f"monitor: looking at {len(ids)} changed deployment(s) failed: {e}")

    between = (lambda: look(changed.take(0))) if changed is not None else None
    while True:
        started = time.monotonic()
        try:
            monitor.tick(between=between)
        except Exception as e:  # noqa: BLE001 - e.g. the database restarting: try again next tick
            report(f"monitor: tick failed: {e}")
        while not stopped() and time.monotonic() - started < interval:
            if changed is not None:
                look(changed.take(min(0.2, max(0.0, interval - (time.monotonic() - started)))))
            elif changes.wait(0.2):
                break
        if stopped():
            return


class Command(BaseCommand):
    help = "Observe all active deployments every few seconds; store status changes and publish live updates."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--interval", type=float, default=settings.DIPLOI_MONITOR_INTERVAL, help="seconds between ticks")
        parser.add_argument("--once", action="store_true", help="one tick, then exit")
        parser.add_argument("--no-polling", action="store_true", help="do not poll repositories for new commits")

    def handle(self, *args, interval: float, once: bool, no_polling: bool, **options) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        monitor = Monitor()
        changed = Changed()
        watching = monitor.runtime.watch(changed.add)  # Kubernetes: watches in this process
        changes = RuntimeChanges("" if watching else settings.REDIS_URL)  # local: its event listener, over Redis
        at_once = ", and at once on process changes" if changes.active else ", and at once on what the watches see" if watching else ""
        self.stdout.write(f"monitor: observing every {interval:g} s{at_once}")
        stop_polling = threading.Event()
        if not once and not no_polling:
            threading.Thread(target=polling.run, args=(stop_polling,), name="polling", daemon=True).start()
            self.stdout.write(f"monitor: polling followed repositories every {settings.DIPLOI_POLL_INTERVAL} s")
        follow(monitor, interval, lambda: self.stopping or once, changed if watching else None, changes, self.stderr.write)
        stop_polling.set()
        changes.close()
        self.stdout.write("monitor: stopped")

    def on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
