import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from deployments.monitor import Monitor


class Command(BaseCommand):
    help = "Observe all active deployments every few seconds; store status changes and publish live updates."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--interval", type=float, default=settings.DIPLOI_MONITOR_INTERVAL, help="seconds between ticks")
        parser.add_argument("--once", action="store_true", help="one tick, then exit")

    def handle(self, *args, interval: float, once: bool, **options) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        monitor = Monitor()
        self.stdout.write(f"monitor: observing every {interval:g} s")
        while not self.stopping:
            started = time.monotonic()
            try:
                monitor.tick()
            except Exception as e:  # noqa: BLE001 - e.g. the database restarting: try again next tick
                self.stderr.write(f"monitor: tick failed: {e}")
            if once:
                return
            while not self.stopping and time.monotonic() - started < interval:
                time.sleep(0.1)
        self.stdout.write("monitor: stopped")

    def on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
