from django.core.paginator import Page, Paginator
from django.db.models import OuterRef, QuerySet, Subquery

from deployments.models import Build, Deployment, Sample
from projects.models import Project


def deployments_with_figures(project: Project) -> QuerySet[Deployment]:
    """The project's deployments with their latest CPU sample and last build, in one query (without
    their secrets: a list does not decrypt them)."""
    latest_sample = Sample.objects.filter(deployment=OuterRef("pk")).order_by("-at")
    last_build = Build.objects.filter(deployment=OuterRef("pk")).order_by("-created", "-pk")
    return (
        project.deployments.defer("credentials", "connections")
        .annotate(
            cpu=Subquery(latest_sample.values("cpu_percent")[:1]),
            last_build_status=Subquery(last_build.values("status")[:1]),
        )
        .order_by("name")
    )


PAGE_SIZE = 50


def deployments_page(project: Project, number: object) -> Page:
    """One page of the project's list; a missing or bad page number gives the nearest page."""
    return Paginator(deployments_with_figures(project), PAGE_SIZE).get_page(number)
