"""The receiving end of a development deployment's `git push` to a repository on this machine (the
demo's, a local project's). The deployment's sandbox has that repository read-only; a push from it goes
through a unix socket bound into the sandbox (push.py is git's receive-pack there) to this program,
which supervisord runs for the deployment, and which runs `git receive-pack` as the platform — as a git
host does: the tenant sends a pack over a pipe, objects are checked (receive.fsckObjects), and nothing
of the tenant's (config, hooks) is in the repository it writes to.

    python -m deployments.runtimes.local.receive <socket> <repository>
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading

import gitsafe

PUSH_TIMEOUT = 600
PR_SET_PDEATHSIG = 1
AT_ONCE = threading.BoundedSemaphore(4)  # pushes received together; more wait their turn


def serve(path: str, repository: str) -> None:
    # bound by its name from its folder: a unix socket's path may not be longer than 107 bytes
    os.chdir(os.path.dirname(path))
    name = os.path.basename(path)
    if os.path.exists(name):
        os.unlink(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    os.chmod(name, 0o666)  # only the deployment's sandboxes have it bound in (its uid connects)
    server.listen(8)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=receive, args=(conn, repository), daemon=True).start()


def receive(conn: socket.socket, repository: str) -> None:
    with conn, AT_ONCE:
        argv = ["git", "-c", "receive.fsckObjects=true", "-c", "core.hooksPath=/dev/null", "receive-pack", repository]
        pipe = {"stdin": conn.fileno(), "stdout": conn.fileno(), "stderr": subprocess.DEVNULL}
        try:
            subprocess.run(argv, **pipe, env=gitsafe.environment(), timeout=PUSH_TIMEOUT, cwd="/")
        except subprocess.TimeoutExpired:
            pass


if __name__ == "__main__":
    # it ends with the supervisord that started it (a new one starts its own on the same socket)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    serve(sys.argv[1], sys.argv[2])
