import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from deployments.ssh.hostkey import host_key_fingerprint
from deployments.ssh.server import Gateway


class Command(BaseCommand):
    help = "The SSH gateway: shells, commands, SFTP and port forwards into deployments, for their developers' keys."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.DIPLOI_SSH_BIND, help="address to listen on")
        parser.add_argument("--port", type=int, default=settings.DIPLOI_SSH_PORT)

    def handle(self, *args, host: str, port: int, **options) -> None:
        asyncio.run(self.serve(host, port))

    async def serve(self, host: str, port: int) -> None:
        gateway = Gateway()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await gateway.start(host, port)
        except OSError as e:
            self.stderr.write(f"sshgateway: cannot listen on {host}:{port}: {e.strerror or e}")
            raise SystemExit(1) from None
        self.stdout.write(f"sshgateway: listening on {host}:{port}, host key {host_key_fingerprint()}")
        await stop.wait()
        await gateway.close()
        self.stdout.write("sshgateway: stopped")
