"""Workers say they are alive: every BEAT seconds, from a thread of the worker's main process (a worker
stopped — SIGSTOP, swapped out, wedged — stops saying it), the time in Redis under a key of the data
directory's. Every page says so when none has been heard of for SILENT seconds (web/health.py); a
platform whose worker was never heard of (none started yet) says nothing."""

import hashlib
import threading
import time

import redis
from django.conf import settings

BEAT, SILENT = 5.0, 20.0


def key() -> str:
    """One per data directory: installations (and tests) sharing a Redis do not vouch for each other."""
    return "diploi:worker-seen:" + hashlib.sha256(str(settings.DATA_DIR).encode()).hexdigest()[:16]


def start() -> None:
    """In the worker's main process: say every BEAT seconds that it is alive (a Redis that does not
    answer is the queue's notice's business)."""

    def beat() -> None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        while True:
            try:
                client.set(key(), repr(time.time()))
            except (redis.RedisError, OSError):
                pass
            time.sleep(BEAT)

    if settings.REDIS_URL:
        threading.Thread(target=beat, name="diploi-heartbeat", daemon=True).start()
