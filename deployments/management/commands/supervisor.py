import os

from django.conf import settings
from django.core.management.base import BaseCommand

from deployments.runtimes.local.supervisor import Supervisor


class Command(BaseCommand):
    help = "Run the process supervisor of the local runtime in the foreground (supervisord)."

    def handle(self, *args, **options) -> None:
        argv = Supervisor(settings.DATA_DIR).foreground_command()
        os.execv(argv[0], argv)
