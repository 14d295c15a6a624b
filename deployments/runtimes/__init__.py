from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from deployments.runtimes.base import Runtime


@cache
def get_runtime() -> Runtime:
    """The configured runtime (one instance per process: it keeps CPU samples between calls)."""
    if settings.DIPLOI_RUNTIME == "local":
        from deployments.runtimes.local.runtime import LocalRuntime

        return LocalRuntime()
    if settings.DIPLOI_RUNTIME == "kubernetes":
        from deployments.runtimes.kubernetes.runtime import KubernetesRuntime

        return KubernetesRuntime()
    raise ImproperlyConfigured(f"DIPLOI_RUNTIME={settings.DIPLOI_RUNTIME!r} is not a runtime")
