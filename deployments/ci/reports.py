"""External build mode: CI builds each component's image and reports it; Diploi runs what it reports.

CI sends `POST /api/ci/builds/` (api.py) with the project's CI token for each component at a commit
(`running`, then `succeeded` with the image, or `failed`). Reports are kept per project and commit,
so one that arrives before Diploi has started waiting is not lost; a staging/production deployment
waiting at that commit is provisioned again on every report, and its build takes the reports
(provisioning/external.py).
"""

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db.models import OuterRef, Subquery

from deployments.models import Build, BuildStatus, CIReport, Deployment
from projects.models import Project
from projects.validators import dns_label_error

_NAME = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?"
# An image reference pinned by digest (a tag may stand beside it): a release must not move under a
# mutable name, so a tag alone is refused.
IMAGE = re.compile(rf"^(?:{_HOST}/)?{_NAME}(?:/{_NAME})*(?::[\w][\w.-]{{0,127}})?@sha256:[0-9a-f]{{64}}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
REPORTED = (BuildStatus.RUNNING, BuildStatus.SUCCEEDED, BuildStatus.FAILED)


def record_report(project: Project, data: Any) -> CIReport:
    """Validate one report and store it (a later report for the same component replaces it)."""
    if not isinstance(data, dict):
        raise ValidationError({"body": "Send a JSON object."})
    errors: dict[str, str] = {}
    fields = {k: data.get(k) for k in ("commit", "component", "status", "image", "url", "message")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        errors["body"] = f"Unknown fields: {', '.join(unknown)}."
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            errors[key] = "Must be a string."
    if errors:
        raise ValidationError(errors)
    commit, component, status = fields["commit"] or "", fields["component"] or "", fields["status"] or ""
    image, url, message = fields["image"] or "", fields["url"] or "", (fields["message"] or "")[:500]
    if not COMMIT.fullmatch(commit):
        errors["commit"] = "The full 40-character commit id, in lower case."
    if error := dns_label_error(component):
        errors["component"] = f"“{component[:63]}” {error}."
    if status not in REPORTED:
        errors["status"] = f"One of {', '.join(REPORTED)}."
    if status == BuildStatus.SUCCEEDED and not image:
        errors["image"] = "A succeeded build names its image."
    elif image and (len(image) > 500 or not IMAGE.fullmatch(image)):
        errors["image"] = (
            f"“{image[:100]}” is not an image reference pinned by digest (registry.example.com/shop/web@sha256:…, a tag "
            "may stand before the @); a tag alone can move. `docker buildx build --push --metadata-file` or `crane digest` gives it."
        )
    if url:
        try:
            URLValidator(schemes=["https", "http"])(url)
        except ValidationError:
            errors["url"] = "An http(s) URL of the CI run."
    if errors:
        raise ValidationError(errors)
    defaults = {"status": status, "image": image if status == BuildStatus.SUCCEEDED else "", "url": url, "message": message}
    report, _ = CIReport.objects.update_or_create(project=project, commit=commit, component=component, defaults=defaults)
    return report


def waiting_deployments(project: Project, commit: str) -> list[Deployment]:
    """Deployments whose latest build is of `commit` and not a release yet: still waiting, or failed
    on a report CI has since replaced (a re-run that passed) when no component is failing any more."""
    latest = Build.objects.filter(deployment=OuterRef("pk")).order_by("-created", "-pk")
    candidates = (
        Deployment.objects.filter(project=project)
        .annotate(build_commit=Subquery(latest.values("commit")[:1]), build_status=Subquery(latest.values("status")[:1]))
        .filter(build_commit=commit)
        .exclude(build_status=BuildStatus.SUCCEEDED)
        .order_by("pk")
    )
    failing = CIReport.objects.filter(project=project, commit=commit, status=BuildStatus.FAILED).exists()
    return [d for d in candidates if d.build_status != BuildStatus.FAILED or not failing]
