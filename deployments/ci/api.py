"""`POST /api/ci/builds/`: CI reports a component's image at a commit (external build mode)."""

import json

from django.core.exceptions import ValidationError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from deployments import actions
from projects.models import Project

CI_REPORT_LIMIT = 16384


@csrf_exempt
@require_POST
def ci_build_report(request: HttpRequest) -> JsonResponse:
    """With the project's CI token. A bad or missing token is 401 whatever the project (nothing about
    projects is disclosed)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    project = Project.for_ci_token(token.strip()) if scheme.lower() == "bearer" else None
    if project is None:
        response = JsonResponse({"error": "A valid CI token is needed: Authorization: Bearer <the project's CI token>."}, status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    if len(request.body) > CI_REPORT_LIMIT:
        return JsonResponse({"error": f"The report is larger than {CI_REPORT_LIMIT} bytes."}, status=413)
    try:
        data = json.loads(request.body or b"null")
    except ValueError as e:
        return JsonResponse({"error": f"The body is not JSON: {e}"}, status=400)
    except RecursionError:
        return JsonResponse({"error": "The body nests too deeply to be a report."}, status=400)
    try:
        report, waiting = actions.do_record_ci_report(project, data)
    except ValidationError as e:
        fields = {k: " ".join(v) for k, v in e.message_dict.items()}
        return JsonResponse({"error": "The report was not accepted.", "fields": fields}, status=400)
    body = {"commit": report.commit, "component": report.component, "status": report.status, "deployments": [d.slug for d in waiting]}
    return JsonResponse(body, status=202)
