from django.urls import path

from deployments.live.consumers import DeploymentConsumer, LogConsumer, ProjectConsumer

websocket_urlpatterns = [
    path("ws/deployments/<int:pk>/", DeploymentConsumer.as_asgi()),
    path("ws/deployments/<int:pk>/logs/<slug:service>/", LogConsumer.as_asgi()),
    path("ws/projects/<slug:slug>/", ProjectConsumer.as_asgi()),
]
