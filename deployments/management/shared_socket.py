"""Run daphne on the listening socket supervisord hands over as fd 0 (an `[fcgi-program]`): passed on
the way systemd passes sockets (fd 3, LISTEN_FDS/LISTEN_PID), which Twisted adopts. Several web
processes then accept on one port and the kernel shares the connections out.

    python -m deployments.management.shared_socket diploi.asgi:application
"""

import os
import sys


def main() -> None:
    os.dup2(0, 3)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="web", LISTEN_PID=str(os.getpid()))  # exec keeps the pid
    os.execv(sys.executable, [sys.executable, "-m", "daphne", "-e", "systemd:domain=INET:index=0", *sys.argv[1:]])


if __name__ == "__main__":
    main()
