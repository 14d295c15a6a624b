"""Creating deployments: every check happens before anything is saved or started."""

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.models import User
from deployments import tasks
from deployments.models import Deployment, EnvVar, Stage
from deployments.spec import StackInvalid, fetch_branch, load_stack
from projects.git import GitError
from projects.models import Project
from projects.validators import dns_label_error, validate_branch_name


def create_deployment(
    project: Project, name: str, stage: str, branch: str, user: User | None, enabled: bool = True,
    clone_of: Deployment | None = None, copy_storage: bool = False,
) -> Deployment:
    """Validate, save and enqueue provisioning; raises ValidationError keyed by field.

    A clone inherits its source's env vars and add-on passwords (so that copied databases still
    open); with `copy_storage` it starts from a copy of the source's storage."""  # fmt: skip
    slug = slugify(name).replace("_", "-")
    errors: dict[str, list[str]] = {}
    if not slug:
        errors["name"] = ["The name must contain at least one letter or digit."]
    elif err := dns_label_error(slug):
        errors["name"] = [f"The name gives the address “{slug}”, which {err}."]
    elif Deployment.objects.filter(project=project, slug=slug).exists():
        errors["name"] = [f"This project already has a deployment called “{slug}”."]
    if stage not in Stage.values:
        errors["stage"] = [f"Choose one of: {', '.join(Stage.values)}."]
    try:
        validate_branch_name(branch)
    except ValidationError as e:
        errors["branch"] = e.messages
    if errors:
        raise ValidationError(errors)

    deployment = Deployment(project=project, name=name, slug=slug, stage=stage, branch=branch, enabled=enabled, created_by=user,
                            clone_of=clone_of, copy_storage_pending=bool(clone_of and copy_storage))  # fmt: skip
    if clone_of:
        deployment.credentials = clone_of.credentials
    try:
        commit = fetch_branch(deployment)
        load_stack(deployment, commit)
    except GitError as e:
        raise ValidationError({"branch": [str(e)]}) from None
    except StackInvalid as e:
        raise ValidationError({"branch": [f"The stack file on {branch} has problems: {e}"]}) from None

    try:
        with transaction.atomic():
            deployment.save()
            if clone_of:
                EnvVar.objects.bulk_create(
                    EnvVar(deployment=deployment, service=v.service, key=v.key, value=v.value, secret=v.secret)
                    for v in EnvVar.objects.filter(deployment=clone_of)
                )
            tasks.provision.delay_on_commit(deployment.pk, actor=f"user:{user.username}" if user else "cli")
    except IntegrityError:
        raise ValidationError({"name": [f"This project already has a deployment called “{slug}”."]}) from None
    return deployment
