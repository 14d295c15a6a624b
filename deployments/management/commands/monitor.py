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
        changes = RuntimeChanges(settings.REDIS_URL)
        self.stdout.write(f"monitor: observing every {interval:g} s{', and at once on process changes' if changes.active else ''}")
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
            # Wait for the next tick, or less when the runtime announces a change (a crash, a restart).
            while not self.stopping and time.monotonic() - started < interval:
                if changes.wait(0.2):
                    break
        stop_polling.set()
        changes.close()
        self.stdout.write("monitor: stopped")

    def on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
