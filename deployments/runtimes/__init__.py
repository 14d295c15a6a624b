from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from deployments.runtimes.base import Runtime


@cache
def get_runtime() -> Runtime:
    """The configured runtime (one instance per process: it keeps CPU samples between calls)."""
    if settings.DIPLOI_RUNTIME == "local":
        from deployments.runtimes.local import LocalRuntime

        return LocalRuntime()
    raise ImproperlyConfigured(f"DIPLOI_RUNTIME={settings.DIPLOI_RUNTIME!r} is not available in this version")
