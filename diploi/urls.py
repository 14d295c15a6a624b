from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from deployments.ci.api import ci_build_report
from deployments.triggers.views import receive as receive_webhook
from deployments.web.views import router_root, try_demo
from diploi.views import favicon, healthz
from projects.urls import invitation_urlpatterns

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="projects:list", permanent=False)),
    path("favicon.ico", favicon),
    path("accounts/", include("allauth.urls")),
    path("account/", include("accounts.urls")),
    path("projects/", include("projects.urls")),
    path("invitations/", include(invitation_urlpatterns)),
    path("demo/", try_demo, name="try_demo"),
    path("projects/", include("deployments.web.urls")),
    path("api/ci/builds/", ci_build_report, name="ci_build_report"),
    path("hooks/<str:token>/", receive_webhook, name="webhook"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("router/root.crt", router_root, name="router_root"),
]
