"""daphne's connections write at once (diploi/webserver.py): a real Twisted server on the asyncio
reactor, in a process of its own, and a real client socket."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diploi.webserver import Broadcast

BASE_DIR = Path(__file__).resolve().parent.parent

SERVER = """
import sys
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import protocol, reactor

from diploi.webserver import write_at_once

if sys.argv[1] == "at-once":
    assert write_at_once()

BIG = bytes(range(256)) * 32768  # 8 MiB: more than the kernel takes at once


class Send(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hello\\n")
        t = self.transport
        print("left at once" if not t.dataBuffer and not t._tempDataBuffer else "queued", flush=True)
        self.transport.write(BIG)
        self.transport.write(b"end\\n")  # after bytes still queued: sent after them
        self.transport.loseConnection()


port = reactor.listenTCP(0, protocol.Factory.forProtocol(Send), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


@pytest.mark.parametrize("mode", ["at-once", "twisted"])
def test_writes_leave_at_once_whole_and_in_order(mode: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(BASE_DIR))
    server = subprocess.Popen([sys.executable, "-c", SERVER, mode], cwd=BASE_DIR, stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(server.stdout.readline())
        received = bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            while chunk := client.recv(1 << 20):
                received += chunk
        said = server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()
    assert said == ("left at once" if mode == "at-once" else "queued")
    assert bytes(received) == b"hello\n" + bytes(range(256)) * 32768 + b"end\n"


def test_daphne_applies_it_before_it_serves() -> None:
    """daphne imports Twisted before the application (diploi/asgi.py), which turns it on."""
    code = "import daphne.cli, diploi.asgi; from twisted.internet import abstract; print(abstract.FileDescriptor.write.at_once)"
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="diploi.settings")
    out = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


BROADCAST_APP = """
from diploi.webserver import Broadcast, with_connection

MESSAGES = [Broadcast(text) for text in ("hello", "é" * 100, "x" * 70000)]  # 7-bit, 16-bit and 64-bit frame lengths


async def sockets(scope, receive, send):
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    for message in MESSAGES:  # one prepared frame each, written to every connection
        if not message.send_to(scope):
            await send({"type": "websocket.send", "text": "not direct"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


application = with_connection(sockets)
"""


def test_daphne_connections_get_one_prepared_frame_each(tmp_path: Path) -> None:
    """A Broadcast writes straight to daphne's connections: each client receives every message whole."""
    from websockets.sync.client import connect

    (tmp_path / "broadcast_app.py").write_text(BROADCAST_APP)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{BASE_DIR}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "broadcast_app:application"], env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/", max_size=2**20, open_timeout=10)) for _ in range(2)]
            for client in clients:
                assert [client.recv(timeout=10) for _ in range(3)] == ["hello", "é" * 100, "x" * 70000]
    finally:
        server.terminate()
        server.wait(10)


def test_without_daphne_broadcast_leaves_the_message_to_the_asgi_send() -> None:
    assert Broadcast("hello").send_to({"type": "websocket"}) is False
