"""git's receive-pack inside a development deployment's sandbox (remote.origin.receivepack) for a
repository on this machine: the push goes to the platform's receiving end (receive.py) through the
socket bound in at /run/diploi/git.sock. Standard library only: it runs under the machine's python3."""

import os
import socket
import sys
import threading

SOCKET = "/run/diploi/git.sock"


def main() -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(SOCKET)
    except OSError as e:
        print(f"diploi: the platform's git receiver is not running ({e.strerror}); start the deployment and push again", file=sys.stderr)
        return 1

    def upload() -> None:
        while chunk := os.read(0, 65536):
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)

    threading.Thread(target=upload, daemon=True).start()
    while chunk := conn.recv(65536):
        os.write(1, chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
