from django.db import models

from projects.models import Project
from projects.validators import validate_branch_name, validate_dns_label


class Stage(models.TextChoices):
    DEVELOPMENT = "development", "Development"
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"


class Deployment(models.Model):
    """One running instance of a project at one stage, following one branch."""

    # PROTECT: a project cannot be deleted while it still has deployments.
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=63)
    slug = models.SlugField(max_length=63, validators=[validate_dns_label])
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.DEVELOPMENT)
    branch = models.CharField(max_length=255, validators=[validate_branch_name])
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "slug"], name="deployment_slug_unique_per_project")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.slug}"
