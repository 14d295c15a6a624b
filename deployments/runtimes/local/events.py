"""supervisord event listener: counts crashes per process into restarts.json, and announces every
process state change on Redis (channel `diploi:runtime`) so the monitor looks at once.

A crash is an unexpected exit of a running process (EXITED, expected:0) or a death while it was
still starting (BACKOFF); supervisord restarts both.

Run by supervisord itself (see supervisor.py); speaks supervisor's event listener protocol on
stdin/stdout and must print nothing else to stdout.
"""

import json
import os
import sys
from pathlib import Path

CHANNEL = "diploi:runtime"


def parse(line: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def record_exit(path: Path, process: str) -> None:
    counts = json.loads(path.read_text()) if path.exists() else {}
    counts[process] = counts.get(process, 0) + 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts))
    os.replace(tmp, path)


def announcer():
    """A function that publishes a line on Redis, or does nothing without REDIS_URL (or Redis)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        return lambda line: None
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)

    def announce(line: str) -> None:
        try:
            client.publish(CHANNEL, line)
        except redis.RedisError as e:
            print(f"diploi-events: not announced ({e})", file=sys.stderr, flush=True)

    return announce


def main(directory: str) -> None:
    path = Path(directory) / "restarts.json"
    announce = announcer()
    while True:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # supervisord went away
            return
        header = parse(line)
        payload = sys.stdin.read(int(header.get("len", 0)))
        first_line, _, _ = payload.partition("\n")
        body = parse(first_line)
        event = header.get("eventname")
        if (event == "PROCESS_STATE_EXITED" and body.get("expected") == "0") or event == "PROCESS_STATE_BACKOFF":
            record_exit(path, f"{body.get('groupname')}:{body.get('processname')}")
        if event and event.startswith("PROCESS_STATE_") and body.get("groupname", "").startswith("d"):
            announce(f"{body.get('groupname')} {event}")
        sys.stdout.write("RESULT 2\nOK")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
