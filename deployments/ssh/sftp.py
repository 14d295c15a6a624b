"""SFTP (and scp) served by the gateway itself, for runtimes whose files are on this machine."""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING

import asyncssh

from deployments.ssh.authorise import Target

if TYPE_CHECKING:
    from deployments.ssh.server import Connection, Gateway


class ConfinedSFTP(asyncssh.SFTPServer):
    """SFTP (and scp) inside the target's files, starting where a shell session starts (`start`,
    relative to the root): relative paths are read from there, `..` leads up to the root, and what
    leads outside — `..` past the root, absolute paths, symlinks — is refused: every path is
    resolved on disk and must stay under the root."""

    def __init__(
        self, chan: asyncssh.SSHServerChannel, gateway: Gateway, conn: Connection, root: str, start: str, started: tuple[Target, int]
    ) -> None:
        self.gateway, self.conn, self.started = gateway, conn, started
        self.root = root.encode()
        self.start = b"/" + start.encode()
        super().__init__(chan, chroot=self.root)

    def map_path(self, path: bytes) -> bytes:
        self.conn.touch()
        local = super().map_path(posixpath.join(self.start, path))  # an absolute path replaces the start
        real = os.path.realpath(local)
        if real != self.root and not real.startswith(self.root + b"/"):
            raise asyncssh.SFTPPermissionDenied("Outside this deployment's files")
        return local

    def exit(self) -> None:
        self.gateway.later(self.gateway.end(*self.started, 0))
        super().exit()
