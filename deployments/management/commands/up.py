import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from deployments.management.launcher import Launcher, LaunchError, say
from deployments.tenancy import mode


class Command(BaseCommand):
    help = (
        "Start the whole platform on this machine under a supervisord of its own: Redis (embedded unless REDIS_URL is set), "
        "the deployments' process supervisor, web, worker, monitor and SSH gateway, each restarted when it dies."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="HTTP port of the dashboard (default 8000)")
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--data-dir", type=Path, default=settings.DATA_DIR, help="where Diploi keeps its data")

    def handle(self, *args, port: int, host: str, data_dir: Path, **options) -> None:
        if not 1 <= port <= 65535:
            raise CommandError(f"--port {port} is not a TCP port number")
        # Everything the platform and its processes create is theirs alone; deployments reach their
        # own folders through their sandboxes.
        os.umask(0o077)
        data_dir = data_dir.resolve()
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        launcher = Launcher(
            host,
            port,
            data_dir,
            grace=settings.DIPLOI_SHUTDOWN_GRACE,
            extra=[("monitor", ["monitor"]), ("ssh", ["sshgateway"])],
            retry_after=settings.DIPLOI_PLATFORM_RETRY,
        )
        say("up", mode().describe())
        try:
            code = launcher.run()
        except LaunchError as e:
            raise CommandError(str(e)) from None
        if code:
            raise SystemExit(code)
