from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete, post_save


def membership_changed(sender, instance, **kwargs) -> None:
    """Sockets of the project's pages check their user's access again once the change is committed."""
    from deployments.live import events
    from deployments.models import Deployment

    project_id = instance.project_id

    def announce() -> None:
        events.publish_members(project_id, list(Deployment.objects.filter(project_id=project_id).values_list("pk", flat=True)))

    transaction.on_commit(announce)


class DeploymentsConfig(AppConfig):
    name = "deployments"

    def ready(self) -> None:
        from projects.models import Membership

        post_save.connect(membership_changed, sender=Membership, dispatch_uid="diploi-membership-saved")
        post_delete.connect(membership_changed, sender=Membership, dispatch_uid="diploi-membership-deleted")
