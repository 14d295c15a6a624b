from django.urls import path

from deployments.consumers import DeploymentConsumer, ProjectConsumer

websocket_urlpatterns = [
    path("ws/deployments/<int:pk>/", DeploymentConsumer.as_asgi()),
    path("ws/projects/<slug:slug>/", ProjectConsumer.as_asgi()),
]
