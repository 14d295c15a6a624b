"""One ASGI application for HTTP and websockets (served by daphne)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diploi.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the apps loaded)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from deployments.live.routing import websocket_urlpatterns  # noqa: E402
from diploi.webserver import with_connection, write_at_once  # noqa: E402

write_at_once()  # daphne's connections send without waiting for the reactor's next pass

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": with_connection(AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)
