"""`POST /hooks/<token>/`: a project's push webhook, for every Git host it understands."""

import logging

from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from deployments import actions
from deployments.models import Webhook
from deployments.triggers import webhooks

log = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def receive(request: HttpRequest, token: str) -> JsonResponse:
    """Unknown URL 404; too big 413; not a known host's delivery, or malformed, 400 naming why; a bad
    signature 401; events other than pushes, and pushes nobody deploys, 200 and ignored (logged);
    a push deployed 202. A replayed delivery id answers what it did the first time."""
    webhook = Webhook.objects.select_related("project").filter(token=token).first()
    if webhook is None:
        raise Http404("No such webhook.")
    declared = request.headers.get("Content-Length", "0")
    if not declared.isdigit() or int(declared) > webhooks.MAX_BODY:
        return JsonResponse({"error": f"The body is larger than {webhooks.MAX_BODY} bytes."}, status=413)
    host = webhooks.identify(request.headers)
    if host is None:
        error = (
            "Not a webhook of GitHub, GitLab, Gitea/Forgejo or Bitbucket (no X-GitHub-Event, X-Gitlab-Event, X-Gitea-Event or X-Event-Key)."
        )
        return JsonResponse({"error": error}, status=400)
    body = request.body
    if not webhooks.signed(host, request.headers, body, webhook.secret):
        return JsonResponse({"error": f"The {host.name} signature does not match this project's webhook secret."}, status=401)
    if not webhooks.is_push(host):
        log.info("webhook of %s: %s event %r ignored", webhook.project.slug, host.name, host.event)
        return JsonResponse({"ignored": f"{host.event} events are not deployed; only pushes are."})
    try:
        found = webhooks.pushes(host, body)
    except webhooks.Malformed as e:
        return JsonResponse({"error": f"Not a {host.name} push payload: {e}."}, status=400)
    outcome, replay = actions.do_receive_webhook(webhook, host.name, host.delivery, found)
    if replay:
        return JsonResponse({"replay": True, "outcome": outcome})
    return JsonResponse({"outcome": outcome}, status=202 if outcome.startswith("deploying") else 200)
