import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from deployments.management.launcher import Launcher, LaunchError, say
from deployments.runtimes.local import sandbox
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
        parser.add_argument(
            "--web-processes",
            type=int,
            default=settings.DIPLOI_WEB_PROCESSES,
            help="web processes sharing the port (default DIPLOI_WEB_PROCESSES, 1)",
        )
        parser.add_argument(
            "--verbose", action="store_true", help="show every process's output here too (it is always in DATA_DIR/platform/logs)"
        )

    def handle(self, *args, port: int, host: str, data_dir: Path, web_processes: int, verbose: bool, **options) -> None:
        if not 1 <= port <= 65535:
            raise CommandError(f"--port {port} is not a TCP port number")
        if not 1 <= web_processes <= 64:
            raise CommandError(f"--web-processes {web_processes}: give a number from 1 to 64")
        # Everything the platform and its processes create is theirs alone; deployments reach their
        # own folders through their sandboxes.
        os.umask(0o077)
        data_dir = data_dir.resolve()
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # (traversable, not listable, once deployments run containers: their podman reaches their folder, containers.open_paths)
        data_dir.chmod(0o711 if (data_dir / "containers").is_dir() else 0o700)
        try:  # no other running installation gives its deployments the same uids and cgroups
            held = sandbox.hold_range(data_dir, sandbox.uid_base(data_dir))
        except sandbox.RangeInUse as e:
            raise CommandError(str(e)) from None
        launcher = Launcher(
            host,
            port,
            data_dir,
            grace=settings.DIPLOI_SHUTDOWN_GRACE,
            extra=[("monitor", ["monitor"]), ("ssh", ["sshgateway"])],
            retry_after=settings.DIPLOI_PLATFORM_RETRY,
            web_processes=web_processes,
            verbose=verbose,
        )
        say("up", mode().describe())
        try:
            code = launcher.run()
        except LaunchError as e:
            raise CommandError(str(e)) from None
        finally:
            if held:
                held.close()
        if code:
            raise SystemExit(code)
