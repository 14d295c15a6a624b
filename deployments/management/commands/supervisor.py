import os

from django.conf import settings
from django.core.management.base import BaseCommand

from deployments.runtimes.local import disks
from deployments.runtimes.local.supervisor import Supervisor


class Command(BaseCommand):
    help = "Run the process supervisor of the local runtime in the foreground (supervisord)."

    def handle(self, *args, **options) -> None:
        supervisor = Supervisor(settings.DATA_DIR)
        if ended := supervisor.end_orphans():
            self.stdout.write(f"ended {ended} service process(es) left running by a process supervisor that died; they start again now")
            self.stdout.flush()
        disks.mount_all(settings.DATA_DIR / "deployments")  # after a reboot: before its programs start
        argv = supervisor.foreground_command()
        os.execv(argv[0], argv)
