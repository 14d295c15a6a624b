"""daphne's connections write at once (diploi/webserver.py): a real Twisted server on the asyncio
reactor, in a process of its own, and a real client socket."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
