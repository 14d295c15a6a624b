"""Websocket: `/ws/deployments/<id>/` streams re-rendered fragments of the Overview to members."""

import json

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.loader import render_to_string

from deployments import events
from deployments.access import get_deployment_by_id_for_user
from deployments.queries import deployments_with_figures
from deployments.views import overview_context
from projects.access import get_project_for_user

_rendered: dict[tuple, str] = {}


def render_live(d, user) -> str:
    """The live fragment, rendered once per state and role in this process, however many viewers."""
    latest = d.samples.order_by("-at").values_list("pk", flat=True).first()
    build = d.builds.values_list("pk", "status", "progress").first()
    domains = tuple(d.domains.values_list("name", "verified"))
    key = (d.pk, d.state, d.state_reason, d.enabled, d.commit, d.release_id, json.dumps(d.status, sort_keys=True),
           json.dumps(d.endpoints, sort_keys=True), latest, build, domains, d.project.can_write)  # fmt: skip
    if key not in _rendered:
        if len(_rendered) > 1000:
            _rendered.clear()
        _rendered[key] = render_to_string("deployments/detail.html#live", overview_context(d, user, observe=False))
    return _rendered[key]


class DeploymentConsumer(WebsocketConsumer):
    def connect(self) -> None:
        user = self.scope.get("user")
        self.deployment_id = int(self.scope["url_route"]["kwargs"]["pk"])
        try:
            get_deployment_by_id_for_user(user, self.deployment_id)
        except (Http404, PermissionDenied):
            self.close(code=4404)  # anonymous users and outsiders alike: nothing to see here
            return
        self.group = events.group(self.deployment_id)
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        self.accept()
        self.send_live()  # the current state at once, so a reconnect never shows a stale colour

    def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def live_event(self, event: dict) -> None:
        self.send_live()

    def send_live(self) -> None:
        # Access is checked again on every event: a member removed meanwhile stops receiving.
        try:
            d = get_deployment_by_id_for_user(self.scope["user"], self.deployment_id)
        except (Http404, PermissionDenied):
            self.close(code=4403)
            return
        self.send(text_data=render_live(d, self.scope["user"]))


class ProjectConsumer(WebsocketConsumer):
    """`/ws/projects/<slug>/`: the project page's list of deployments, re-rendered on change."""

    def connect(self) -> None:
        self.slug = self.scope["url_route"]["kwargs"]["slug"]
        try:
            project = get_project_for_user(self.scope.get("user"), self.slug)
        except (Http404, PermissionDenied):
            self.close(code=4404)
            return
        self.group = events.project_group(project.pk)
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        self.accept()
        self.send_list()

    def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def live_event(self, event: dict) -> None:
        self.send_list()

    def send_list(self) -> None:
        try:
            project = get_project_for_user(self.scope["user"], self.slug)
        except (Http404, PermissionDenied):
            self.close(code=4403)
            return
        ctx = {"project": project, "deployments": deployments_with_figures(project)}
        self.send(text_data=render_to_string("projects/detail.html#deployments", ctx))
