import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diploi.settings")

app = Celery("diploi", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def drive_what_a_killed_worker_left(**_: object) -> None:
    """A worker killed mid-task takes its task with it (unacknowledged until Redis's visibility
    timeout): when a worker starts, every deployment in between states is driven again at once,
    instead of after DIPLOI_RECONCILE_AFTER."""
    import logging

    from deployments.provisioning.reconcile import reconcile

    try:
        reconcile(restarted=True)
    except Exception as e:  # noqa: BLE001 - the monitor's reconciler tries again later
        logging.getLogger(__name__).warning("could not drive deployments again at worker start: %s", e)
