"""The monitor's health checks (`observe.probe`) against real sockets on loopback: one that answers HTTP, one
that accepts and says nothing, one that refuses, and one that is not HTTP."""

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.runtimes.base import Colour, ServiceSpec
from deployments.runtimes.local import observe
from deployments.runtimes.local.observe import MAX_STATUS_BYTES, health, probe


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/big":
            body = b"x" * (MAX_STATUS_BYTES * 3)
        elif self.path == "/broken":
            self.send_error(503)
            return
        else:
            body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # 45 connections at once (the monitor opens at most two per address)


@pytest.fixture
def http() -> Iterator[str]:
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def listener(reply: bytes | None) -> tuple[socket.socket, str]:
    """A socket that accepts connections; it sends `reply` to each and closes, or (None) never answers."""
    sock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def refused() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once it is closed


@pytest.mark.parametrize("at_once", [observe.OPEN_AT_ONCE, 3])  # 3: most checks wait for others to finish
def test_many_addresses_are_looked_at_together_and_each_gets_its_own_answer(http: str, at_once: int, monkeypatch) -> None:
    monkeypatch.setattr(observe, "OPEN_AT_ONCE", at_once)
    silent, quiet = listener(None)
    garbage, noise = listener(b"SSH-2.0-OpenSSH\r\n\r\n")
    closed = refused()
    targets = [
        (http, "/health", False),
        (http, "/status", True),
        (http, "/broken", False),
        (http, "/big", True),
        (http, None, False),
        (closed, None, False),
        (closed, "/", False),
        (noise, "/", False),
        (quiet, "/", False),
        *((http, f"/n{i}", True) for i in range(40)),
    ]
    answers = probe(targets, timeout=1.0)
    silent.close()
    garbage.close()
    assert answers[0].status == 200 and answers[0].body == b""  # no body asked for
    assert answers[1].status == 200 and answers[1].body == b"hello from /status"
    assert answers[2].status == 503
    assert answers[3].status == 200 and len(answers[3].body) == MAX_STATUS_BYTES + 1  # cut: its reader says it is too large
    assert answers[4].error == "" and answers[4].status == 0  # a connection accepted
    assert answers[5].error == "Connection refused" and answers[6].error == "Connection refused"
    assert answers[7].error == "the answer is not HTTP"
    assert answers[8].error == "timed out"
    assert [a.body for a in answers[9:]] == [f"hello from /n{i}".encode() for i in range(40)]


def test_health_words_from_the_answers(http: str) -> None:
    web = ServiceSpec("web", "Web", "component", "", "web", {}, health={"http": "/health"})
    db = ServiceSpec("db", "DB", "addon", "", "db", {})
    closed = refused()
    ok, broken, down = probe([(http, "/health", False), (http, "/broken", False), (closed, "/health", False)])
    port = closed.rsplit(":", 1)[1]
    assert health(web, http, ok).message == "HTTP 200 on /health"
    assert health(web, http, ok).colour == Colour.GREEN
    assert health(web, http, broken).colour == Colour.YELLOW
    assert health(web, closed, down).colour == Colour.RED
    assert health(web, closed, down).message == f"not answering on port {port} (Connection refused)"
    accepted, refused_ = probe([(http, None, False), (closed, None, False)])
    assert health(db, http, accepted).message == f"accepting connections on port {http.rsplit(':', 1)[1]}"
    assert health(db, closed, refused_).message == f"not accepting connections on port {port} (Connection refused)"
