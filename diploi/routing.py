from django.urls import path

from deployments.consumers import DeploymentConsumer

websocket_urlpatterns = [
    path("ws/deployments/<int:pk>/", DeploymentConsumer.as_asgi()),
]
