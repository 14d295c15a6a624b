from django.urls import URLPattern

# Websocket routes of the apps (the live dashboard adds deployments.consumers here).
websocket_urlpatterns: list[URLPattern] = []
