from collections.abc import Callable

from django.contrib import messages
from django.http import HttpRequest, HttpResponse

from deployments.actions import queue_unreachable

NOTICE = "The task queue (Redis) is unreachable: your change is saved and runs as soon as the queue is back."


def queue_notice(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Says so when a change was saved but its work could not be queued (shown on the next page)."""

    def middleware(request: HttpRequest) -> HttpResponse:
        token = queue_unreachable.set(False)
        try:
            response = get_response(request)
            if queue_unreachable.get():
                messages.warning(request, NOTICE)
            return response
        finally:
            queue_unreachable.reset(token)

    return middleware
