import signal
import threading
import time

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
        time.sleep(BURST)
        with self.lock:
            self.event.clear()
            taken, self.ids = self.ids, set()
        return taken


BURST = 0.02  # seconds of a burst of changes gathered into one look


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
        at_once = " and at once on process changes" if changes.active else " and at once on what the watches see" if watching else ""
        self.stdout.write(f"monitor: observing every {interval:g} s{at_once}")
        stop_polling = threading.Event()
        if not once and not no_polling:
            threading.Thread(target=polling.run, args=(stop_polling,), name="polling", daemon=True).start()
            self.stdout.write(f"monitor: polling followed repositories every {settings.DIPLOI_POLL_INTERVAL} s")
        while not self.stopping:
            started = time.monotonic()
            try:
                monitor.tick()
            except Exception as e:  # noqa: BLE001 - e.g. the database restarting: try again next tick
                self.stderr.write(f"monitor: tick failed: {e}")
            if once:
                return
            # Wait for the next tick, or less when the runtime announces a change (a crash, a restart);
            # what the watches announce is looked at alone, at once.
            while not self.stopping and time.monotonic() - started < interval:
                if watching:
                    ids = changed.take(min(0.2, max(0.0, interval - (time.monotonic() - started))))
                    if ids:
                        self.look_at(monitor, ids)
                elif changes.wait(0.2):
                    break
        stop_polling.set()
        changes.close()
        self.stdout.write("monitor: stopped")

    def look_at(self, monitor: Monitor, ids: set[int]) -> None:
        try:
            monitor.tick(only=ids)
        except Exception as e:  # noqa: BLE001 - as a tick's
            self.stderr.write(f"monitor: looking at {len(ids)} changed deployment(s) failed: {e}")

    def on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
