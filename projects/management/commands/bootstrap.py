import secrets

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from accounts.models import User
from projects.models import Membership, Project, Role
from projects.sample import create_sample_repository
from projects.stack import refresh_stack

DEMO_USERNAME = "demo"


class Command(BaseCommand):
    help = (
        "Migrate the database if it needs it; on first run, create the demo account and the demo project (a Git repository of the sample)."
    )

    def handle(self, *args, **options) -> None:
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):  # one process for both: `up` starts sooner
            call_command("migrate", interactive=False, verbosity=options["verbosity"], stdout=self.stdout)
        if User.objects.exists():
            return
        password = secrets.token_urlsafe(12)
        repo = settings.DATA_DIR / "repos" / "diploi-sample"
        if not (repo / ".git").exists():
            repo.parent.mkdir(parents=True, exist_ok=True)
            create_sample_repository(repo)
        with transaction.atomic():
            # The first account is the operator's: staff, so its pages say what happens to the platform.
            user = User.objects.create_user(DEMO_USERNAME, email="demo@localhost", password=password, is_staff=True)
            project = Project.objects.create(
                name="Diploi sample", slug="diploi-sample", repository=str(repo), default_branch="main", created_by=user
            )
            Membership.objects.create(project=project, user=user, role=Role.OWNER)
        refresh_stack(project)
        self.stdout.write(f"Demo account created. Log in with username: {DEMO_USERNAME} password: {password}")
        self.stdout.write("(Shown once. Change it in the dashboard, or run: uv run manage.py changepassword demo)")
